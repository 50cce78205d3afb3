"""empathy_workbook: the library behind the notebooks (one module per phase)."""

__version__ = "0.1.0"
