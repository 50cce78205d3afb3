"""Benchmark (not a test): what batching and gradient checkpointing do to SFT throughput, A/B in one process.

One SFT trainer (the project's code path when it exists, else TRL's SFTTrainer built the same way) on a
random-weight Qwen3-0.6B, fed corpus rows tokenized as phase 01 does. The variants take turns step by
step in the same process (A, B, C, D, A, B, …), so a busy shared machine slows them alike:
* random order, padded to the longest row (the Trainer default), gradient checkpointing on (TRL's and
  the project's default) — the baseline;
* the same batches with checkpointing off;
* the same batches padding-free (TRL's flattened batch + position_ids; on CPU the attention runs over
  the whole flattened row with a block-diagonal mask, on GPU flash-attention's varlen kernel skips it);
* length-grouped order (transformers' group_by_length sampler), padded, checkpointing off.
Each step is trainer.training_step (forward, TRL's loss, backward); the optimizer is not stepped, so
every variant sees the same weights.

    .venv/bin/python bench/bench_batching.py --cpu-small
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="rows per step (default 4 CPU = the design doc, 16 CUDA)")
    parser.add_argument("--max-length", type=int, help="token cap per row (default: the tiny preset's 256 on CPU, 1024 CUDA)")
    parser.add_argument("--repeats", type=int, help="steps per variant (default 2 CPU, 10 CUDA)")
    return parser.parse_args(argv)


def orders(lengths: list[int], batch: int, seed: int = 0) -> dict[str, list[int]]:
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return {"random": torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist(),
            "grouped": get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(seed))}


def set_checkpointing(model, on: bool) -> None:
    """Switch activation checkpointing of the underlying transformers model on or off between steps."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def main(argv=None) -> None:
    args = parse_args(argv)
    import common
    from bench_sft import corpus_rows

    device = "cuda" if common.cuda_available() else "cpu"
    cuda = device == "cuda"
    args.batch = args.batch or (16 if cuda else 4)
    args.max_length = args.max_length or (1024 if cuda else 256)
    args.repeats = args.repeats or (10 if cuda else 2)

    import argparse

    sft_args = argparse.Namespace(shape=args.shape, layers=args.layers, path="auto", dtype=None, batch=args.batch,
                                  seq_len=args.max_length, steps=1, warmup=0, data="corpus", sampler="random",
                                  padding_free=False, grad_ckpt="on", base="preset", no_unsloth=False, label="")
    import bench_sft

    bench_sft.defaults(sft_args, device)
    cfg = backend = None
    if sft_args.path == "project":
        cfg, backend = common.project_phase("sft", common.window_overrides(args.batch, args.max_length, 1))
        sft_args.dtype = backend.precision
    sft_args.dtype = sft_args.dtype or ("bf16" if cuda else "fp32")
    common.mark_imports_done()
    tokenizer, tokenizer_name = common.qwen_tokenizer(log=common.log)
    rows = corpus_rows(tokenizer, args.max_length)
    import tempfile

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as work:
        trainer = (bench_sft.project_trainer(sft_args, cfg, backend, tokenizer, rows, Path(work))
                   if sft_args.path == "project" else bench_sft.trl_trainer(sft_args, device, tokenizer, rows, Path(work)))
        dataset = trainer.train_dataset  # prepared by TRL: input_ids + labels (prompt = -100)
        lengths = [len(x) for x in dataset["input_ids"]]
        padded = trainer.data_collator
        flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
        by = orders(lengths, args.batch)
        variants = {  # name: (order, collator, checkpointing)
            "random order, padded, grad-ckpt on (default)": ("random", padded, True),
            "random order, padded, grad-ckpt off": ("random", padded, False),
            "random order, padding-free, grad-ckpt off": ("random", flat, False),
            "group_by_length, padded, grad-ckpt off": ("grouped", padded, False),
        }
        stats = {name: {"s": 0.0, "real": 0, "slots": 0, "steps": []} for name in variants}
        model = trainer.model
        model.train()
        trainer.current_gradient_accumulation_steps = 1  # normally set inside train()
        warm = padded([dataset[i] for i in by["random"][:2]])
        set_checkpointing(model, True)
        trainer.training_step(model, warm)  # first-call allocations stay out of the timings
        for rep in range(args.repeats):
            for name, (order, collator, ckpt) in variants.items():
                examples = [dataset[i] for i in by[order][rep * args.batch:(rep + 1) * args.batch]]
                batch = collator(examples)
                set_checkpointing(model, ckpt)
                model.zero_grad(set_to_none=True)
                common.sync(device)
                started = time.perf_counter()
                trainer.training_step(model, batch)
                common.sync(device)
                seconds = time.perf_counter() - started
                real = sum(len(e["input_ids"]) for e in examples)
                s = stats[name]
                s["s"] += seconds
                s["real"] += real
                s["slots"] += int(batch["input_ids"].numel())
                s["steps"].append(round(seconds, 3))
                common.log(f"batching: {name}: {seconds:.2f} s for {real} tokens")
    layers = args.layers or common.SHAPES[args.shape]["num_hidden_layers"]
    base_rate = None
    out = []
    for name, s in stats.items():
        rate = s["real"] / s["s"]
        base_rate = base_rate or rate
        out.append(common.Row(
            stage="sft-batching", what=name, shape=args.shape, layers=layers, dtype=sft_args.dtype, device=device,
            batch=args.batch, seq_len=round(s["real"] / (args.batch * args.repeats)), tokens_per_s=rate,
            seconds_per_step=s["s"] / args.repeats, **common.peak_memory(device),
            extra={"padding_share": 1 - s["real"] / s["slots"], "speedup_vs_default": rate / base_rate,
                   "step_seconds": s["steps"], "tokenizer": tokenizer_name, "code_path": sft_args.path,
                   "note": "forward + loss + backward per step (no optimizer step); variants interleaved"}))
    common.emit(out, args.json_out)
    for r in out:
        print(f"- {r.what}: {r.tokens_per_s:.1f} tok/s (x{r.extra['speedup_vs_default']:.2f}), "
              f"padding {r.extra['padding_share']:.1%}")


if __name__ == "__main__":
    main()
