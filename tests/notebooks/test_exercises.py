"""One exercise per notebook, executed the way its text tells a learner to: a copy of a finished tiny run up
to the previous notebook (guide.fork_run), one parameter changed through papermill, only that notebook
run. Each test asserts the outcome the exercise predicts, against the finished run's own numbers."""

from __future__ import annotations

import json

import pytest

from empathy_workbook.io import read_json, read_jsonl
from empathy_workbook.paths import NOTEBOOKS_DIR, RunPaths
from empathy_workbook.pipeline.runtime import NOTEBOOKS

pytestmark = pytest.mark.slow

PREVIOUS = {"sft": "data", "preferences": "sft", "dpo": "preferences", "export": "dpo", "eval": "export"}


def check_data(base, new, run):
    ratio = new["val_questions"] / base["val_questions"]
    assert 1.5 <= ratio <= 2.5, f"validation questions {base['val_questions']} → {new['val_questions']}"
    assert new["questions_in_both"] == 0


def check_sft(base, new, run):
    assert base["_config"]["sft"]["lora"]["r"] == 16
    assert new["trainable_parameters"] * 4 == base["trainable_parameters"]


def check_preferences(base, new, run):
    # Same seeded samples and the same judge scores: the kept pairs are exactly the old ones with gap >= 4.
    assert len(base["_rows"]) == base["kept"]
    assert new["kept"] == sum(r["gap"] >= 4 for r in base["_rows"])
    assert new["kept"] < base["kept"], "no old pair had a gap in [2, 4): the exercise would show nothing"
    assert all(r["gap"] >= 4 for r in read_jsonl(run.root / "preferences" / "pairs.jsonl"))
    assert new["gap_threshold"] == 4


def check_dpo(base, new, run):
    assert (new["beta"], base["beta"]) == (0.5, 0.1)
    # The reward is beta x log-ratio: with similar steps (Adam divides out the gradient's scale) a five times
    # larger beta reports larger margins and a lower loss -log sigmoid(margin) on the held-out pairs.
    assert new["eval_reward_margin_last"] > base["eval_reward_margin_last"] > 0
    assert new["eval_loss_last"] < base["eval_loss_last"]


def check_export(base, new, run):
    assert new["bytes"]["Q8_0"] > new["bytes"]["Q4_K_M"]
    assert new["kld_mean"]["Q8_0"] < new["kld_mean"]["Q4_K_M"]
    assert new["top_token_agreement"]["Q8_0"] >= new["top_token_agreement"]["Q4_K_M"]


def check_eval(base, new, run):
    fell = 0
    for model, before in base["models"].items():
        after = new["models"][model]
        assert after["mean_words"] == before["mean_words"], f"{model}: the answers changed"
        assert after["within_budget_rate"] <= before["within_budget_rate"], model
        fell += after["within_budget_rate"] < before["within_budget_rate"]
    assert fell > 0, "no answer was longer than 20 words"


# phase → (the one parameter the exercise changes, the check of its prediction)
EXERCISES = {
    "data": ({"val_fraction": 0.2}, check_data),
    "sft": ({"lora_r": 4}, check_sft),
    "preferences": ({"gap": 4}, check_preferences),
    "dpo": ({"beta": 0.5}, check_dpo),
    "export": ({"quants": ["Q4_K_M", "Q8_0"]}, check_export),
    "eval": ({"word_budget": 20}, check_eval),
}


# CI-only extras that shorten a notebook without touching what its exercise predicts: the adapter's size
# does not depend on how long it trains, and the side-by-side spot checks are not part of any prediction.
SPEEDUPS = {"sft": {"max_steps": 6, "spot_check": False}, "dpo": {"spot_check": False},
            "eval": {"interactive": False}}


def exercise_text(phase: str) -> str:
    nb = json.loads((NOTEBOOKS_DIR / NOTEBOOKS[phase]).read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    return next(c for c in cells if c.startswith("## Exercises"))


def literal(value) -> str:
    return json.dumps(value) if isinstance(value, list) else repr(value)


@pytest.mark.parametrize("phase", EXERCISES)
def test_exercise_is_written_in_the_notebook(phase):
    (name, value), = EXERCISES[phase][0].items()
    text = exercise_text(phase)
    assert f"`{name} = {literal(value)}`" in text
    assert text.count("tests/notebooks/test_exercises.py") == 1  # the one exercise that CI runs is marked
    nb = json.loads((NOTEBOOKS_DIR / NOTEBOOKS[phase]).read_text(encoding="utf-8"))
    last = nb["cells"][-1]
    assert last["metadata"].get("jupyter", {}).get("source_hidden") is True  # the collapsed worked answer
    assert "".join(last["source"]).startswith("**Worked answers.**")


@pytest.mark.parametrize("phase", EXERCISES)
def test_exercise_outcome_is_the_predicted_one(phase, tiny_run):
    import papermill

    from empathy_workbook.pipeline.guide import fork_run

    parameters, check = EXERCISES[phase]
    run_name = f"ci-exercise-{phase}"
    if phase in PREVIOUS:
        run = fork_run(tiny_run.root.name, run_name, through=PREVIOUS[phase])
    else:
        run = RunPaths.for_run(run_name)
    executed = run.notebooks / NOTEBOOKS[phase]
    papermill.execute_notebook(str(NOTEBOOKS_DIR / NOTEBOOKS[phase]), str(executed), progress_bar=False,
                               parameters={"preset": "tiny", "run_name": run_name, **parameters, **SPEEDUPS.get(phase, {})},
                               cwd=str(NOTEBOOKS_DIR))
    base = read_json(tiny_run.root / phase / "metrics.json")
    base["_config"] = read_json(tiny_run.root / phase / "config.json")
    if phase == "preferences":
        base["_rows"] = read_jsonl(tiny_run.root / phase / "pairs.jsonl")
    check(base, read_json(run.root / phase / "metrics.json"), run)
