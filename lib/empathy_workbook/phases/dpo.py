"""Phase 03: Direct Preference Optimization with TRL's DPOTrainer on the merged SFT model.

A fresh LoRA goes on sft/merged and no reference model is passed: TRL then scores the reference by
running the same network with the adapter switched off, which is exactly the SFT model. Backend
choice, checkpoints/resume, the non-finite-loss stop and merge-and-save come from `training`.

Pairs are handed to TRL already tokenized: the prompt exactly as at inference (chat.encode_messages,
non-thinking) and each answer followed by the family's end-of-turn token, with message text kept as text.
DPO then scores the same tokens SFT trained: the answer and its end-of-turn token, not the newline the
chat template writes after it. By default sft/merged is loaded in 16-bit (model_config), so the reference
is exactly the SFT model.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from ..chat import encode_prompt_answer, render_training_text
from ..config import DPOConfig as PhaseConfig
from ..config import ModelConfig
from ..io import read_jsonl
from ..models.loading import Backend
from .training import TrainingGuards, common_arguments, first_last, run_metrics, series

REQUIRED = ("prompt", "chosen", "rejected")


def read_pairs(path: Path) -> list[dict]:
    """Preference pairs from a JSONL file (TRL conversational format), checked row by row."""
    path = Path(path)
    pairs = read_jsonl(path)
    for number, row in enumerate(pairs, start=1):
        for field in REQUIRED:
            value = row.get(field)
            if not isinstance(value, list) or not value or not all(isinstance(m, dict) and "content" in m
                                                                   for m in value):
                raise ValueError(f"{path}: row {number}, field {field!r}: expected a non-empty list of "
                                 f"messages with 'role' and 'content', got {type(value).__name__}")
        for field in ("chosen", "rejected"):
            if not isinstance(row[field][-1]["content"], str) or not row[field][-1]["content"].strip():
                raise ValueError(f"{path}: row {number}, field {field!r}: the answer is empty")
    return pairs


def prompt_key(pair: dict) -> str:
    """What groups pairs of the same question (so a question never lands on both sides of a split)."""
    return pair.get("question_key") or pair["prompt"][-1]["content"]


def split_heldout(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) by question, seeded: the fallback when no pairs from validation prompts exist."""
    keys = sorted({prompt_key(p) for p in pairs})
    random.Random(seed).shuffle(keys)
    n_heldout = max(1, round(len(keys) * fraction)) if len(keys) > 1 else 0
    heldout_keys = set(keys[:n_heldout])
    return ([p for p in pairs if prompt_key(p) not in heldout_keys],
            [p for p in pairs if prompt_key(p) in heldout_keys])


def load_pairs(preferences_dir: Path, heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict], str]:
    """(train_pairs, eval_pairs, where the eval pairs came from).

    Held-out pairs come from pairs_heldout.jsonl (pairs built on validation prompts). When that file is
    missing or empty, a seeded slice of pairs.jsonl (whole questions) is held out instead, and the third
    value says so.
    """
    preferences_dir = Path(preferences_dir)
    train = read_pairs(preferences_dir / "pairs.jsonl")
    if not train:
        raise ValueError(f"{preferences_dir / 'pairs.jsonl'} has no pairs: notebook 02 kept none (lower "
                         "preferences.gap or sample more prompts)")
    heldout_path = preferences_dir / "pairs_heldout.jsonl"
    heldout = read_pairs(heldout_path) if heldout_path.exists() else []
    if heldout:
        return train, heldout, f"{heldout_path.name} ({len(heldout)} pairs from validation prompts)"
    train, heldout = split_heldout(train, heldout_fraction, seed)
    return train, heldout, (f"no {heldout_path.name} pairs: {len(heldout)} pairs of pairs.jsonl held out "
                            f"(seed {seed}, {heldout_fraction:.0%} of the questions)")


def model_config(model_cfg: ModelConfig, cfg: PhaseConfig) -> ModelConfig:
    """The model settings DPO loads sft/merged with: 16-bit unless dpo.load_in_4bit asks for 4-bit.

    The reference is the policy with its adapter off. Loaded in 16-bit, that is exactly the SFT model; loaded
    in 4-bit (model.load_in_4bit, meant for SFT's QLoRA), the reference would be a rounded copy of it, and
    the rewards would measure part rounding, part preference.
    """
    return dataclasses.replace(model_cfg, load_in_4bit=cfg.load_in_4bit)


def preference_dataset(pairs: list[dict], tokenizer):
    """A datasets.Dataset of prompt / chosen / rejected as text (the inference prompt, answers ending in the
    family's end-of-turn token) and as token ids (chat.encode_prompt_answer: message text stays text)."""
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": [], "prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for pair in pairs:
        prompt, chosen = render_training_text(tokenizer, pair["prompt"], pair["chosen"][-1]["content"])
        _, rejected = render_training_text(tokenizer, pair["prompt"], pair["rejected"][-1]["content"])
        prompt_ids, chosen_ids = encode_prompt_answer(tokenizer, pair["prompt"], pair["chosen"][-1]["content"])
        _, rejected_ids = encode_prompt_answer(tokenizer, pair["prompt"], pair["rejected"][-1]["content"])
        for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected), ("prompt_ids", prompt_ids),
                           ("chosen_ids", chosen_ids), ("rejected_ids", rejected_ids)):
            rows[key].append(value)
    return Dataset.from_dict(rows)


def training_arguments(cfg: PhaseConfig, backend: Backend, output_dir: Path, has_eval: bool):
    """TRL DPOConfig: the shared fields plus beta, the loss type and the length cap."""
    from trl import DPOConfig

    return DPOConfig(**common_arguments(cfg.train, backend, output_dir, has_eval),
                     beta=cfg.beta, loss_type=list(cfg.loss_type),
                     loss_weights=list(cfg.loss_weights) or None, max_length=cfg.train.max_length)


def trainer_class():
    """DPOTrainer with the project's guards (raw-loss check, memory in the logs)."""
    from trl import DPOTrainer

    from .trl_compat import install_lm_head_fallback

    install_lm_head_fallback()  # TRL 1.15's fused LM head needs Triton and CUDA; torch does it elsewhere

    class GuardedDPOTrainer(TrainingGuards, DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # TRL would tokenize the text columns again, turning an "<|im_end|>" inside an answer into the
            # control token; our rows already carry safe ids, so only TRL's length filter is applied.
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if args.max_length is not None and args.truncation_mode == "keep_start":
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
            return dataset

    return GuardedDPOTrainer


def build_trainer(model, tokenizer, train_dataset, args, eval_dataset=None, peft_config=None, callbacks=None):
    """The DPO trainer. No ref_model: with a LoRA, the reference is the same network with the adapter off."""
    return trainer_class()(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                           eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                           callbacks=callbacks)


def history_metrics(log_history: list[dict], result: dict) -> dict:
    """The training run's numbers (training values from the per-step logs, held-out from the last evaluation)."""
    loss_first, loss_last = first_last(log_history, "loss")
    margin_first, margin_last = first_last(log_history, "rewards/margins")
    _, accuracy_last = first_last(log_history, "rewards/accuracies")
    eval_first, eval_last = first_last(log_history, "eval_loss")
    _, eval_accuracy = first_last(log_history, "eval_rewards/accuracies")
    eval_margin_first, eval_margin_last = first_last(log_history, "eval_rewards/margins")
    return {
        "loss_first": loss_first,
        "loss_last": loss_last,
        "reward_margin_first": margin_first,
        "reward_margin_last": margin_last,
        "reward_accuracy_last": accuracy_last,
        "eval_loss_first": eval_first,
        "eval_loss_last": eval_last,
        "eval_reward_accuracy": eval_accuracy,
        "eval_reward_margin_first": eval_margin_first,
        "eval_reward_margin_last": eval_margin_last,
        "steps": result["global_step"],
        "max_steps": result["max_steps"],
        "stopped_early": result["stopped_early"],
        "resumed_from": result["resumed_from"],
        "tokens": result.get("tokens"),  # non-padding input tokens trained on (both answers of every pair)
    }


# Remedies in the team's words, after the design document's advice.
EASY_PAIRS = ("training reward accuracy reached 1.0 after {step} of {total} steps and stayed there: the pairs are "
              "too easy to tell apart, so the model learns little about empathy. Make rejected answers more "
              "realistic: sample them from the SFT model at T≈1.5 rather than relying on obvious degradations "
              "(lower preferences.truncate_rate / drop_first_sentence_rate), and check that the judge gap does not "
              "keep only the most obvious pairs.")
RUNAWAY_MARGINS = ("reward margins are still climbing at the end (last {last:.2f}, growth not slowing): the policy keeps "
                   "moving away from the SFT reference. Raise beta (now {beta:g}; 0.1-0.2 is the usual range, "
                   "0.3-0.5 is conservative), keep DPO to 1 epoch (2 at most), and compare SFT and DPO answers for "
                   "lost coherence.")


def metrics(ctx, *, history: list[dict], result: dict, backend: Backend, train_pairs: list, eval_pairs: list,
            heldout_source: str, train_peak_mb: float, processes: int, spot_records: list[dict], warnings: list[str],
            sources: dict | None) -> dict:
    """Phase 03's metrics.json contract, from what the notebook's library calls returned.

    warnings and sources: what ``training_warnings`` and ``margin_sources`` returned for the notebook to show, so
    metrics.json records the very values the learner read.
    """
    cfg = ctx.cfg.dpo
    return {
        **history_metrics(history, result),
        **run_metrics(backend, result, processes, train_peak_mb, spot_records),
        "beta": cfg.beta,
        "loss_type": cfg.loss_type,
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "heldout_source": heldout_source,
        "warnings": warnings,
        "margin_sources": sources,
    }


def margin_sources(log_history: list[dict]) -> dict | None:
    """Where the held-out reward margin came from, measured (None without held-out evaluations).

    At the first evaluation policy and reference are the same network, so its log-probabilities (summed over each
    answer) are the SFT model's: how likely it finds the chosen and the rejected answers before DPO moves it. When
    the rejected ones are far less likely than the chosen (word salad, which the model does not write at its usual
    temperature), DPO can earn its margin by pushing down text the model would never sample, and its answers
    change little. The last evaluation's rewards say how much of the margin came from each side.
    """
    evals = [r for r in log_history if "eval_logps/chosen" in r and "eval_rewards/chosen" in r]
    if not evals:
        return None
    first, last = evals[0], evals[-1]
    chosen, rejected = last["eval_rewards/chosen"], last["eval_rewards/rejected"]
    margin = chosen - rejected
    return {"reference_logp_chosen": round(first["eval_logps/chosen"], 2),
            "reference_logp_rejected": round(first["eval_logps/rejected"], 2),
            "chosen_reward_last": round(chosen, 4), "rejected_reward_last": round(rejected, 4),
            "share_of_margin_from_rejected": round(-rejected / margin, 3) if margin > 0 else None}


def describe_margin_sources(sources: dict | None) -> str:
    """One paragraph for notebook 03: the measured reason DPO's answers may hardly differ from SFT's."""
    if not sources:
        return "no held-out pairs were evaluated, so where the margin came from is not measured"
    text = (f"Before DPO, the SFT model gave the held-out chosen answers a log-probability of "
            f"{sources['reference_logp_chosen']:.0f} and the rejected ones {sources['reference_logp_rejected']:.0f} "
            f"(summed over each answer). After DPO the chosen answers' reward is {sources['chosen_reward_last']:+.3f} "
            f"and the rejected answers' {sources['rejected_reward_last']:+.3f}")
    share = sources["share_of_margin_from_rejected"]
    if share is None:
        return text + ": no positive margin."
    return text + (f": {share:.0%} of the margin came from pushing the rejected answers down"
                   + (", text the model was already unlikely to write, so its own answers change little." if share >= 0.8
                      else "."))


def training_warnings(log_history: list[dict], beta: float, early_share: float = 0.3,
                      margin_limit: float = 5.0) -> list[str]:
    """Warnings about the curves: accuracy saturating at 1.0 early, margins growing without bound."""
    warnings = []
    rows = [r for r in log_history if "rewards/accuracies" in r]
    if rows:
        total = max(r["step"] for r in rows)
        accuracies = [r["rewards/accuracies"] for r in rows]
        for i, row in enumerate(rows):
            if all(a >= 0.999 for a in accuracies[i:]) and len(accuracies[i:]) >= 3:
                if row["step"] <= early_share * total:
                    warnings.append(EASY_PAIRS.format(step=row["step"], total=total))
                break
    margins = series(log_history, "rewards/margins")
    if len(margins) >= 6:
        third = len(margins) // 3
        early_growth = margins[2 * third - 1] - margins[third - 1]
        late_growth = margins[-1] - margins[2 * third - 1]
        if margins[-1] > margin_limit and late_growth >= early_growth > 0:
            warnings.append(RUNAWAY_MARGINS.format(last=margins[-1], beta=beta))
    return warnings


def prepare_backend(model_cfg: ModelConfig, cfg: PhaseConfig) -> Backend:
    """The DPO backend: the SFT model in 16-bit unless dpo.load_in_4bit (model_config), Unsloth's DPO patch when
    Unsloth trains."""
    from .training import prepare_backend as prepare

    return prepare(model_config(model_cfg, cfg), cfg.train, dpo=True)


def train_phase(preset: str = "tiny", run_name: str = "demo", overrides: dict | None = None,
                artifacts: Path | None = None) -> dict:
    """Notebook 03's training as one call, in this process or in each of N (the `dpo` command, notebook_launcher).

    Builds the pair datasets, trains a fresh LoRA on sft/merged with resume, saves the adapter, the merged model,
    log_history.json and train_result.json. Returns that result.
    """
    from ..models.loading import load_tokenizer
    from ..pipeline.runtime import process_context
    from .training import load_model, standard_callbacks, train_and_save

    ctx = process_context("dpo", preset, run_name, overrides, artifacts)
    cfg, trust = ctx.cfg.dpo, ctx.cfg.model.trust_remote_code
    backend = prepare_backend(ctx.cfg.model, cfg)  # before anything imports transformers (Unsloth)
    sft_merged = ctx.input_dir("sft") / "merged"
    train_pairs, eval_pairs, heldout_source = load_pairs(ctx.input_dir("preferences"), cfg.heldout_fraction,
                                                         cfg.train.seed)
    tokenizer = load_tokenizer(sft_merged, trust)
    train_ds = preference_dataset(train_pairs, tokenizer)
    eval_ds = preference_dataset(eval_pairs, tokenizer) if eval_pairs else None
    model, peft_config = load_model(sft_merged, backend, cfg.train, cfg.lora, trust)
    trainer = build_trainer(model, tokenizer, train_ds,
                            training_arguments(cfg, backend, ctx.out / "checkpoints", eval_ds is not None),
                            eval_dataset=eval_ds, peft_config=peft_config,
                            callbacks=standard_callbacks(cfg.train, eval_ds is not None))
    return train_and_save(trainer, backend, ctx, sft_merged, tokenizer, trust, train_pairs=len(train_pairs),
                          eval_pairs=len(eval_pairs), heldout_source=heldout_source)
