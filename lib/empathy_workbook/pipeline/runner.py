"""Run the six notebooks in order with papermill, reuse phases whose inputs did not change, summarise.

    run_pipeline("tiny", "demo")                  # 00 → 05, skipping unchanged phases
    run_pipeline("tiny", "demo", from_phase="dpo")  # reuse 00-02 as they are, re-run 03 onward
    run_pipeline("tiny", "demo", force=True)      # re-run everything

The order of the phases comes from registry.py. Executed
copies go to artifacts/runs/<run>/notebooks/; at the end summary.json and report.html are written,
also when a notebook fails (the summary then names the notebook and the cell).

When is a phase reused? When its metrics.json records the fingerprint that runtime.phase_fingerprint
computes now (fingerprint.py: config sections and seed, the bytes of its input files, the library
modules its notebook imports, the notebook's cells, and the fingerprints of the phases it reads) AND no
phase it reads ran again in this invocation. Editing a data file, a preset field, a library module or a
notebook therefore re-runs the phases that use it and everything downstream of them, and nothing else.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..config import load_config
from ..io import read_json, write_json
from ..paths import ARTIFACTS_DIR, NOTEBOOKS_DIR, RunPaths
from .fingerprint import notebook_digest  # noqa: F401  (part of the runner's interface)
from ..registry import MULTI_PROCESS_PHASES, NOTEBOOKS, PHASE_INPUTS, PHASES, upstream
from .runtime import FINGERPRINT_FILE, fingerprint_payload, payload_hash

PHASE_ORDER = list(PHASES)  # data, sft, preferences, dpo, export, eval
# Parameters the runner passes besides preset and run_name. The evaluation notebook has widgets
# (a viewer, a chat box) that need a live frontend; under papermill it shows static tables instead.
EXTRA_PARAMETERS = {"eval": {"interactive": False}}


class RunnerError(RuntimeError):
    """The pipeline cannot start or continue (bad phase name, missing input, unknown parameter)."""


class PhaseFailed(RunnerError):
    """A notebook raised: names the notebook, the failing cell and the executed copy to open."""

    def __init__(self, phase: str, notebook: Path, executed: Path, exec_count, source_cell: int | None,
                 ename: str, evalue: str, first_line: str):
        self.phase, self.notebook, self.executed = phase, notebook, executed
        self.exec_count, self.source_cell = exec_count, source_cell
        self.ename, self.evalue, self.first_line = ename, evalue, first_line
        where = f"cell {source_cell} of the notebook" if source_cell is not None else "a cell"
        super().__init__(
            f"phase {phase!r} failed: {notebook.name}, {where} (In [{exec_count}], starting "
            f"{first_line!r}): {ename}: {evalue}\n  executed copy with the traceback: {executed}")

    def as_dict(self) -> dict:
        return {"phase": self.phase, "notebook": self.notebook.name, "executed": str(self.executed),
                "cell": self.source_cell, "exec_count": self.exec_count, "error": f"{self.ename}: {self.evalue}"}


@dataclass
class PhaseResult:
    """What happened to one phase in this invocation."""

    phase: str
    notebook: str
    status: str = "pending"  # ran | skipped (unchanged) | reused (--from) | failed | not run
    reason: str = ""
    seconds: float = 0.0
    executed: str = ""
    fingerprint: str = ""


@dataclass
class RunPlan:
    """The phases this invocation covers and how to treat them."""

    phases: list[str]
    start: str
    stop: str
    force: bool = False
    explicit_start: bool = False
    results: dict = field(default_factory=dict)


# ---------------------------------------------------------------- phase order


def ancestors(phase: str) -> list[str]:
    """The phase and every phase it reads, directly or through another phase, in pipeline order."""
    return upstream(phase, include_self=True)


# ---------------------------------------------------------------- parameters


def runner_parameters(phase: str, preset: str, run_name: str, num_processes: int = 1) -> dict:
    """The papermill parameters the runner passes to a phase's notebook (num_processes only where it trains in
    several processes: a one-process run passes exactly what it always did)."""
    extra = {"num_processes": num_processes} if num_processes > 1 and phase in MULTI_PROCESS_PHASES else {}
    return {"preset": preset, "run_name": run_name, **EXTRA_PARAMETERS.get(phase, {}), **extra}


def notebook_parameters(notebook: Path) -> dict:
    """Parameters papermill finds in the notebook's `parameters` cell (name → papermill's description)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Fail when a parameter is not declared by the notebook (papermill itself only warns)."""
    if not notebook.exists():
        raise RunnerError(f"notebook {notebook} is missing")
    declared = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise RunnerError(f"{notebook.name} does not declare parameter(s) {unknown} in its `parameters` "
                          f"cell (it declares {sorted(declared)})")


# ---------------------------------------------------------------- planning


def plan_phases(from_phase: str | None = None, to_phase: str | None = None, force: bool = False) -> RunPlan:
    """Which phases this invocation covers: from_phase (default the first) through to_phase (default the last)."""
    for name in (from_phase, to_phase):
        if name is not None and name not in PHASE_ORDER:
            raise RunnerError(f"unknown phase {name!r}: choose one of {PHASE_ORDER}")
    start, stop = from_phase or PHASE_ORDER[0], to_phase or PHASE_ORDER[-1]
    if PHASE_ORDER.index(start) > PHASE_ORDER.index(stop):
        raise RunnerError(f"--from {start} comes after --to {stop}")
    phases = PHASE_ORDER[: PHASE_ORDER.index(stop) + 1]
    return RunPlan(phases, start, stop, force, from_phase is not None)


def reuse_reason(phase: str, paths: RunPaths, payload: dict, fingerprint: str, ran_now: set[str]) -> str | None:
    """Why a phase must run again, or None when its outputs can be reused."""
    metrics_path = paths.root / phase / "metrics.json"
    if not metrics_path.exists():
        return "no metrics.json yet"
    recorded = read_json(metrics_path).get("_fingerprint")
    if recorded != fingerprint:
        return "changed: " + (", ".join(changed_parts(paths.root / phase, payload)) or "its inputs")
    rerun_inputs = [name for name in PHASE_INPUTS[phase] if name in ran_now]
    if rerun_inputs:
        return f"input phase(s) {rerun_inputs} ran again"
    return None


def changed_parts(phase_dir: Path, payload: dict) -> list[str]:
    """What differs from the fingerprint payload the phase recorded when it ran: 'library: export.py', ..."""
    recorded_path = phase_dir / FINGERPRINT_FILE
    if not recorded_path.exists():
        return []
    recorded = read_json(recorded_path)
    changed = []
    for key in sorted(set(payload) | set(recorded)):
        old, new = recorded.get(key), payload.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            changed.append(f"{key}: {', '.join(names)}")
        else:
            changed.append(key)
    return changed


# ---------------------------------------------------------------- execution


def execute_notebook(phase: str, notebook: Path, executed: Path, parameters: dict, progress: bool) -> None:
    """Execute one notebook with papermill; on error raise PhaseFailed naming the cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                   progress_bar=progress, cwd=str(notebook.parent))
    except PapermillExecutionError as err:
        source = err.source if isinstance(err.source, str) else "".join(err.source or "")
        raise PhaseFailed(phase, notebook, executed, err.exec_count, source_cell_number(notebook, source),
                          err.ename, err.evalue, first_code_line(source)) from None


def source_cell_number(notebook: Path, source: str) -> int | None:
    """1-based position (markdown cells included) of the cell with this source in the source notebook."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for number, cell in enumerate(nb.get("cells", []), start=1):
        if "".join(cell.get("source", "")).strip() == source.strip():
            return number
    return None


def first_code_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    return (lines[0] if lines else source.strip())[:80]


def run_pipeline(preset: str = "tiny", run_name: str = "demo", from_phase: str | None = None,
                 to_phase: str | None = None, force: bool = False, notebooks_dir: Path | None = None,
                 artifacts: Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, num_processes: int = 1) -> dict:
    """Execute notebooks 00-05 (or a range) in order, reusing unchanged phases; returns the summary.

    num_processes > 1: notebooks 01 and 03 train in that many processes, one per GPU (their num_processes
    parameter). The number of processes is not part of a phase's fingerprint: the rows of every update are the
    same (README, "More than one GPU"), so a phase trained on one GPU is reused on four and the other way round.

    Raises PhaseFailed at the first failing notebook (after writing summary.json and report.html).
    """
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    plan = plan_phases(from_phase, to_phase, force)
    cfg = load_config(preset)  # a broken preset fails here, before any kernel starts
    paths = RunPaths.for_run(run_name, artifacts or ARTIFACTS_DIR)
    paths.root.mkdir(parents=True, exist_ok=True)
    executed_dir = paths.notebooks

    run_range = plan.phases[plan.phases.index(plan.start):]
    for phase in run_range:  # every notebook checked before the first one runs
        check_parameters(notebooks_dir / NOTEBOOKS[phase], runner_parameters(phase, preset, run_name, num_processes))
    for phase in plan.phases[: plan.phases.index(plan.start)]:
        if not (paths.root / phase / "metrics.json").exists():
            raise RunnerError(f"--from {plan.start} reuses phase {phase!r}, but {paths.root / phase}/metrics.json "
                              f"is missing: run without --from (or --from {phase}) first")

    started = time.perf_counter()
    results = {p: PhaseResult(p, NOTEBOOKS[p]) for p in PHASE_ORDER}
    ran_now: set[str] = set()
    failure = None
    log(f"run {run_name!r} | preset {preset!r} | phases {plan.phases[0]} → {plan.stop} | folder {paths.root}")
    try:
        for number, phase in enumerate(plan.phases, start=1):
            result = results[phase]
            notebook = notebooks_dir / NOTEBOOKS[phase]
            executed = executed_dir / NOTEBOOKS[phase]
            head = f"[{number}/{len(plan.phases)}] {phase:<12} {NOTEBOOKS[phase]:<28}"
            if phase not in run_range:
                result.status, result.reason = "reused", f"--from {plan.start}"
                log(f"{head} reused (--from {plan.start})")
                continue
            payload = fingerprint_payload(phase, cfg, paths, notebooks_dir)
            fingerprint = payload_hash(payload)
            result.fingerprint = fingerprint
            if plan.force:
                reason = "--force"
            elif plan.explicit_start:
                reason = f"--from {plan.start}"
            else:
                reason = reuse_reason(phase, paths, payload, fingerprint, ran_now)
            if reason is None:
                result.status, result.reason = "skipped", "inputs, config and notebook unchanged"
                result.executed = str(executed) if executed.exists() else ""
                log(f"{head} skipped (unchanged)")
                continue
            log(f"{head} running ({reason})")
            result.reason, result.executed = reason, str(executed)
            t0 = time.perf_counter()
            try:
                execute_notebook(phase, notebook, executed, runner_parameters(phase, preset, run_name, num_processes),
                                 progress)
            except PhaseFailed:
                result.status, result.seconds = "failed", round(time.perf_counter() - t0, 2)
                raise
            result.seconds = round(time.perf_counter() - t0, 2)
            metrics_path = paths.root / phase / "metrics.json"
            if not metrics_path.exists():
                result.status = "failed"
                raise RunnerError(f"{NOTEBOOKS[phase]} finished without writing {metrics_path}: does it end "
                                  "with finish_phase(ctx, metrics)?")
            result.status = "ran"
            ran_now.add(phase)
            log(f"{head} done in {result.seconds:.1f} s")
    except PhaseFailed as err:
        failure = err  # raised again after the summary and the report are written
    finally:
        for phase in PHASE_ORDER:
            if results[phase].status == "pending":
                results[phase].status = "not run"
        summary = build_summary(cfg, paths, results, time.perf_counter() - started,
                                failure.as_dict() if failure else None, plan)
        write_json(paths.summary_json, summary)
        from .report import write_report

        report = write_report(paths.root, summary)
        log(f"summary → {paths.summary_json}\nreport  → {report}")
    if failure:
        raise failure
    return summary


def build_summary(cfg, paths: RunPaths, results: dict, seconds: float, failure: dict | None,
                  plan: RunPlan) -> dict:
    """All phases' metrics, the run config, timings and what ran or was skipped."""
    phases = {}
    for phase in PHASE_ORDER:
        metrics_path = paths.root / phase / "metrics.json"
        entry = asdict(results[phase])
        entry["metrics"] = read_json(metrics_path) if metrics_path.exists() else None
        phases[phase] = entry
    return {
        "run": paths.root.name,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "range": {"from": plan.start, "to": plan.stop, "force": plan.force},
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 2),
        "status": "failed" if failure else "ok",
        "failure": failure,
        "phone": phone_summary((phases.get("export") or {}).get("metrics")),
        "phases": phases,
    }


def phone_summary(export_metrics: dict | None) -> dict | None:
    """What the phone gets and why (summary.json's "phone"): file, format choice and reason, the server's checks."""
    if not export_metrics:
        return None
    keys = ("deploy_file", "deploy_choice", "phone_settings", "server_renders_training_prompt", "server_stop_rate",
            "python_stop_rate", "imatrix")
    return {key: export_metrics.get(key) for key in keys}
