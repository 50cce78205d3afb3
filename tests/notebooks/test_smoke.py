"""The whole chain on the tiny preset: notebooks 00-05 executed in order by the runner (papermill),
then assertions on the metrics every phase wrote (collected in summary.json), never on printed text."""

import pytest

from empathy_workbook.io import all_finite, read_jsonl
from empathy_workbook.paths import RunPaths
from empathy_workbook.pipeline.runtime import NOTEBOOKS

from conftest import TINY_RUN

RUN = TINY_RUN  # the session's forced tiny run (conftest.tiny_summary), shared with the browser tests
pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def summary(tiny_summary):
    return tiny_summary


@pytest.fixture(scope="module")
def metrics(summary):
    return {phase: entry["metrics"] for phase, entry in summary["phases"].items()}


def test_every_phase_ran_and_wrote_finite_metrics(summary, metrics):
    assert summary["status"] == "ok" and summary["failure"] is None
    for phase in NOTEBOOKS:
        assert summary["phases"][phase]["status"] == "ran", phase
        assert metrics[phase] is not None, f"{phase} wrote no metrics.json"
        assert all_finite(metrics[phase]), f"{phase} has a non-finite number"
    root = RunPaths.for_run(RUN).root
    assert (root / "report.html").exists() and (root / "summary.json").exists()
    assert all((root / "notebooks" / name).exists() for name in NOTEBOOKS.values())


def test_no_question_in_both_splits(metrics):
    assert metrics["data"]["questions_in_both"] == 0
    root = RunPaths.for_run(RUN).root / "data"
    train = {r["question_key"] for r in read_jsonl(root / "train.jsonl")}
    val = {r["question_key"] for r in read_jsonl(root / "val.jsonl")}
    assert train and val and not train & val


def test_sft_validation_loss_falls(metrics):
    assert metrics["sft"]["eval_loss_last"] < metrics["sft"]["eval_loss_first"]


def test_preference_retention_is_kept_over_judged_and_the_filter_did_filter(metrics):
    prefs = metrics["preferences"]
    scored = prefs["filter"]["scored"]  # pairs with both answers judged (parse failures are not in it)
    assert scored > 0 and prefs["retention"] == pytest.approx(prefs["kept"] / scored, abs=1e-3)
    assert 0 < prefs["kept"] < scored  # the gap filter kept some pairs and dropped others


def test_dpo_reward_margin_grows_on_held_out_pairs(metrics):
    # held-out pairs, not the last training batch: one logged batch of 4 pairs is too noisy to judge by
    dpo = metrics["dpo"]
    assert dpo["eval_reward_margin_first"] == 0.0  # the reference is the SFT model itself
    assert dpo["eval_reward_margin_last"] > 0.0 and dpo["eval_loss_last"] < dpo["eval_loss_first"]


def test_every_export_check_passes(metrics):
    from empathy_workbook.llamacpp.file_checks import checks_passed

    passed = checks_passed(metrics["export"])
    assert all(passed.values()), passed


def test_four_models_scored_on_the_whole_suite(metrics):
    evaluation = metrics["eval"]
    assert evaluation["suite_prompts"] == 30
    assert set(evaluation["models"]) == {"base", "sft", "dpo", "gguf"}
    for name, model in evaluation["models"].items():
        assert model["suite_answers"] == 30 and model["suite_scored"] == 30, name
        assert model["perplexity"] is not None and model["perplexity"] > 1.0, name
    prompts = evaluation["suite_prompts"] + evaluation["val_prompts"]
    for pair in ("dpo_vs_sft", "sft_vs_base", "gguf_vs_dpo"):
        first, second = pair.split("_vs_")
        failures = evaluation["models"][first]["judge_parse_failures"] + evaluation["models"][second]["judge_parse_failures"]
        # every prompt both models answered with a parsed score is compared, and no other
        assert prompts - failures <= evaluation["win_rates"][pair]["n"] <= prompts, pair
