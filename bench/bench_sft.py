"""Benchmark (not a test): LoRA SFT steps on a random-weight Qwen3-0.6B (exact shape).

Measures seconds per optimizer step, real (non-padding) tokens per second, the padding share of the
batches the trainer actually built, and peak memory. Data is either synthetic fixed-length rows
(pure compute throughput, no padding) or the shipped corpus tokenized as phase 01 does it, which
shows what padding costs and what the batching options save.

Code paths:
* `project` (default when lib/empathy_workbook/phases/sft.py exists): the phase's own code. The qwen3-0.6b
  preset with benchmark-sized overrides, the backend the project picks on this machine (CPU fp32; on
  CUDA Unsloth or transformers+PEFT, 4-bit base as the preset says), training.load_model on a saved
  random-weight folder, sft.tokenized_dataset, sft.training_arguments, sft.build_trainer.
* `trl`: TRL's SFTTrainer built directly the same way (pre-tokenized input_ids + completion_mask,
  completion-only loss, LoRA r16/alpha16/dropout 0 on the 7 projections) on an in-memory model.
* `unsloth` (CUDA only): Unsloth's loader and LoRA, then TRL's SFTTrainer.

    .venv/bin/python bench/bench_sft.py --cpu-small
    .venv/bin/python bench/bench_sft.py --cpu-small --data corpus --batch 4 --padding-free
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--path", choices=["auto", "project", "trl", "unsloth"], default="auto",
                        help="auto = project when lib/empathy_workbook/phases/sft.py exists, else trl")
    parser.add_argument("--dtype", help="fp32 / bf16 / fp16 (default: the backend's; fp32 on CPU)")
    parser.add_argument("--batch", type=int, help="sequences per step (default 2 on CPU, 16 on CUDA)")
    parser.add_argument("--seq-len", type=int, help="synthetic length / max_length (default 256 CPU, 512 CUDA)")
    parser.add_argument("--steps", type=int, help="timed steps (default 3 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--data", choices=["synthetic", "corpus"], default="synthetic")
    parser.add_argument("--sampler", choices=["random", "group_by_length"], default="random",
                        help="order of the corpus rows (transformers train_sampling_strategy)")
    parser.add_argument("--padding-free", action="store_true", help="TRL padding_free (flattened batch)")
    parser.add_argument("--grad-ckpt", choices=["on", "off"], default="on",
                        help="gradient checkpointing (TRL's default and the project's default are on)")
    parser.add_argument("--base", choices=["preset", "4bit", "16bit"], default="preset",
                        help="project path: the preset's base (qwen3-0.6b: 4-bit on CUDA) or forced; trl: 16bit")
    parser.add_argument("--no-unsloth", action="store_true", help="project path: transformers+PEFT even if Unsloth is there")
    parser.add_argument("--label", default="", help="extra words for the row's description")
    return parser.parse_args(argv)


def defaults(args, device: str):
    cuda = device == "cuda"
    if args.path == "auto":
        args.path = "project" if importlib.util.find_spec("empathy_workbook.phases.sft") else "trl"
    args.batch = args.batch or (16 if cuda else 2)
    args.seq_len = args.seq_len or (512 if cuda else 256)
    args.steps = args.steps or (20 if cuda else 3)
    return args


def synthetic_rows(n: int, length: int, prompt_share: float = 0.3) -> list[dict]:
    """Fixed-length rows whose first 30 % is prompt (masked out of the loss) and the rest answer."""
    from common import random_token_rows

    cut = int(length * prompt_share)
    return [{"input_ids": ids, "completion_mask": [0] * cut + [1] * (length - cut)}
            for ids in random_token_rows(n, length)]


def corpus_rows(tokenizer, max_length: int) -> list[dict]:
    """The corpus's training rows tokenized exactly as phase 01 does (prompt masked, answer + <|im_end|>)."""
    from common import corpus_records
    from empathy_workbook.chat import tokenize_prompt_completion

    train, _, _ = corpus_records(tokenizer)
    return [tokenize_prompt_completion(tokenizer, r["prompt"], r["completion"][0]["content"], max_length)
            for r in train]


def batching_fields(args) -> dict:
    """The SFTConfig fields the padding experiments change."""
    return {"padding_free": args.padding_free, "train_sampling_strategy": args.sampler,
            # rows are truncated when tokenized; TRL refuses max_length with padding-free unless packing
            **({"max_length": None} if args.padding_free else {})}


def project_batching(args) -> str:
    """The config.SFTConfig.batching value that matches --padding-free / --sampler."""
    if args.padding_free:
        return "padding_free"
    return "length_grouped" if args.sampler == "group_by_length" else "padded"


def project_trainer(args, cfg, backend, tokenizer, rows, work: Path):
    """The phase's own code: load_model on a saved random-weight folder, sft.training_arguments, build_trainer."""
    import dataclasses

    from datasets import Dataset

    import common
    from empathy_workbook.phases import sft, training

    folder = common.random_model_dir(args.shape, tokenizer, args.layers, log=common.log)
    model, peft_config = training.load_model(str(folder), backend, cfg.sft.train, cfg.sft.lora)
    # the library's own batching option (config.SFTConfig.batching), not fields set behind its back
    phase = dataclasses.replace(cfg.sft, batching=project_batching(args))
    targs = dataclasses.replace(sft.training_arguments(phase, backend, work, has_eval=False), disable_tqdm=True)
    return sft.build_trainer(model, tokenizer, Dataset.from_list(rows), targs, peft_config=peft_config)


def trl_trainer(args, device, tokenizer, rows, work: Path):
    """TRL's SFTTrainer built directly, the way the project builds it, on an in-memory random model."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import common

    if args.path == "unsloth":
        model, peft_config = unsloth_model(args, tokenizer, work), None  # Unsloth attached its own adapter
    else:
        model = common.build_model(args.shape, args.layers, args.dtype, device)
        peft_config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=common.LORA_TARGETS,
                                 bias="none", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=str(work), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=2e-4, lr_scheduler_type="constant",
        logging_steps=common.BIG, save_strategy="no", eval_strategy="no", report_to=[],
        use_cpu=device == "cpu", bf16=args.dtype == "bf16", fp16=args.dtype == "fp16",
        gradient_checkpointing=args.grad_ckpt == "on", completion_only_loss=True, max_length=args.seq_len,
        dataloader_num_workers=0, seed=0, optim="adamw_torch", disable_tqdm=True, **batching_fields(args))
    return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=peft_config)


def unsloth_model(args, tokenizer, work: Path):
    """Unsloth loads from a folder: the cached random model, loaded back with Unsloth's LoRA attached."""
    from unsloth import FastLanguageModel

    import common

    folder = common.random_model_dir(args.shape, tokenizer, args.layers, log=common.log)
    model, _ = FastLanguageModel.from_pretrained(model_name=str(folder), max_seq_length=args.seq_len,
                                                 dtype=common.torch_dtype(args.dtype),
                                                 load_in_4bit=args.base == "4bit")
    return FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=common.LORA_TARGETS, bias="none",
                                            use_gradient_checkpointing="unsloth" if args.grad_ckpt == "on" else False,
                                            random_state=0)


def describe(args, backend=None) -> str:
    where = f"project: {backend.name}{', 4-bit base' if backend.load_in_4bit else ''}" if backend else args.path
    parts = [f"LoRA r16 ({where})", args.data]
    if args.data == "corpus":
        parts.append("padding-free" if args.padding_free else args.sampler)
    parts.append(f"grad-ckpt {args.grad_ckpt}")
    if args.path == "unsloth" and args.base == "4bit":
        parts.append("4-bit base")
    if args.label:
        parts.append(args.label)
    return ", ".join(parts)


def main(argv=None) -> None:
    args = parse_args(argv)
    import common

    device = "cuda" if common.cuda_available() else "cpu"  # imports torch only (Unsloth may still come first)
    defaults(args, device)
    cfg = backend = None
    if args.path == "project":
        train = common.window_overrides(args.batch, args.seq_len, args.warmup + args.steps, args.grad_ckpt == "on",
                                        args.dtype)
        model = {"use_unsloth": not args.no_unsloth,
                 **({"load_in_4bit": args.base == "4bit"} if args.base != "preset" else {})}
        cfg, backend = common.project_phase("sft", train, model)
        args.dtype = backend.precision
    elif args.path == "unsloth":
        if device != "cuda":
            raise SystemExit("Unsloth needs CUDA")
        import unsloth  # noqa: F401 - must be imported before transformers / TRL / PEFT
    args.dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    common.mark_imports_done()
    common.reset_peak(device)
    tokenizer, tokenizer_name = common.qwen_tokenizer(log=common.log)
    n_rows = args.batch * (args.warmup + args.steps)
    rows = synthetic_rows(n_rows, args.seq_len) if args.data == "synthetic" else corpus_rows(tokenizer, args.seq_len)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as work:
        trainer = (project_trainer(args, cfg, backend, tokenizer, rows, Path(work)) if args.path == "project"
                   else trl_trainer(args, device, tokenizer, rows, Path(work)))
        common.log(f"sft: {describe(args, backend)}, {args.warmup}+{args.steps} steps of batch {args.batch} …")
        timing = common.timed_training(trainer, device, tokenizer.pad_token_id, args.warmup)
    timed_steps, seconds, real, slots = timing["step_seconds"], timing["seconds"], timing["real"], timing["slots"]
    layers = args.layers or common.SHAPES[args.shape]["num_hidden_layers"]
    mean_len = real / max(1, timing["rows"])
    # useful FLOPs of LoRA training: forward + activation gradients ≈ 2 forwards (recompute not counted)
    flops = 2 * common.forward_flops_per_token(args.shape, int(mean_len / 2), args.layers) * real
    row = common.Row(
        stage="sft", what=describe(args, backend), shape=args.shape, layers=layers, dtype=args.dtype, device=device,
        batch=args.batch, seq_len=args.seq_len if args.data == "synthetic" else round(mean_len),
        tokens_per_s=real / seconds, seconds_per_step=seconds / len(timed_steps), **common.peak_memory(device),
        extra={"padding_share": 1 - real / slots if slots else None, "real_tokens": real, "padded_slots": slots,
               "timed_steps": len(timed_steps), "step_seconds": timed_steps,
               "useful_gflops_per_s": flops / seconds / 1e9, "tokenizer": tokenizer_name,
               "code_path": args.path, "backend": str(backend) if backend else None,
               "rows_in_dataset": len(rows), **common.memory_notes(device),
               "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)})
    common.emit([row], args.json_out)


if __name__ == "__main__":
    main()
