"""Statistics and tables of the evaluation: win rates, Wilson and bootstrap intervals, Pearson, per-category scores,
the per-model summary, answers side by side and the run's description computed from its numbers."""

import pytest

from empathy_workbook import tables
from empathy_workbook.phases import suite_checks


def fake_table():
    """Two validation prompts and two suite prompts answered by three models, one parse failure."""
    import pandas as pd

    scores = {"base": [3, 4, 2, None], "sft": [5, 4, 6, 5], "dpo": [7, 4, 6, 8]}
    rows = []
    for model, values in scores.items():
        for i, score in enumerate(values):
            suite = suite_checks.VALIDATION if i < 2 else "fall_risk_suite"
            rows.append({"model": model, "prompt_id": f"p{i}", "suite": suite,
                         "category": suite_checks.VALIDATION if i < 2 else "safety_critical", "question": f"q{i}",
                         "answer": f"{model} answer {i}", "score": score, "parse_failed": score is None,
                         "words": 3, "within_budget": True, "distinct_2": 1.0, "think_leak": False,
                         "ended_on_eos": i != 1, "urges_medical": (model != "base") if i >= 2 else None,
                         "declines": None, "new_tokens": 4})
    return pd.DataFrame(rows)


def test_win_rates_count_wins_ties_losses_on_scored_prompts():
    rates = tables.win_rates(fake_table())
    counts = {k: rates["dpo_vs_sft"][k] for k in ("n", "wins", "ties", "losses", "win_rate", "tie_rate", "loss_rate")}
    assert counts == {"n": 4, "wins": 2, "ties": 2, "losses": 0, "win_rate": 0.5, "tie_rate": 0.5, "loss_rate": 0.0}
    # 2 wins of 4: Wilson's 95 % interval is [0.15, 0.85]; the net rate (2 - 0) / 4 has a bootstrap interval
    assert (rates["dpo_vs_sft"]["win_rate_low"], rates["dpo_vs_sft"]["win_rate_high"]) == (0.1500, 0.8500)
    assert rates["dpo_vs_sft"]["net_rate"] == 0.5 and 0 <= rates["dpo_vs_sft"]["net_rate_low"] <= 0.5
    assert rates["sft_vs_base"]["n"] == 3  # the parse failure is left out, not counted as a loss
    assert rates["gguf_vs_dpo"]["n"] == 0 and rates["gguf_vs_dpo"]["win_rate"] is None


def test_wilson_interval_stays_honest_at_the_edges():
    """27 agreements of 27 do not prove perfection: the bootstrap would say [1, 1], Wilson says [0.88, 1]."""
    low, high = tables.wilson_interval(27, 27)
    assert round(low, 2) == 0.88 and high == 1.0
    low, high = tables.wilson_interval(0, 10)
    assert low < 1e-9 and round(high, 2) == 0.28
    assert tables.wilson_interval(0, 0) == (None, None)


def test_pearson_is_none_where_undefined():
    assert tables.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert tables.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert tables.pearson([1, 1, 1], [1, 2, 3]) is None and tables.pearson([1, 2], [2, 4]) is None


def test_bootstrap_ci_brackets_the_mean_and_handles_edge_cases():
    mean, low, high = tables.bootstrap_ci([1, 2, 3, 4, 5, 6, 7, 8], samples=500)
    assert low < mean < high and mean == 4.5
    assert tables.bootstrap_ci([5.0]) == (5.0, 5.0, 5.0)
    assert tables.bootstrap_ci([None, float("nan")]) == (None, None, None)


def test_category_scores_and_model_summary():
    table = fake_table()
    cats = tables.category_scores(table, samples=200)
    dpo_safety = cats[(cats.category == "safety_critical") & (cats.model == "dpo")].iloc[0]
    assert dpo_safety["mean"] == 7.0 and dpo_safety["n"] == 2
    assert set(tables.score_pivot(cats).columns) == {"base", "sft", "dpo"}
    summary = tables.model_summary(table, {"sft": 12.5, "dpo": float("nan")})
    assert summary["base"]["judge_parse_failures"] == 1 and summary["base"]["safety_pass_rate"] == 0.0
    assert summary["sft"]["safety_pass_rate"] == 1.0 and summary["sft"]["ended_on_eos_rate"] == 0.75
    assert summary["sft"]["perplexity"] == 12.5 and summary["dpo"]["perplexity"] is None


def test_answers_by_prompt_puts_models_next_to_each_other():
    frame = tables.answers_by_prompt(fake_table())
    assert list(frame["prompt_id"]) == ["p0", "p1", "p2", "p3"]
    assert frame.loc[2, "dpo answer"] == "dpo answer 2" and frame.loc[2, "sft score"] == 6


def test_run_description_is_computed_from_the_numbers():
    import pandas as pd

    categories = pd.DataFrame([{"category": "all suite", "model": "base", "mean": 3.0, "low": 2.5, "high": 3.5, "n": 30},
                               {"category": "all suite", "model": "sft", "mean": 2.0, "low": 1.5, "high": 2.5, "n": 30}])
    models = {"base": {"suite_ended_on_eos_rate": 0.1, "perplexity": 20.0},
              "sft": {"suite_ended_on_eos_rate": 0.9, "perplexity": 25.0}}
    wins = {"sft_vs_base": {"n": 30, "wins": 4, "ties": 6, "losses": 20}, "dpo_vs_sft": {"n": 0}}
    text = tables.describe_run(models, wins, categories)
    assert "base 3.00 [2.50, 3.50] → sft 2.00 [1.50, 2.50]" in text
    assert "sft scored higher on 4 of 30 prompts, tied on 6, lower on 20" in text
    assert "SFT did not lower the perplexity" in text and "dpo vs sft" not in text
