"""What SFT and DPO share: backend-aware model loading, trainer arguments, guards, resume, merge-and-save.

One implementation for both phases:
- `prepare_backend` picks Unsloth / transformers+PEFT / CPU and imports Unsloth first when it is used;
- `load_model` returns the base to train and either a PEFT LoRA config (TRL attaches it) or None (Unsloth did);
- `common_arguments` turns a TrainConfig into the TrainingArguments fields both TRL configs accept;
- `TrainingGuards` (mixed into the TRL trainers) stops on a non-finite raw loss with advice, and adds peak memory
  to the logs; `standard_callbacks` adds early stopping;
- `train_with_resume` continues an interrupted run from its last checkpoint in the phase folder;
- `merge_and_save` folds the adapter into an unquantized 16-bit copy of the base and saves it with the tokenizer.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from ..chat import one_per_question
from ..config import LoraConfig, ModelConfig, SamplingConfig, TrainConfig
from ..distributed import (gather_values, is_main_process, main_process_first, once_per_epoch_sampler,
                           per_process_schedule, wait_for_everyone, world_size)
from ..io import read_json, write_json
from ..models.loading import Backend, free_memory, peak_memory_mb, resolve_model_path, select_backend  # noqa: F401 (training.free_memory in notebooks)

RUN_MARKER = "run.json"  # in the checkpoint folder: which config the checkpoints belong to, and whether it finished


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message says what to change."""


# --- backend and model ---

def prepare_backend(model_cfg: ModelConfig, train_cfg: TrainConfig, dpo: bool = False) -> Backend:
    """Choose the backend for this machine and, when it is Unsloth, import it before transformers/TRL/PEFT
    (and, for DPO, apply its DPO patch before TRL's DPOTrainer is imported)."""
    backend = select_backend(model_cfg, train_cfg.precision)
    if backend.name == "unsloth":
        from ..models.loading import import_unsloth, patch_unsloth_dpo

        import_unsloth()
        if dpo:
            patch_unsloth_dpo()
    return backend


def token_rows(tokenizer, tokens: list[str]) -> list[int]:
    """Vocabulary ids of `tokens`, each of which must be one whole token of this tokenizer."""
    ids = []
    for token in tokens:
        encoded = tokenizer.convert_tokens_to_ids(token)
        if encoded is None or encoded == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(encoded) != token:
            raise ValueError(f"lora.trainable_tokens: {token!r} is not a single token of this tokenizer")
        ids.append(encoded)
    return ids


def peft_lora_config(lora: LoraConfig, token_ids: list[int] | None = None):
    """The PEFT LoraConfig of a phase's adapter (causal LM, no bias terms).

    `token_ids` are embedding rows trained beside the LoRA (PEFT's trainable tokens): a base model such as
    Gemma 3 270M has never seen its chat tokens, ranks <end_of_turn> near the bottom of its vocabulary after
    an answer, and a LoRA on the projections alone cannot lift it in a few hundred updates. Only those rows
    train; the merge writes them into the (tied) embedding like the LoRA deltas.
    """
    from peft import LoraConfig as PeftLoraConfig

    extra = {"trainable_token_indices": list(token_ids)} if token_ids else {}  # PEFT finds the input embedding
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM", **extra)


def load_model(name_or_path: str, backend: Backend, train_cfg: TrainConfig, lora: LoraConfig,
               trust_remote_code: bool = False):
    """(model, peft_config): the base to train and the adapter for TRL to attach (None when Unsloth attached it)."""
    from ..models.loading import load_training_base

    model = load_training_base(name_or_path, backend, train_cfg.max_length, trust_remote_code,
                               gradient_checkpointing=train_cfg.gradient_checkpointing)
    token_ids = None
    if lora.trainable_tokens:
        from ..models.loading import load_tokenizer

        token_ids = token_rows(load_tokenizer(name_or_path, trust_remote_code), lora.trainable_tokens)
    if backend.name == "unsloth":
        from ..models.loading import add_unsloth_lora

        if token_ids:
            raise ValueError("lora.trainable_tokens is not supported with the Unsloth backend: set "
                             "model.backend to transformers, or remove the tokens")
        model = add_unsloth_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, train_cfg.seed,
                                 train_cfg.gradient_checkpointing)
        return model, None
    return model, peft_lora_config(lora, token_ids)


def optimizer_name(train_cfg: TrainConfig, backend: Backend, log=print) -> str:
    """The preset's optimizer, or plain AdamW where the 8-bit one cannot run (CPU, no bitsandbytes); says why."""
    if "8bit" not in train_cfg.optim:
        return train_cfg.optim
    import importlib.util

    if backend.device == "cpu":
        why = "bitsandbytes' 8-bit optimizer states need CUDA and this run is on the CPU"
    elif importlib.util.find_spec("bitsandbytes") is None:
        why = "bitsandbytes is not installed (pip install -e '.[gpu]')"
    else:
        return train_cfg.optim
    log(f"optimizer: adamw_torch instead of {train_cfg.optim}: {why} (same update rule, 32-bit optimizer states)")
    return "adamw_torch"


def rebalanced_rows(train_cfg: TrainConfig) -> bool:
    """Whether rows are dealt by distributed.once_per_epoch_sampler: always in several processes (accelerate's
    default would repeat rows to even out the last step), and in one when train.row_sampler asks for it."""
    return world_size() > 1 or train_cfg.row_sampler == "rebalanced"


def common_arguments(train_cfg: TrainConfig, backend: Backend, output_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments fields that SFTConfig and DPOConfig share, filled from a TrainConfig.

    Validation loss is measured before the first step and every eval_steps; with an eval set the best
    checkpoint (lowest eval_loss) is loaded at the end. The trainer's NaN/inf log filter is turned off:
    a bad loss must be seen, not averaged away. In N processes each one gets a share of the preset's
    effective batch (distributed.per_process_schedule), so an update sees the same number of rows.
    """
    cpu = backend.device == "cpu"
    batch_size, grad_accum = per_process_schedule(train_cfg.batch_size, train_cfg.grad_accum, world_size())
    sampler = {"train_sampling_strategy": "batch_rebalance"} if rebalanced_rows(train_cfg) else {}
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": train_cfg.epochs,
        "max_steps": train_cfg.max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        **sampler,
        # every LoRA weight gets a gradient in every step: DDP need not search the graph for unused ones (and the
        # search breaks under reentrant gradient checkpointing)
        "ddp_find_unused_parameters": False,
        "learning_rate": train_cfg.learning_rate,
        "warmup_steps": train_cfg.warmup_ratio,  # a float below 1 is read as a share of all updates
        "lr_scheduler_type": "linear",
        "optim": optimizer_name(train_cfg, backend),
        "use_cpu": cpu,
        "fp16": not cpu and backend.precision == "fp16",
        "bf16": not cpu and backend.precision == "bf16",  # TRL would default to bf16 otherwise, even on CPU
        "gradient_checkpointing": train_cfg.gradient_checkpointing,
        "logging_steps": train_cfg.logging_steps,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": train_cfg.eval_steps,
        "eval_on_start": has_eval,
        "save_strategy": "steps",
        "save_steps": train_cfg.save_steps,
        "save_total_limit": 2,  # the best and the latest survive
        "load_best_model_at_end": has_eval,
        "metric_for_best_model": "eval_loss" if has_eval else None,
        "greater_is_better": False,
        "restore_callback_states_from_checkpoint": True,  # early-stopping patience survives a resume
        "include_num_input_tokens_seen": "non_padding",
        "seed": train_cfg.seed,
        "data_seed": train_cfg.seed,
        "dataloader_num_workers": 0,
        "report_to": [],
    }


# --- guards and callbacks ---

def non_finite_advice(what: str, value: float, step: int, learning_rate: float, precision: str) -> str:
    """The message of a non-finite loss: where it happened and what to change."""
    tips = [f"lower the learning rate (now {learning_rate:g}; try a third of it)"]
    if precision == "fp16":
        tips.append("train in bf16 (precision: bf16) or fp32: fp16 overflows more easily")
    tips += ["raise warmup_ratio so the first updates are small",
             "check the data for empty or extremely long answers (notebook 00)"]
    return (f"{what} became {value} at optimizer step {step}; training stopped so no broken checkpoint is "
            f"saved. What to change: " + "; ".join(tips) + ". Then re-run this notebook (it resumes from the "
            "last good checkpoint only if the config is unchanged; a changed config starts fresh).")


def row_lengths(dataset) -> list[int]:
    """Tokens per training row: input_ids (SFT), or the prompt plus the longer answer of a preference pair (DPO)."""
    if "input_ids" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]]
    return [len(p) + max(len(c), len(r))
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


class TrainingGuards:
    """Mixed into a TRL trainer (before it in the bases): checks the raw loss of every micro-batch, adds
    peak memory to each log line, and deals rows with distributed.once_per_epoch_sampler when asked."""

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "batch_rebalance":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        return once_per_epoch_sampler(
            row_lengths(dataset), args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            args.world_size, args.gradient_accumulation_steps, args.process_index, args.data_seed or args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(non_finite_advice(
                "the training loss", float(loss.detach().float().cpu()), self.state.global_step + 1,
                self.args.learning_rate, "fp16" if self.args.fp16 else "bf16" if self.args.bf16 else "fp32"))
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        device = "cuda" if self.args.device.type == "cuda" else "cpu"
        logs["peak_memory_mb"] = round(peak_memory_mb(device), 1)
        super().log(logs, start_time)


def non_finite_eval_callback():
    """A callback that stops with advice when an evaluation loss is NaN or infinite."""
    from transformers import TrainerCallback

    class NonFiniteEvalLoss(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get("eval_loss")
            if value is not None and not math.isfinite(value):
                raise NonFiniteLossError(non_finite_advice(
                    "the validation loss", value, state.global_step, args.learning_rate,
                    "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"))

    return NonFiniteEvalLoss()


def standard_callbacks(train_cfg: TrainConfig, has_eval: bool) -> list:
    """Non-finite validation loss stop, plus early stopping after `early_stopping_patience` evaluations."""
    callbacks = [non_finite_eval_callback()]
    if has_eval and train_cfg.early_stopping_patience > 0:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping_patience))
    return callbacks


# --- checkpoints and resume ---

def resume_checkpoint(checkpoint_dir: Path, fingerprint: str | None, log=print) -> str | None:
    """The checkpoint to continue from, or None to start fresh.

    Checkpoints of a finished run, or of a run with another config (fingerprint), are removed: they would
    continue a different experiment.
    """
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    marker = checkpoint_dir / RUN_MARKER
    info = read_json(marker) if marker.exists() else {}
    reason = None
    if info.get("finished"):
        reason = "the previous run finished"
    elif fingerprint is not None and info.get("fingerprint") not in (None, fingerprint):
        reason = "they belong to a different configuration"
    if reason:
        log(f"removing old checkpoints in {checkpoint_dir}: {reason}; training starts fresh")
        shutil.rmtree(checkpoint_dir)
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def train_with_resume(trainer, fingerprint: str | None = None, log=print) -> dict:
    """Train, continuing from the last checkpoint of an interrupted run with the same config.

    Returns what happened: resumed_from, global_step, max_steps, stopped_early, best_checkpoint, seconds.
    """
    checkpoint_dir = Path(trainer.args.output_dir)
    # In N processes the main one decides (and removes stale checkpoints) first; the others then find the same
    # folder and marker, so every process resumes from the same step.
    with main_process_first():
        resume = resume_checkpoint(checkpoint_dir, fingerprint, log)
        if is_main_process():
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_json(checkpoint_dir / RUN_MARKER, {"fingerprint": fingerprint, "finished": False})
    if resume:
        log(f"resuming from {resume}")
        trainer.args.eval_on_start = False  # the step-0 evaluation is already in the restored log history
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    if is_main_process():
        write_json(checkpoint_dir / RUN_MARKER, {"fingerprint": fingerprint, "finished": True,
                                                 "global_step": state.global_step})
    return {
        "fingerprint": fingerprint,
        "resumed_from": resume,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "stopped_early": state.global_step < state.max_steps,
        "best_checkpoint": state.best_model_checkpoint,
        "best_metric": state.best_metric,
        "tokens": state.num_input_tokens_seen,
        "seconds": round(time.perf_counter() - started, 2),
    }


# --- log history ---

def write_log_history(trainer, path: Path) -> list[dict]:
    """Save trainer.state.log_history as JSON (what the curves are drawn from) and return it."""
    history = list(trainer.state.log_history)
    write_json(path, history)
    return history


TRAIN_RESULT = "train_result.json"  # what a phase's training wrote, for a notebook that trained in other processes


def write_training_result(trainer, phase_dir: Path, result: dict) -> None:
    """log_history.json and train_result.json of a finished training (main process)."""
    write_log_history(trainer, Path(phase_dir) / "log_history.json")
    write_json(Path(phase_dir) / TRAIN_RESULT, result)


def train_and_save(trainer, backend: Backend, ctx, base_path: str, tokenizer, trust_remote_code: bool = False,
                   **extra) -> dict:
    """The end of a phase's train_phase, in every process: train with resume, save the adapter and the merged model,
    and (main process) write log_history.json and train_result.json. Returns the result, `extra` included."""
    result = train_with_resume(trainer, fingerprint=ctx.fingerprint)
    adapter_dir = save_adapter(trainer, ctx.out / "adapter")
    save_merged(trainer, backend, adapter_dir, base_path, ctx.out / "merged", tokenizer, trust_remote_code)
    result.update(extra, backend=backend.name, backend_reason=backend.reason, precision=backend.precision,
                  load_in_4bit=backend.load_in_4bit, device=backend.device, processes=world_size(),
                  peak_memory_mb_per_process=gather_values(round(peak_memory_mb(backend.device), 1)))
    if is_main_process():
        write_training_result(trainer, ctx.out, result)
    return result


def read_training_result(phase_dir: Path, fingerprint: str) -> tuple[dict, list[dict]]:
    """(result, log history) written by a phase's train_phase; refuses a result made with another configuration."""
    result = read_json(Path(phase_dir) / TRAIN_RESULT)
    if result.get("fingerprint") != fingerprint:
        raise RuntimeError(f"{Path(phase_dir) / TRAIN_RESULT} belongs to another configuration of this phase "
                           "(its fingerprint differs): train again")
    return result, read_json(Path(phase_dir) / "log_history.json")


def train_in_processes(train_phase, preset: str, run_name: str, overrides: dict | None, ctx,
                       num_processes: int) -> tuple[dict, list[dict], Backend]:
    """From a notebook: run a phase's train_phase in `num_processes` processes (one per GPU), then read back what
    they wrote. Returns (result, log history, the backend the processes used)."""
    from ..distributed import launch_in_notebook

    artifacts = ctx.paths.root.parent.parent  # artifacts/runs/<run> -> artifacts
    launch_in_notebook(train_phase, (preset, run_name, overrides, artifacts), num_processes)
    result, history = read_training_result(ctx.out, ctx.fingerprint)
    backend = Backend(result["backend"], result["device"], result["load_in_4bit"], result["precision"],
                      result["backend_reason"])
    return result, history, backend


def series(log_history: list[dict], key: str) -> list[float]:
    """The values of one logged key, in step order."""
    return [float(row[key]) for row in log_history if key in row]


def run_metrics(backend: Backend, result: dict, processes: int, train_peak_mb: float, spot_records: list[dict]) -> dict:
    """The keys the SFT and DPO contracts share: backend, time, processes, peak memory, spot-check prompts.

    train_peak_mb: peak memory while training (this kernel's, or the largest of the training processes'); the
    phase's peak is the larger of it and this process's peak now (after merging and the spot check).
    """
    return {
        "backend": backend.name,
        "backend_reason": backend.reason,
        "train_seconds": result["seconds"],
        "processes": processes,
        "peak_memory_mb": round(max(train_peak_mb, peak_memory_mb(backend.device)), 1),
        "spot_check_ids": [r["id"] for r in spot_records],
    }


def first_last(log_history: list[dict], key: str) -> tuple[float | None, float | None]:
    """(first, last) value of a logged key, or (None, None) when it was never logged."""
    values = series(log_history, key)
    return (values[0], values[-1]) if values else (None, None)


# --- saving ---

def save_adapter(trainer, folder: Path, tokenizer=None) -> Path:
    """Save the trained adapter (the best one when early stopping loaded it), atomically.

    In N processes every process calls this (a DeepSpeed or FSDP model is gathered from all of them through the
    trainer's save_model); the main process writes and renames, the others wait until the folder is there.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    if world_size() > 1:
        wait_for_everyone()
        trainer.save_model(str(tmp))
    else:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
    if is_main_process():
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    wait_for_everyone()
    return folder


def merged_dtype_name(base_name_or_path: str, trust_remote_code: bool = False) -> str:
    """The base model's own 16-bit type: bf16 when it was published in bf16 (Qwen3), else fp16."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(base_name_or_path), trust_remote_code=trust_remote_code)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return "bf16" if "bfloat16" in str(dtype) else "fp16"


def merge_and_save(adapter_dir: Path, base_name_or_path: str, out_dir: Path, tokenizer,
                   trust_remote_code: bool = False, dtype: str | None = None) -> Path:
    """Fold a LoRA adapter into an UNQUANTIZED copy of its base and save it in 16-bit with the tokenizer.

    The merge happens in fp32 on the CPU: merging into a 4-bit base would round the sum back to 4 bits and
    degrade the model, and fp32 keeps the addition exact before the single cast to 16 bits.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..models.loading import torch_dtype

    base_path = resolve_model_path(base_name_or_path)
    dtype = dtype or merged_dtype_name(base_path, trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True,
                                                trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(torch_dtype(dtype))

    def write(tmp: Path) -> None:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    return _publish_merged(write, base_path, out_dir)


def _publish_merged(write, base_path: str, out_dir: Path) -> Path:
    """Have `write(tmp)` fill a temporary folder, add the base's converter vocabulary, then rename it to out_dir."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    # A fast tokenizer does not write the SentencePiece files it was not loaded from; llama.cpp's converter
    # needs them for SentencePiece families (Gemma), so the base folder's copies travel with every merge.
    from ..llamacpp.convert import CONVERTER_VOCAB_DIR

    if (Path(base_path) / CONVERTER_VOCAB_DIR).is_dir():
        shutil.copytree(Path(base_path) / CONVERTER_VOCAB_DIR, tmp / CONVERTER_VOCAB_DIR, dirs_exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # the finished folder appears at once
    return out_dir


def save_merged(trainer, backend: Backend, adapter_dir: Path, base_name_or_path: str, out_dir: Path, tokenizer,
                trust_remote_code: bool = False) -> Path:
    """The phase's merged 16-bit model in out_dir, written by the main process (the others wait for it).

    Unsloth merges with its own merged_16bit save, which adds the adapter to the base's original 16-bit weights
    (not to the 4-bit copy it trained on). Every other backend merges the saved adapter with merge_and_save.
    """
    if is_main_process():
        if backend.name == "unsloth":
            base_path = resolve_model_path(base_name_or_path)
            _publish_merged(lambda tmp: trainer.model.save_pretrained_merged(str(tmp), tokenizer,
                                                                             save_method="merged_16bit"),
                            base_path, out_dir)
        else:
            merge_and_save(adapter_dir, base_name_or_path, out_dir, tokenizer, trust_remote_code)
    wait_for_everyone()
    return Path(out_dir)


# --- side-by-side spot check (the same prompts in 01 and 03) ---

def spot_check_records(val_records: list[dict], n: int) -> list[dict]:
    """n fixed validation records, one per question, spread over the file (same choice in every notebook)."""
    distinct = one_per_question(sorted(val_records, key=lambda r: r["id"]))
    if len(distinct) <= n:
        return distinct
    stride = len(distinct) / n
    return [distinct[int(i * stride)] for i in range(n)]


def spot_check_table(models: dict, tokenizer, records: list[dict], sampling: SamplingConfig):
    """A DataFrame: each record's question, the reference answer, and every model's seeded answer."""
    import pandas as pd

    from ..models.loading import generate

    table = pd.DataFrame({"id": [r["id"] for r in records],
                          "question": [r["prompt"][-1]["content"] for r in records],
                          "reference": [r["completion"][0]["content"] for r in records]})
    for name, model in models.items():
        answers = generate(model, tokenizer, [r["prompt"] for r in records], sampling, progress=False, desc=name)
        table[name] = [a["text"] for a in answers]
        table[f"{name}_stopped"] = [a["ended_on_eos"] for a in answers]
    return table


def describe_side_by_side(table, names: list[str]) -> str:
    """What the side-by-side table shows, in words computed from it (so the text cannot claim what the run
    did not do): per model, how many answers stopped by themselves, their mean length, and how many
    repeat the question's opening words (a base model's habit of continuing the text instead of answering)."""
    lines = []
    for name in names:
        answers = table[name].tolist()
        stopped = int(table[f"{name}_stopped"].sum())
        words = sum(len(a.split()) for a in answers) / max(1, len(answers))
        echoes = sum(1 for q, a in zip(table["question"], answers)
                     if len(q.split()) >= 4 and " ".join(q.split()[:4]).lower() in a.lower())
        lines.append(f"{name}: {stopped}/{len(answers)} answers stopped by themselves, {words:.0f} words on average, "
                     f"{echoes} repeat the question's first words")
    return "\n".join(lines)


def inference_precision(backend: Backend) -> str:
    """Precision for generation: the training precision on the GPU, fp32 on the CPU."""
    return backend.precision if backend.device == "cuda" else "fp32"
