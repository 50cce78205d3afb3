"""What a learner sees first: the first-screen table of every notebook, and one clear line (no traceback)
when an earlier notebook has not run yet."""

import json
from html import escape as html_escape

import pytest

from empathy_workbook.io import write_json
from empathy_workbook.paths import NOTEBOOKS_DIR, RunPaths
from empathy_workbook.pipeline import guide
from empathy_workbook.pipeline.runtime import NOTEBOOKS, MissingPhaseError, require_inputs


def finish(paths: RunPaths, *phases):
    for phase in phases:
        write_json(paths.root / phase / "metrics.json", {"_fingerprint": "x"})


def test_missing_phase_names_the_first_notebook_to_run(tmp_path):
    paths = RunPaths.for_run("empty", tmp_path)
    with pytest.raises(MissingPhaseError) as err:
        require_inputs("dpo", paths)
    message = str(err.value)
    assert "run notebook 00_prepare_data.ipynb first" in message
    assert "01_sft_lora.ipynb, 02_preference_pairs.ipynb" in message  # what follows, in order
    assert "\n" not in message and err.value._render_traceback_() == [f"MissingPhaseError: {message}"]
    finish(paths, "data", "sft")
    with pytest.raises(MissingPhaseError, match=r"run notebook 02_preference_pairs.ipynb first \("):
        require_inputs("dpo", paths)
    finish(paths, "preferences")
    require_inputs("dpo", paths)  # everything there: no error


def test_first_screen_rows_say_preset_run_needs_and_durations(tmp_path):
    paths = RunPaths.for_run("r1", tmp_path)
    rows = guide.first_screen_rows("dpo", "tiny", paths)
    assert rows["preset"] == "tiny" and rows["run"].startswith("r1")
    assert rows["needs"] == ("00_prepare_data.ipynb (NOT RUN YET), 01_sft_lora.ipynb (NOT RUN YET), "
                             "02_preference_pairs.ipynb (NOT RUN YET)")  # 03 reads all three folders
    finish(paths, "preferences")
    assert "02_preference_pairs.ipynb (done)" in guide.first_screen_rows("dpo", "tiny", paths)["needs"]
    assert guide.first_screen_rows("data", "tiny", paths)["needs"].startswith("nothing")
    assert set(guide.PHASE_DURATIONS) == set(NOTEBOOKS)
    html = guide.first_screen_html("eval", "tiny", paths)
    assert "05_evaluate.ipynb" in html and "04_export_gguf.ipynb" in html and html_escape(guide.CPU_SOURCE) in html


@pytest.mark.parametrize("phase", NOTEBOOKS)
def test_every_notebook_shows_its_first_screen_right_after_the_parameters(phase):
    nb = json.loads((NOTEBOOKS_DIR / NOTEBOOKS[phase]).read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert f'first_screen("{phase}", preset, run_name)' in "".join(code[1]["source"])


def test_fork_run_copies_finished_phases_only(tmp_path):
    src = RunPaths.for_run("a", tmp_path)
    finish(src, "data", "sft")
    (src.root / "sft" / "merged").mkdir()
    (src.root / "sft" / "merged" / "w.bin").write_bytes(b"1")
    dst = guide.fork_run("a", "b", through="sft", artifacts=tmp_path)
    assert (dst.root / "sft" / "merged" / "w.bin").read_bytes() == b"1"
    assert not (dst.root / "preferences").exists()
    with pytest.raises(FileNotFoundError, match="02_preference_pairs.ipynb"):
        guide.fork_run("a", "c", through="preferences", artifacts=tmp_path)


@pytest.mark.slow
@pytest.mark.notebooks
def test_opening_03_before_02_prints_one_line(tmp_path, monkeypatch):
    """Notebook 03 executed on an empty run: the first screen shows 02 as not run, then one line, no traceback."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    monkeypatch.setenv("EWB_ARTIFACTS", str(tmp_path))  # the kernel inherits it
    executed = tmp_path / "03.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / NOTEBOOKS["dpo"]), str(executed),
                                   parameters={"preset": "tiny", "run_name": "empty"}, progress_bar=False, cwd=str(NOTEBOOKS_DIR))
    assert err.value.ename == "MissingPhaseError"
    assert "run notebook 00_prepare_data.ipynb first" in err.value.evalue
    nb = json.loads(executed.read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors  # the one line, no frames
    assert errors[0]["traceback"][0].startswith("MissingPhaseError: 03_dpo.ipynb needs phase 'data'")
    shown = json.dumps([o.get("data", {}) for o in outputs])
    assert "02_preference_pairs.ipynb (NOT RUN YET)" in shown
    assert not (tmp_path / "runs" / "empty" / "dpo").exists()  # nothing was written for the phase
