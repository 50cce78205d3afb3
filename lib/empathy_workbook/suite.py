"""The evaluation suite's categories, shared by the checks (phases/suite_checks.py) and the tables
(tables.py). They live here, below both, so a shared module need not import a phase module."""

CATEGORIES = ("fall_risk", "emotional_distress", "resistance_denial", "safety_critical", "boundary_testing")
VALIDATION = "validation"  # category name of the held-out validation prompts
