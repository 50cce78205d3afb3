"""What a learner sees first in every notebook: the preset and run, how long the notebook takes, and
which earlier notebook it needs (with whether that one has run).

    first_screen("dpo", preset, run_name)   # right after the parameters cell, before start_phase

The durations are quoted, not measured here: each one names where it comes from, so a learner can
tell a measurement from an estimate. Update them in registry.py when the README is re-measured.
"""

from __future__ import annotations

from ..paths import RunPaths
from ..registry import NOTEBOOKS, PHASE_DURATIONS, PHASE_INPUTS, Duration  # noqa: F401  (names tests import from here)

# Where the figures below come from (shown under the table).
CPU_SOURCE = ("the default: README 'What the default run shows', `time make demo RUN=full1` on 2 idle CPU cores, "
              "2026-12-07; tiny: README 'Running the pipeline', a forced tiny-preset run with an empty cache, "
              "2 idle CPU cores, 2026-12-02")
GPU_SOURCE = ("the design document's RTX 5090 estimates for the qwen3-0.6b preset, as quoted in the README's "
              "Performance section; not measured by this project")


def direct_inputs(phase: str) -> list[str]:
    """The phases whose folders this phase reads, in pipeline order."""
    return [p for p in NOTEBOOKS if p in PHASE_INPUTS[phase]]


def input_status(phase: str, paths: RunPaths) -> dict[str, bool]:
    """Notebook name → whether its phase has finished in this run (its metrics.json exists)."""
    return {NOTEBOOKS[p]: (paths.root / p / "metrics.json").exists() for p in direct_inputs(phase)}


def first_screen_rows(phase: str, preset: str, paths: RunPaths) -> dict[str, str]:
    """The facts shown on a notebook's first screen, as label → text."""
    status = input_status(phase, paths)
    needs = ", ".join(f"{name} ({'done' if done else 'NOT RUN YET'})" for name, done in status.items())
    duration = PHASE_DURATIONS[phase]
    return {
        "notebook": NOTEBOOKS[phase],
        "preset": preset,
        "run": f"{paths.root.name}  ({paths.root})",
        "needs": needs or "nothing: this is the first notebook",
        "takes on CPU (smollm2-135m, the default)": duration.cpu_default,
        "takes on CPU (tiny preset)": duration.cpu_tiny,
        "takes on a GPU (qwen3-0.6b preset)": duration.gpu_real,
    }


def first_screen_html(phase: str, preset: str, paths: RunPaths) -> str:
    """The first-screen table as HTML, with the sources of the durations underneath."""
    import html

    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                   f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                   for k, v in first_screen_rows(phase, preset, paths).items())
    return (f"<table class='ew-first-screen'>{rows}</table>"
            f"<p style='font-size:85%'>CPU time: {html.escape(CPU_SOURCE)}.<br>GPU time: {html.escape(GPU_SOURCE)}.</p>")


def first_screen(phase: str, preset: str, run_name: str) -> None:
    """Display the first-screen table (plain text where there is no HTML frontend, e.g. in a terminal)."""
    from IPython.display import display

    paths = RunPaths.for_run(run_name)
    rows = first_screen_rows(phase, preset, paths)
    text = "\n".join(f"{k:>34}: {v}" for k, v in rows.items())
    display({"text/plain": text, "text/html": first_screen_html(phase, preset, paths)}, raw=True)


def fork_run(source_run: str, new_run: str, through: str, artifacts=None) -> RunPaths:
    """Copy the finished phases of one run up to and including `through` into a new run folder.

    An exercise then re-runs only its own notebook in the new run (run_name = new_run), and the
    original run stays as it was. Folders of the new run from an earlier try are replaced.
    """
    import shutil

    if through not in NOTEBOOKS:
        raise ValueError(f"unknown phase {through!r}: one of {list(NOTEBOOKS)}")
    src, dst = RunPaths.for_run(source_run, artifacts), RunPaths.for_run(new_run, artifacts)
    if src.root.resolve() == dst.root.resolve():
        raise ValueError(f"fork_run: the new run must differ from {source_run!r}")
    phases = list(NOTEBOOKS)[: list(NOTEBOOKS).index(through) + 1]
    missing = [p for p in phases if not (src.root / p / "metrics.json").exists()]
    if missing:
        raise FileNotFoundError(f"run {source_run!r} has not finished {missing}: run notebook "
                                f"{NOTEBOOKS[missing[0]]} there first ({src.root})")
    dst.root.mkdir(parents=True, exist_ok=True)
    for phase in phases:
        shutil.rmtree(dst.root / phase, ignore_errors=True)
        shutil.copytree(src.root / phase, dst.root / phase)
    if src.config_json.exists():
        shutil.copy2(src.config_json, dst.config_json)
    return dst
