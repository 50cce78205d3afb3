"""Phase 01: LoRA supervised fine-tuning with TRL's SFTTrainer on the conversations of phase 00.

The data is tokenized here, not by TRL: `chat.tokenize_prompt_completion` gives input_ids and a
completion_mask that covers exactly the answer and its end-of-turn token (TRL's own conversational
rendering would also train the newline the template writes after it). SFTTrainer sees an `input_ids`
column, skips its own tokenization, and with completion_only_loss=True turns the mask into labels
(-100 on the prompt), so the loss is computed on the answer only.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..chat import tokenize_prompt_completion
from ..config import SFTConfig as PhaseConfig
from ..models.loading import Backend
from .training import TrainingGuards, common_arguments, first_last, rebalanced_rows, run_metrics

IGNORE_INDEX = -100  # label value the loss skips


def tokenized_dataset(records: list[dict], tokenizer, max_length: int):
    """A datasets.Dataset of input_ids + completion_mask (answer + end-of-turn token) for each record."""
    from datasets import Dataset

    rows = []
    for number, record in enumerate(records):
        try:
            answer = record["completion"][0]["content"]
            prompt = record["prompt"]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"record {number} ({record.get('id', '?')}): field prompt/completion is malformed "
                             f"({err!r}); re-run notebook 00") from None
        rows.append(tokenize_prompt_completion(tokenizer, prompt, answer, max_length))
    return Dataset.from_list(rows)


def training_arguments(cfg: PhaseConfig, backend: Backend, output_dir: Path, has_eval: bool):
    """TRL SFTConfig for this phase: the shared fields plus completion-only loss on pre-tokenized rows."""
    from trl import SFTConfig

    return SFTConfig(**common_arguments(cfg.train, backend, output_dir, has_eval),
                     completion_only_loss=True, packing=False, **batching_arguments(cfg, rebalanced_rows(cfg.train)))


def batching_arguments(cfg: PhaseConfig, rebalanced: bool = False) -> dict:
    """SFTConfig fields for the configured batching (see config.SFTConfig.batching and bench/README.md).

    Padding-free joins a batch's rows into one sequence whose position ids restart at 0 for each row;
    transformers turns those positions into a block-diagonal causal mask, so no row attends to another.
    TRL refuses a max_length there (it cannot truncate a joined row), which is fine: tokenized_dataset
    has already cut every row to cfg.train.max_length.
    """
    if cfg.batching == "padding_free":
        return {"padding_free": True, "max_length": None}
    if cfg.batching == "length_grouped" and not rebalanced:  # the rebalancing sampler groups by length itself
        return {"max_length": cfg.train.max_length, "train_sampling_strategy": "group_by_length"}
    return {"max_length": cfg.train.max_length}


def trains_token_rows(model) -> bool:
    """Whether the adapter trains embedding rows (lora.trainable_tokens) besides the LoRA matrices."""
    return any("trainable_tokens_delta" in name for name, _ in model.named_parameters())


def trainer_class():
    """SFTTrainer with the project's guards (raw-loss check, memory in the logs)."""
    from transformers import Trainer
    from trl import SFTTrainer

    from .trl_compat import install_lm_head_fallback

    install_lm_head_fallback()  # TRL 1.15's fused LM head needs Triton and CUDA; torch does it elsewhere

    class GuardedSFTTrainer(TrainingGuards, SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not trains_token_rows(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's fused LM head reads the output layer's weight directly, and with trained token rows on a tied
            # head that layer is PEFT's wrapper (base weight + row deltas): use the model's own loss instead. It is
            # the same masked cross-entropy, over full logits; TRL's token-accuracy and entropy logs are skipped.
            model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")
                            if k in inputs}
            return Trainer.compute_loss(self, model, model_inputs, return_outputs, num_items_in_batch)

    return GuardedSFTTrainer


def build_trainer(model, tokenizer, train_dataset, args, eval_dataset=None, peft_config=None, callbacks=None):
    """The SFT trainer: TRL's SFTTrainer (guarded) on pre-tokenized rows, LoRA attached from peft_config."""
    if "input_ids" not in train_dataset.column_names:
        raise ValueError("train_dataset must be pre-tokenized (input_ids, completion_mask): use sft.tokenized_dataset")
    if not args.completion_only_loss:
        raise ValueError("completion_only_loss must be True: the prompt is not something the model should learn")
    return trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)


def collated_examples(trainer, n: int = 2, split: str = "train") -> dict:
    """A batch built by the trainer's own collator from the first n prepared rows (labels included)."""
    dataset = trainer.train_dataset if split == "train" else trainer.eval_dataset
    return trainer.data_collator([dataset[i] for i in range(min(n, len(dataset)))])


def trained_spans(batch: dict, tokenizer) -> list[dict]:
    """For each row of a collated batch: the decoded prompt part, the decoded trained part, token counts."""
    out = []
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
        first = next((k for k, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        out.append({
            "context": tokenizer.decode(ids[:first], skip_special_tokens=False),
            "trained": tokenizer.decode(trained, skip_special_tokens=False),
            "trained_tokens": len(trained),
            "tokens": sum(1 for i in ids if i != tokenizer.pad_token_id),
        })
    return out


def padding_shares(trainer, seed: int = 0) -> dict:
    """Share of pad slots over one epoch: the trainer's own batches vs the same rows in random order.

    Every pad slot is computed by the model and then thrown away, so this share is wasted work.
    """
    pad = trainer.processing_class.pad_token_id
    batches = list(trainer.get_train_dataloader())
    real = sum(int((b["input_ids"] != pad).sum()) for b in batches)
    configured = 1 - real / sum(b["input_ids"].numel() for b in batches)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    order = random.Random(seed).sample(range(len(lengths)), len(lengths))
    return {"configured": configured,
            "random_order": padded_share(lengths, order, trainer.args.per_device_train_batch_size)}


def padded_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Share of padding when `order` is cut into batches and each batch is padded to its longest row."""
    real = slots = 0
    for start in range(0, len(order), batch_size):
        chunk = [lengths[i] for i in order[start:start + batch_size]]
        real += sum(chunk)
        slots += len(chunk) * max(chunk)
    return 1 - real / slots


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def history_metrics(log_history: list[dict], result: dict) -> dict:
    """The training run's numbers: first/last training and validation loss, best validation loss, steps."""
    train_first, train_last = first_last(log_history, "loss")
    eval_first, eval_last = first_last(log_history, "eval_loss")
    evals = [row["eval_loss"] for row in log_history if "eval_loss" in row]
    return {
        "train_loss_first": train_first,
        "train_loss_last": train_last,
        "eval_loss_first": eval_first,  # measured before the first update (eval_on_start)
        "eval_loss_last": eval_last,
        "eval_loss_best": min(evals) if evals else None,
        "steps": result["global_step"],
        "max_steps": result["max_steps"],
        "stopped_early": result["stopped_early"],
        "resumed_from": result["resumed_from"],
        "tokens": result["tokens"],
    }


def metrics(*, history: list[dict], result: dict, backend: Backend, trainable: int, train_peak_mb: float,
            processes: int, spot_records: list[dict], end_of_turn_probability: dict | None) -> dict:
    """Phase 01's metrics.json contract, from what the notebook's library calls returned.

    end_of_turn_probability: model name -> the median from ``end_of_turn_probability`` (None without a spot check).
    """
    return {
        **history_metrics(history, result),
        **run_metrics(backend, result, processes, train_peak_mb, spot_records),
        "precision": backend.precision,
        "load_in_4bit": backend.load_in_4bit,
        "trainable_parameters": trainable,
        "end_of_turn_probability": end_of_turn_probability,
    }


def end_of_turn_probability(model, tokenizer, records: list[dict]) -> float:
    """Median probability the model gives its end-of-turn token right after each record's reference answer.

    Teacher-forced, so it measures whether the model has learnt *where* a turn ends without the noise of
    sampling: a model that never predicts its stop rambles into the token limit whatever it writes before.
    """
    import statistics

    import torch

    from ..chat import encode_prompt_answer
    from ..family import end_of_turn_id

    end = end_of_turn_id(tokenizer)
    device = next(model.parameters()).device
    probabilities = []
    with torch.no_grad():
        for record in records:
            prompt_ids, answer_ids = encode_prompt_answer(tokenizer, record["prompt"],
                                                          record["completion"][0]["content"])
            ids = torch.tensor([prompt_ids + answer_ids[:-1]], device=device)  # up to the answer's last word
            logits = model(input_ids=ids).logits[0, -1].float()
            probabilities.append(logits.softmax(-1)[end].item())
    return statistics.median(probabilities)


def train_phase(preset: str = "tiny", run_name: str = "demo", overrides: dict | None = None,
                artifacts: Path | None = None) -> dict:
    """Notebook 01's training as one call, in this process or in each of N (the `sft` command, notebook_launcher).

    Tokenizes the data phase's rows, picks the backend, trains with resume, and saves the adapter, the merged
    model, log_history.json and train_result.json (what the notebook reads back after a multi-process run).
    Returns that result.
    """
    from ..distributed import main_process_first
    from ..io import read_jsonl
    from ..models.loading import load_tokenizer, resolve_model_path
    from ..pipeline.runtime import process_context
    from .training import load_model, prepare_backend, standard_callbacks, train_and_save

    ctx = process_context("sft", preset, run_name, overrides, artifacts)
    cfg, trust = ctx.cfg.sft, ctx.cfg.model.trust_remote_code
    data_dir = ctx.input_dir("data")
    backend = prepare_backend(ctx.cfg.model, cfg.train)  # before anything imports transformers (Unsloth)
    with main_process_first():  # 'tiny' and 'random:' models are built on first use: once, by the main process
        base_path = resolve_model_path(ctx.cfg.model.name_or_path)
    tokenizer = load_tokenizer(base_path, trust)
    train_ds = tokenized_dataset(read_jsonl(data_dir / "train.jsonl"), tokenizer, cfg.train.max_length)
    val_ds = tokenized_dataset(read_jsonl(data_dir / "val.jsonl"), tokenizer, cfg.train.max_length)
    model, peft_config = load_model(base_path, backend, cfg.train, cfg.lora, trust)
    trainer = build_trainer(model, tokenizer, train_ds, training_arguments(cfg, backend, ctx.out / "checkpoints", True),
                            eval_dataset=val_ds, peft_config=peft_config,
                            callbacks=standard_callbacks(cfg.train, has_eval=True))
    trainable, _ = trainable_parameters(trainer.model)
    return train_and_save(trainer, backend, ctx, base_path, tokenizer, trust, trainable_parameters=trainable)
