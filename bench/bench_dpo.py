"""Benchmark (not a test): DPO steps on a random-weight Qwen3-0.6B (exact shape) with a LoRA adapter.

Through the phase's own code when lib/empathy_workbook/phases/dpo.py exists (qwen3-0.6b preset with
benchmark-sized overrides, the project's backend choice, training.load_model, dpo.preference_dataset,
dpo.training_arguments, dpo.build_trainer), else TRL's DPOTrainer built directly the same way.
TRL's DPOTrainer as phase 03 uses it: the policy is the model plus a new LoRA (r16 on the 7
projections), the reference is the same model with the adapter disabled (no second copy), beta 0.1.
One step = policy forward + backward on chosen and rejected, plus a no-grad reference forward.
Pairs are synthetic with fixed token counts (every word is one Qwen token), or built from the corpus
(question, its answer as chosen, another question's answer as rejected) for realistic lengths.

    .venv/bin/python bench/bench_dpo.py --cpu-small
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--dtype", help="fp32 / bf16 / fp16 (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--batch", type=int, help="pairs per step (default 1 on CPU, 8 on CUDA)")
    parser.add_argument("--prompt-len", type=int, help="synthetic prompt tokens (default 64 CPU, 128 CUDA)")
    parser.add_argument("--answer-len", type=int, help="synthetic chosen/rejected tokens (default 192 CPU, 384 CUDA)")
    parser.add_argument("--steps", type=int, help="timed steps (default 2 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--data", choices=["synthetic", "corpus"], default="synthetic")
    parser.add_argument("--grad-ckpt", choices=["on", "off"], default="on",
                        help="gradient checkpointing (TRL's DPOConfig default is on)")
    parser.add_argument("--path", choices=["auto", "project", "trl"], default="auto",
                        help="auto = project when lib/empathy_workbook/phases/dpo.py exists, else trl")
    return parser.parse_args(argv)


def defaults(args, device: str):
    cuda = device == "cuda"
    if args.path == "auto":
        args.path = "project" if importlib.util.find_spec("empathy_workbook.phases.dpo") else "trl"
    args.batch = args.batch or (8 if cuda else 1)
    args.prompt_len = args.prompt_len or (128 if cuda else 64)
    args.answer_len = args.answer_len or (384 if cuda else 192)
    args.steps = args.steps or (20 if cuda else 2)
    return args


def one_token_words(tokenizer, limit: int = 2000) -> list[str]:
    """Words that are a single token with their leading space, so ' '.join(k words) is exactly k tokens."""
    words = []
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token.startswith("Ġ") and token[1:].isalpha() and token[1:].islower() and len(token) > 3:
            words.append(token[1:])
            if len(words) >= limit:
                break
    return words


def synthetic_pairs(tokenizer, n: int, prompt_len: int, answer_len: int, seed: int = 0):
    words = one_token_words(tokenizer)
    rng = random.Random(seed)

    def text(k):
        return "".join(" " + rng.choice(words) for _ in range(k))

    # conversational, like preferences/pairs.jsonl; the chat template adds ~15 tokens around the words
    return [{"prompt": [{"role": "user", "content": text(prompt_len).strip()}],
             "chosen": [{"role": "assistant", "content": text(answer_len).strip()}],
             "rejected": [{"role": "assistant", "content": text(answer_len).strip()}]} for _ in range(n)]


def corpus_pairs(tokenizer, n: int, seed: int = 0):
    """Conversational pairs from the corpus: its own answer chosen, a different question's answer rejected."""
    from common import corpus_records

    train, _, _ = corpus_records(tokenizer)
    rng = random.Random(seed)
    rows = []
    for record in rng.sample(train, min(n, len(train))):
        other = rng.choice(train)
        rows.append({"prompt": record["prompt"], "chosen": record["completion"], "rejected": other["completion"]})
    return rows


def project_trainer(args, cfg, backend, tokenizer, pairs, work: Path):
    """The phase's own code on a saved random-weight folder."""
    import common
    from empathy_workbook.phases import dpo, training

    folder = common.random_model_dir(args.shape, tokenizer, args.layers, log=common.log)
    model, peft_config = training.load_model(str(folder), backend, cfg.dpo.train, cfg.dpo.lora)
    targs = dataclasses.replace(dpo.training_arguments(cfg.dpo, backend, work, has_eval=False), disable_tqdm=True)
    return dpo.build_trainer(model, tokenizer, dpo.preference_dataset(pairs, tokenizer), targs, peft_config=peft_config)


def trl_trainer(args, device, tokenizer, pairs, work: Path):
    """TRL's DPOTrainer built directly: in-memory random model, new LoRA, implicit reference."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    import common

    model = common.build_model(args.shape, args.layers, args.dtype, device)
    config = DPOConfig(
        output_dir=str(work), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=5e-5, lr_scheduler_type="constant", beta=0.1,
        max_length=1024, logging_steps=common.BIG, save_strategy="no", eval_strategy="no", report_to=[],
        use_cpu=device == "cpu", bf16=args.dtype == "bf16", fp16=args.dtype == "fp16",
        gradient_checkpointing=args.grad_ckpt == "on", dataloader_num_workers=0, seed=0,
        optim="adamw_torch", disable_tqdm=True)
    peft = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=common.LORA_TARGETS, bias="none",
                      task_type="CAUSAL_LM")
    return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                      peft_config=peft)


def main(argv=None) -> None:
    args = parse_args(argv)
    import common

    device = "cuda" if common.cuda_available() else "cpu"
    defaults(args, device)
    cfg = backend = None
    if args.path == "project":
        train = common.window_overrides(args.batch, 1024, args.warmup + args.steps, args.grad_ckpt == "on",
                                        args.dtype)
        cfg, backend = common.project_phase("dpo", train)
        args.dtype = backend.precision
    args.dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    common.mark_imports_done()
    common.reset_peak(device)
    tokenizer, tokenizer_name = common.qwen_tokenizer(log=common.log)
    n_pairs = args.batch * (args.warmup + args.steps)
    pairs = (synthetic_pairs(tokenizer, n_pairs, args.prompt_len, args.answer_len) if args.data == "synthetic"
             else corpus_pairs(tokenizer, n_pairs))
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as work:
        trainer = (project_trainer(args, cfg, backend, tokenizer, pairs, Path(work)) if args.path == "project"
                   else trl_trainer(args, device, tokenizer, pairs, Path(work)))
        common.log(f"dpo ({args.path}): {args.data} pairs, {args.warmup}+{args.steps} steps of {args.batch} pair(s) …")
        timing = common.timed_training(trainer, device, tokenizer.pad_token_id, args.warmup)
    timed, seconds, real, slots = timing["step_seconds"], timing["seconds"], timing["real"], timing["slots"]
    pairs = timing["rows"]
    mean_len = real / max(1, 2 * pairs)
    layers = args.layers or common.SHAPES[args.shape]["num_hidden_layers"]
    # useful FLOPs: policy forward + activation gradients (2x) and the reference forward (1x) = 3 forwards
    flops = 3 * common.forward_flops_per_token(args.shape, int(mean_len / 2), args.layers) * real
    where = f"project: {backend.name}{', 4-bit base' if backend.load_in_4bit else ''}" if backend else args.path
    what = f"DPO LoRA r16 ({where}), implicit reference, {args.data}, grad-ckpt {args.grad_ckpt}"
    row = common.Row(stage="dpo", what=what, shape=args.shape, layers=layers, dtype=args.dtype, device=device,
              batch=args.batch, seq_len=round(mean_len), tokens_per_s=real / seconds,
              seconds_per_step=seconds / len(timed), **common.peak_memory(device),
              extra={"pairs_per_s": pairs / seconds, "padding_share": 1 - real / slots if slots else None,
                     "real_tokens": real, "timed_steps": len(timed), "step_seconds": timed,
                     "useful_gflops_per_s": flops / seconds / 1e9, "tokenizer": tokenizer_name,
                     "tokens_count": "prompt+chosen and prompt+rejected rows (what the policy processes)",
                     "code_path": args.path, "backend": str(backend) if backend else None,
                     **common.memory_notes(device)})
    common.emit([row], args.json_out)


if __name__ == "__main__":
    main()
