"""The runner on small fake notebooks: order, reuse of unchanged phases, --from/--to/--force, failures,
parameter checks, summary.json and the self-contained report."""

import base64
import json

import nbformat
import pytest

from empathy_workbook.io import read_json, write_json
from empathy_workbook.pipeline import runner
from empathy_workbook.pipeline.report import build_report

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

# A fake phase: reads nothing heavy, writes metrics.json with the fingerprint start_phase would compute,
# a figure and a side-by-side CSV, and counts its executions in a file.
BODY = """
import json, os
from pathlib import Path
from empathy_workbook.config import load_config
from empathy_workbook.io import write_metrics
from empathy_workbook.paths import RunPaths
from empathy_workbook.pipeline.runtime import phase_fingerprint
cfg = load_config(preset)
paths = RunPaths.for_run(run_name)
out = paths.phase({phase!r})
with open(paths.root / "executions.log", "a") as f:
    f.write({phase!r} + "\\n")
(paths.figures({phase!r}) / "curve.png").write_bytes(bytes.fromhex({png!r}))
(out / "side_by_side.csv").write_text("prompt,answer\\nI fell,<b>call a doctor</b>\\n")
write_metrics(out, {{"value": 1.5, "models": {{"sft": {{"judge_mean": 6.0}}}}}}, phase_fingerprint({phase!r}, cfg, paths))
"""


def fake_notebook(phase: str, extra_parameters: str = "", fail: bool = False, marker: str = ""):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# fake {phase} {marker}"))
    params = nbformat.v4.new_code_cell(f'preset = "tiny"  # preset name\nrun_name = "demo"  # run folder\n{extra_parameters}')
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    if fail:
        nb.cells.append(nbformat.v4.new_code_cell("x = 1\nraise ValueError('deliberate failure')"))
    nb.cells.append(nbformat.v4.new_code_cell(BODY.format(phase=phase, png=PNG_1x1.hex())))
    return nb


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A notebooks folder with fake 00 and 01, and a private artifacts folder (the kernel inherits the env)."""
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("EWB_ARTIFACTS", str(artifacts))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for phase in ("data", "sft"):
        nbformat.write(fake_notebook(phase), notebooks / runner.NOTEBOOKS[phase])
    return notebooks, artifacts


def run(workspace, **kwargs):
    notebooks, artifacts = workspace
    kwargs.setdefault("to_phase", "sft")
    return runner.run_pipeline("tiny", "t", notebooks_dir=notebooks, artifacts=artifacts, progress=False,
                               log=lambda *_: None, **kwargs)


def executions(workspace):
    return (workspace[1] / "runs" / "t" / "executions.log").read_text().split()


def statuses(summary):
    return {p: e["status"] for p, e in summary["phases"].items()}


def test_plan_rejects_unknown_phase_and_reversed_range():
    with pytest.raises(runner.RunnerError, match="unknown phase 'sfft'"):
        runner.plan_phases("sfft")
    with pytest.raises(runner.RunnerError, match="comes after"):
        runner.plan_phases("dpo", "sft")
    assert runner.plan_phases(to_phase="sft").phases == ["data", "sft"]


def test_ancestors_are_transitive():
    assert runner.ancestors("dpo") == ["data", "sft", "preferences", "dpo"]
    assert runner.ancestors("data") == ["data"]


def test_notebook_digest_ignores_outputs_but_not_code(tmp_path):
    nb = fake_notebook("data")
    nbformat.write(nb, tmp_path / "a.ipynb")
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nb.cells[1].execution_count = 3
    nbformat.write(nb, tmp_path / "b.ipynb")
    nb.cells[2].source += "\nprint(1)"
    nbformat.write(nb, tmp_path / "c.ipynb")
    digest = runner.notebook_digest
    assert digest(tmp_path / "a.ipynb") == digest(tmp_path / "b.ipynb") != digest(tmp_path / "c.ipynb")


def test_unknown_parameter_is_an_error(tmp_path):
    nbformat.write(fake_notebook("eval"), tmp_path / "05.ipynb")
    with pytest.raises(runner.RunnerError, match=r"does not declare parameter\(s\) \['interactive'\]"):
        runner.check_parameters(tmp_path / "05.ipynb", runner.runner_parameters("eval", "tiny", "x"))
    nbformat.write(fake_notebook("eval", "interactive = True  # widgets"), tmp_path / "05.ipynb")
    runner.check_parameters(tmp_path / "05.ipynb", runner.runner_parameters("eval", "tiny", "x"))


def test_runs_in_order_then_reuses_unchanged_phases(workspace):
    first = run(workspace)
    assert statuses(first)["data"] == statuses(first)["sft"] == "ran"
    assert statuses(first)["eval"] == "not run"
    assert executions(workspace) == ["data", "sft"]
    root = workspace[1] / "runs" / "t"
    assert (root / "notebooks" / "00_prepare_data.ipynb").exists()
    summary = read_json(root / "summary.json")
    assert summary["phases"]["sft"]["metrics"]["value"] == 1.5 and summary["status"] == "ok"
    assert summary["config"]["preset"] == "tiny"

    second = run(workspace)
    assert statuses(second)["data"] == statuses(second)["sft"] == "skipped"
    assert executions(workspace) == ["data", "sft"]  # nothing executed again


def test_changed_notebook_reruns_it_and_everything_downstream(workspace):
    run(workspace)
    notebooks = workspace[0]
    nbformat.write(fake_notebook("data", marker="edited"), notebooks / runner.NOTEBOOKS["data"])
    summary = run(workspace)
    assert statuses(summary)["data"] == "ran" and statuses(summary)["sft"] == "ran"
    assert executions(workspace) == ["data", "sft", "data", "sft"]


def test_changed_config_fingerprint_reruns(workspace):
    run(workspace)
    metrics_path = workspace[1] / "runs" / "t" / "sft" / "metrics.json"
    metrics = read_json(metrics_path)
    metrics["_fingerprint"] = "something-else"  # as if something it was made from had changed since
    write_json(metrics_path, metrics)
    summary = run(workspace)
    assert statuses(summary)["data"] == "skipped" and statuses(summary)["sft"] == "ran"
    assert summary["phases"]["sft"]["reason"].startswith("changed")


def test_force_and_from(workspace):
    run(workspace)
    forced = run(workspace, force=True)
    assert statuses(forced)["data"] == statuses(forced)["sft"] == "ran"
    started_late = run(workspace, from_phase="sft")
    assert statuses(started_late)["data"] == "reused" and statuses(started_late)["sft"] == "ran"
    assert executions(workspace) == ["data", "sft", "data", "sft", "sft"]


def test_from_needs_earlier_outputs(workspace):
    with pytest.raises(runner.RunnerError, match="data/metrics.json is missing"):
        run(workspace, from_phase="sft")


def test_failure_names_notebook_and_cell_and_still_writes_summary(workspace):
    notebooks, artifacts = workspace
    nbformat.write(fake_notebook("sft", fail=True), notebooks / runner.NOTEBOOKS["sft"])
    with pytest.raises(runner.PhaseFailed) as info:
        run(workspace)
    err = info.value
    assert err.phase == "sft" and err.notebook.name == "01_sft_lora.ipynb"
    assert err.source_cell == 3 and "deliberate failure" in str(err) and err.executed.exists()
    assert "01_sft_lora.ipynb" in str(err) and "cell 3" in str(err)
    summary = read_json(artifacts / "runs" / "t" / "summary.json")
    assert summary["status"] == "failed" and summary["failure"]["phase"] == "sft"
    assert statuses(summary)["data"] == "ran" and statuses(summary)["sft"] == "failed"
    assert "deliberate failure" in (artifacts / "runs" / "t" / "report.html").read_text()


def test_report_is_self_contained_with_figures_and_escaped_tables(workspace):
    run(workspace)
    report = (workspace[1] / "runs" / "t" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2  # one figure per fake phase
    assert "&lt;b&gt;call a doctor&lt;/b&gt;" in report  # table text is escaped, not interpreted
    assert "judge_mean" in report
    for external in ("src='http", 'src="http', "<link", "<script"):
        assert external not in report


def test_report_metrics_tables_from_summary_alone(tmp_path):
    summary = {"run": "x", "preset": "tiny", "status": "ok", "seconds": 1.0, "phases": {
        "eval": {"status": "ran", "notebook": "05_evaluate.ipynb", "seconds": 2.0, "metrics": {
            "suite_prompts": 30, "models": {"dpo": {"judge_mean": 6.25}, "sft": {"judge_mean": 5.5}},
            "win_rates": {"dpo_vs_sft": {"wins": 0.5, "ties": 0.1}}, "_fingerprint": "hidden"}}}}
    html = build_report(tmp_path, summary)
    assert "6.25" in html and "dpo_vs_sft" in html and "hidden" not in html


def test_cli_reports_runner_errors_with_exit_code(capsys):
    from empathy_workbook.__main__ import main

    assert main(["run", "--preset", "tiny", "--run", "t", "--from", "dpo", "--to", "sft"]) == 1
    assert "comes after" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--from", "nonsense"])


def test_report_samples_preference_pairs_as_flat_rows(tmp_path):
    (tmp_path / "preferences").mkdir()
    pair = {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "I fell."}],
            "chosen": [{"role": "assistant", "content": "That sounds scary."}],
            "rejected": [{"role": "assistant", "content": "ok"}], "gap": 4.0}
    (tmp_path / "preferences" / "pairs.jsonl").write_text("\n".join(json.dumps(pair) for _ in range(20)) + "\n")
    summary = {"run": "x", "phases": {"preferences": {"status": "ran", "metrics": {"retention": 0.5}}}}
    html = build_report(tmp_path, summary)
    assert "pairs.jsonl (first rows)" in html and html.count("That sounds scary.") == 8
    assert "I fell." in html and "sys</td>" not in html
