"""The report's first screen: the headline table and the ship / don't-ship line, from summary.json alone."""

import html as html_lib
import re

import pytest

from empathy_workbook.llamacpp.file_checks import checks_passed
from empathy_workbook.pipeline.report import SHIP_MIN_PASS_RATE, build_report, ship_decision


def summary(safety=1.0, boundary=0.95, export_ok=True, gguf_mean=6.0, failure=None):
    checks = {name: True for name in checks_passed({})}
    if not export_ok:
        checks["greedy_parity"] = False
    scores = [{"category": "all suite", "model": m, "mean": mean, "low": mean - 0.5, "high": mean + 0.5, "n": 30}
              for m, mean in (("base", 3.0), ("sft", 5.0), ("dpo", 6.2), ("gguf", gguf_mean))]
    model = {"safety_pass_rate": safety, "boundary_pass_rate": boundary, "judge_mean": gguf_mean}
    return {"run": "t", "preset": "tiny", "status": "failed" if failure else "ok", "seconds": 12.5,
            "finished_at": "now", "failure": failure, "config": {"seed": 1},
            "phases": {
                "preferences": {"status": "ran", "metrics": {"retention": 0.7, "retention_range": [0.6, 0.8]}},
                "export": {"status": "ran", "metrics": {**checks, "deploy_file": "model-q4_k_m.gguf",
                                                        "kld_mean": {"Q4_K_M": 0.0312}, "bytes": {"Q4_K_M": 3 * 2**20}}},
                "eval": {"status": "ran", "metrics": {
                    "confidence": 0.95, "category_scores": scores,
                    "win_rates": {"dpo_vs_sft": {"n": 30, "win_rate": 0.5, "tie_rate": 0.2, "loss_rate": 0.3}},
                    "models": {"dpo": dict(model, safety_pass_rate=1.0), "gguf": model}}}}}


def first_screen(html: str) -> str:
    """The headline section, entities decoded (the template escapes every apostrophe)."""
    return html_lib.unescape(html[html.index("<h2 id=\"headline\">"): html.index("<h2>Phases</h2>")])


def test_headline_answers_the_questions_before_any_detail(tmp_path):
    html = build_report(tmp_path, summary())
    head = first_screen(html)
    assert "Ship model-q4_k_m.gguf" in head
    for text in ("Does DPO beat SFT", "wins 50%", "70%", "60%–80%", "Q4_K_M phone file verified?", "3 MiB",
                 "0.0312", "Safety", "Boundaries", "95%"):
        assert text in head, text
    assert re.search(r"<td>gguf</td><td class=\"num\">6</td><td class=\"num\">5.5</td>", head)


@pytest.mark.parametrize("change, reason", [
    ({"export_ok": False}, "export check(s) failed: greedy_parity"),
    ({"safety": SHIP_MIN_PASS_RATE - 0.1}, "safety pass rate"),
    ({"boundary": None}, "boundary pass rate —"),
    ({"gguf_mean": 5.0}, "below the DPO model's interval"),
    ({"failure": {"phase": "eval", "notebook": "05", "executed": "x", "cell": 3, "exec_count": 3, "error": "E"}},
     "phase eval failed"),
])
def test_each_unmet_condition_says_dont_ship_with_its_reason(tmp_path, change, reason):
    ship, verdict, _ = ship_decision(summary(**change))
    assert not ship and verdict.startswith("Don't ship") and reason in verdict
    assert reason.split(":")[0] in first_screen(build_report(tmp_path, summary(**change)))


def test_report_of_a_run_with_no_phase_metrics_still_renders(tmp_path):
    html = build_report(tmp_path, {"run": "empty", "phases": {"data": {"status": "not run"}}})
    assert "Don't ship" in first_screen(html) and "no export results" in first_screen(html)


def test_suite_check_rows_show_counts_and_their_interval(tmp_path):
    """Six prompts per check: the first screen says 4/6 and the interval, so 67 % is not read as a precise rate."""
    from empathy_workbook.tables import rate_interval

    counts = rate_interval([True, True, False, True, None, True, False])  # None: a prompt that doesn't expect it
    assert (counts["passed"], counts["checked"]) == (4, 6) and counts["low"] < 0.67 < counts["high"]
    data = summary(safety=4 / 6)
    data["phases"]["eval"]["metrics"]["models"]["gguf"]["safety_passes"] = counts
    head = first_screen(build_report(tmp_path, data))
    assert f"gguf 4/6 [{counts['low']:.2f}, {counts['high']:.2f}]" in head
    assert "dpo 100%" in head  # a model without counts keeps the plain rate
