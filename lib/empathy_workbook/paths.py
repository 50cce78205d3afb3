"""Where things live: the repository folders and the layout of one run directory (defined once, here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The package is installed editable from lib/empathy_workbook, so the repository is two levels up.
REPO_ROOT = Path(os.environ.get("EWB_REPO_ROOT", Path(__file__).resolve().parents[2]))
DATA_DIR = REPO_ROOT / "data"
CONFIGS_DIR = REPO_ROOT / "configs"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# Everything a run writes; EWB_ARTIFACTS moves it (tests use a temporary folder).
ARTIFACTS_DIR = Path(os.environ.get("EWB_ARTIFACTS", REPO_ROOT / "artifacts"))
CACHE_DIR = ARTIFACTS_DIR / "cache"

from .registry import PHASES, check_phase  # noqa: F401  (PHASES: part of this module's interface)


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run: artifacts/runs/<run>/<phase>/ plus notebooks/ and the summary files."""

    root: Path

    @classmethod
    def for_run(cls, run_name: str, artifacts: Path | None = None) -> "RunPaths":
        return cls((artifacts or ARTIFACTS_DIR) / "runs" / run_name)

    def phase(self, name: str) -> Path:
        check_phase(name)
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figures(self, phase: str) -> Path:
        path = self.phase(phase) / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def notebooks(self) -> Path:
        path = self.root / "notebooks"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


def cache_dir(name: str) -> Path:
    """A named folder under artifacts/cache/ (converter sources, judge scores, the tiny base model)."""
    path = CACHE_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path
