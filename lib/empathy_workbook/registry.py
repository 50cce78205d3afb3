"""The phases of the pipeline, each declared once: its notebook, the config sections and earlier
phases it reads, what it writes, and how long it takes.

Everything else that needs the phase list (paths, the runtime contract, the runner, the first screen,
the fingerprint, the report) reads it from here. The module sits at the package's top level beside
paths.py and imports nothing from the package, so any module, shared or phase-specific, can import it
without an import circle or an upward import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Duration:
    """How long one notebook takes: measured on CPU with the default (smollm2-135m) and the tiny preset, estimated
    on a GPU for the real (qwen3-0.6b) preset. Quoted text, because each figure names where it came from
    (guide.py)."""

    cpu_default: str
    cpu_tiny: str
    gpu_real: str


@dataclass(frozen=True)
class Phase:
    name: str
    notebook: str
    sections: tuple[str, ...]  # config sections that shape its result (part of its fingerprint)
    inputs: tuple[str, ...]  # earlier phases whose folders it reads
    outputs: tuple[str, ...]  # what it writes in its own folder besides metrics.json and figures/
    duration: Duration
    data_files: tuple[str, ...] = ()  # files under data/ it reads that no phase writes (fingerprinted)
    # trains in one process per GPU when its notebook's num_processes parameter is above 1 (README, "More than one
    # GPU"); its entry point (`empathy-workbook <name>`) then also writes train_result.json
    multi_process: bool = False


# In pipeline order: a phase may read only phases above it (tests/unit/test_registry.py checks this).
PHASE_LIST = (
    Phase("data", "00_prepare_data.ipynb", ("model", "data"), (),
          ("train.jsonl", "val.jsonl"),
          Duration("6 s (about 20 s more the first time: the packaged model is converted once)",
                   "95 s (most of it builds the tiny model once; later runs reuse it)", "not estimated")),
    Phase("sft", "01_sft_lora.ipynb", ("model", "sft"), ("data",),
          ("adapter", "merged", "log_history.json", "spot_check.csv"),
          Duration("6.5 min", "59 s", "30–60 min"), multi_process=True),
    Phase("preferences", "02_preference_pairs.ipynb", ("preferences",), ("data", "sft"),
          ("candidates.jsonl", "scores.jsonl", "pairs.jsonl", "pairs_heldout.jsonl"),
          Duration("2.5–3 min", "20 s", "120–240 min, with judging"), data_files=("judge_pairs.jsonl",)),
    Phase("dpo", "03_dpo.ipynb", ("model", "dpo"), ("data", "sft", "preferences"),
          ("adapter", "merged", "log_history.json", "spot_check.csv"),
          Duration("3.5 min", "30 s", "20–40 min"), multi_process=True),
    # eval: the suite, word budget and sampling the phone settings (phone_settings.json) are checked with
    Phase("export", "04_export_gguf.ipynb", ("export", "eval"), ("data", "dpo"),
          ("manifest.json", "phone_settings.json", "quality.csv", "answers_side_by_side.csv"),
          Duration("85 s", "86 s on a busy machine (llama-server and llama-cpp-python answer the 30 suite prompts)",
                   "5–10 min")),
    Phase("eval", "05_evaluate.ipynb", ("model", "eval"), ("data", "sft", "dpo", "export"),
          ("answers.jsonl", "scores.jsonl", "similarity_scores.jsonl", "category_scores.csv", "side_by_side.csv"),
          Duration("3.5–4 min", "23 s (without the widgets)", "not estimated"),
          data_files=("judge_pairs.jsonl", "check_labels.jsonl")),
)

REGISTRY = {p.name: p for p in PHASE_LIST}
PHASES = tuple(REGISTRY)  # names in pipeline order

# The views older code and the notebooks' tests use, derived from the declarations above.
NOTEBOOKS = {p.name: p.notebook for p in PHASE_LIST}
PHASE_INPUTS = {p.name: list(p.inputs) for p in PHASE_LIST}
PHASE_SECTIONS = {p.name: list(p.sections) for p in PHASE_LIST}
PHASE_DURATIONS = {p.name: p.duration for p in PHASE_LIST}
FIXED_DATA_FILES = {p.name: list(p.data_files) for p in PHASE_LIST if p.data_files}
MULTI_PROCESS_PHASES = tuple(p.name for p in PHASE_LIST if p.multi_process)


def check_phase(name: str) -> str:
    if name not in REGISTRY:
        raise ValueError(f"unknown phase {name!r}: one of {list(PHASES)}")
    return name


def upstream(phase: str, include_self: bool = False) -> list[str]:
    """Every phase this one reads, directly or through another phase, in pipeline order.

    The single walk over the inputs: the runner uses it to decide what to re-run, the runtime to
    name the notebooks a learner still has to run."""
    seen, todo = set(), list(REGISTRY[check_phase(phase)].inputs)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(REGISTRY[name].inputs)
    if include_self:
        seen.add(phase)
    return [p for p in PHASES if p in seen]
