"""The phase contract every notebook follows: one setup call at the top, one finish call at the end.

    ctx = start_phase("sft", preset, run_name, overrides)   # seeds, plot style, run folders, config.json
    ...                                                     # explain → call lib → show
    finish_phase(ctx, metrics)                              # metrics.json with the phase fingerprint

A phase reads only what earlier phases wrote under artifacts/runs/<run>/ and writes only its own
folder. Its fingerprint (see `fingerprint.py`) hashes everything its result was made from: config
sections and seed, the bytes of its input files, the library modules and the notebook it runs, and the
fingerprints of the phases it reads. The runner skips a phase only when that hash is unchanged.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, load_config
from ..io import read_json, sha256_text, write_json, write_metrics
from ..paths import NOTEBOOKS_DIR, RunPaths
from ..registry import NOTEBOOKS, PHASE_INPUTS, PHASE_SECTIONS, upstream  # noqa: F401  (names notebooks/tests import from here)
from . import fingerprint as fp

# Which earlier phases each phase reads, which config sections shape it, its notebook: see registry.py.
# What a phase's fingerprint was made from, written beside its outputs so the runner can say what changed.
FINGERPRINT_FILE = "fingerprint.json"


@dataclass
class PhaseContext:
    """What a notebook holds between start_phase and finish_phase."""

    phase: str
    cfg: RunConfig
    paths: RunPaths
    out: Path  # this phase's folder
    fingerprint: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def figures(self) -> Path:
        return self.paths.figures(self.phase)

    def input_dir(self, phase: str) -> Path:
        """Folder of an earlier phase, checked to be finished (its metrics.json exists)."""
        if phase not in PHASE_INPUTS[self.phase]:
            raise ValueError(f"phase {self.phase!r} does not read {phase!r} (see PHASE_INPUTS)")
        folder = self.paths.root / phase
        if not (folder / "metrics.json").exists():
            raise MissingPhaseError(self.phase, [phase], self.paths)
        return folder


class MissingPhaseError(FileNotFoundError):
    """An earlier phase has not run: one line naming the notebook to run, shown in Jupyter without a traceback."""

    def __init__(self, phase: str, missing: list[str], paths: RunPaths):
        self.phase, self.missing = phase, list(missing)
        first = self.missing[0]
        then = f" (then {', '.join(NOTEBOOKS[p] for p in self.missing[1:])})" if len(self.missing) > 1 else ""
        super().__init__(
            f"{NOTEBOOKS[phase]} needs phase {first!r} of run {paths.root.name!r}: run notebook "
            f"{NOTEBOOKS[first]} first{then} ({paths.root / first}/metrics.json is missing)")

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback: the learner's next step is to run a notebook,
        # not to read library frames.
        return [f"{type(self).__name__}: {self}"]


def require_inputs(phase: str, paths: RunPaths) -> None:
    """Raise MissingPhaseError when a phase this one reads (directly or through another) has not finished."""
    missing = [p for p in upstream(phase) if not (paths.root / p / "metrics.json").exists()]
    if missing:
        raise MissingPhaseError(phase, missing, paths)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plot_style() -> None:
    """Small, readable figures (the style guide's ≈5×3 in)."""
    import matplotlib

    matplotlib.rcParams.update({"figure.figsize": (5, 3), "figure.dpi": 100, "axes.grid": True,
                                "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})


def notebook_path(phase: str, notebooks_dir: Path | None = None) -> Path:
    """The phase's source notebook: in `notebooks_dir`, else in the working folder (papermill and
    JupyterLab run a notebook from its own folder), else in the repository's notebooks/."""
    if notebooks_dir is not None:
        return Path(notebooks_dir) / NOTEBOOKS[phase]
    here = Path.cwd() / NOTEBOOKS[phase]
    return here if here.exists() else NOTEBOOKS_DIR / NOTEBOOKS[phase]


def fingerprint_payload(phase: str, cfg: RunConfig, paths: RunPaths, notebooks_dir: Path | None = None) -> dict:
    """Everything a phase's result is made from (see fingerprint.py), as a JSON-able dict."""
    upstream = {}
    for name in PHASE_INPUTS[phase]:
        metrics = paths.root / name / "metrics.json"
        upstream[name] = read_json(metrics).get("_fingerprint") if metrics.exists() else None
    sections = {s: cfg.section(s) for s in PHASE_SECTIONS[phase]}
    notebook = notebook_path(phase, notebooks_dir)
    modules = fp.notebook_modules(notebook) if notebook.exists() else fp.module_closure({__name__})
    return {
        "phase": phase,
        "seed": cfg.seed,
        "config": sections,
        "inputs": fp.input_digests(fp.phase_input_files(phase, cfg, sections)),
        "library": fp.library_digest(modules),
        "notebook": fp.notebook_digest(notebook) if notebook.exists() else None,
        "upstream": upstream,
    }


def payload_hash(payload: dict) -> str:
    return sha256_text(json.dumps(payload, sort_keys=True))[:16]


def phase_fingerprint(phase: str, cfg: RunConfig, paths: RunPaths, notebooks_dir: Path | None = None) -> str:
    """Short hash of fingerprint_payload: equal only when nothing the phase was made from changed."""
    return payload_hash(fingerprint_payload(phase, cfg, paths, notebooks_dir))


def start_phase(phase: str, preset: str = "tiny", run_name: str = "demo", overrides: dict | None = None,
                artifacts: Path | None = None) -> PhaseContext:
    """Load the config, seed everything, set the plot style, create the run folders."""
    cfg = load_config(preset, overrides)
    paths = RunPaths.for_run(run_name, artifacts)
    require_inputs(phase, paths)  # before any folder is made: opening 03 first only prints which notebook to run
    out = paths.phase(phase)
    write_json(out / "config.json", cfg.to_dict())
    if phase == "data":
        write_json(paths.config_json, cfg.to_dict())
    seed_everything(cfg.seed)
    plot_style()
    payload = fingerprint_payload(phase, cfg, paths)
    write_json(out / FINGERPRINT_FILE, payload)
    ctx = PhaseContext(phase, cfg, paths, out, payload_hash(payload))
    print(f"phase {phase!r} | preset {cfg.preset!r} | run folder {paths.root}")
    return ctx


def process_context(phase: str, preset: str = "tiny", run_name: str = "demo", overrides: dict | None = None,
                    artifacts: Path | None = None) -> PhaseContext:
    """start_phase for code that may run in several processes (distributed.py): the main process writes the
    phase's config and fingerprint files; the others build the same context without writing anything."""
    from ..distributed import is_main_process

    if is_main_process():
        return start_phase(phase, preset, run_name, overrides, artifacts)
    cfg = load_config(preset, overrides)
    paths = RunPaths.for_run(run_name, artifacts)
    require_inputs(phase, paths)
    seed_everything(cfg.seed)
    return PhaseContext(phase, cfg, paths, paths.phase(phase), phase_fingerprint(phase, cfg, paths))


def finish_phase(ctx: PhaseContext, metrics: dict) -> dict:
    """Write metrics.json (with wall time, peak memory and the fingerprint) and print a summary."""
    from ..models.loading import peak_memory_mb

    metrics = dict(metrics)
    metrics.setdefault("seconds", round(time.perf_counter() - ctx.started, 2))
    device = "cuda" if _cuda_in_use() else "cpu"
    metrics.setdefault("peak_memory_mb", round(peak_memory_mb(device), 1))
    write_metrics(ctx.out, metrics, ctx.fingerprint)
    print(f"phase {ctx.phase!r} done in {metrics['seconds']:.1f} s, peak memory {metrics['peak_memory_mb']:.0f} MB "
          f"→ {ctx.out / 'metrics.json'}")
    return metrics


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0
