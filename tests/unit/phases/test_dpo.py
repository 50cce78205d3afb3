"""dpo.py: the reference is the model DPO starts from, a few steps raise the margin, resume, pair files, warnings."""

import json
from types import SimpleNamespace

import pytest
import torch

from empathy_workbook.config import load_config
from empathy_workbook.models.loading import Backend
from empathy_workbook.phases import dpo, training


def degraded(answer: str) -> str:
    """A worse answer: its first third, the rest (usually the warm, practical part) cut off."""
    words = answer.split()
    return " ".join(words[: max(3, len(words) // 3)])


def pairs_from(records):
    """Preference pairs in the format notebook 02 writes: chosen = the real answer, rejected = a degraded one."""
    return [{"prompt": r["prompt"], "chosen": r["completion"],
             "rejected": [{"role": "assistant", "content": degraded(r["completion"][0]["content"])}],
             "question_key": r["question_key"]} for r in records]


def build(tiny_path, tokenizer, train_pairs, out_dir, eval_pairs=None, **train):
    values = {"batch_size": 4, "grad_accum": 1, "max_steps": 6, "eval_steps": 3, "save_steps": 3,
              "gradient_checkpointing": False, "warmup_ratio": 0.0, "learning_rate": 2e-3, **train}
    cfg = load_config("tiny", {"dpo": {"train": values}})
    backend = training.prepare_backend(cfg.model, cfg.dpo.train)
    model, peft_config = training.load_model(tiny_path, backend, cfg.dpo.train, cfg.dpo.lora)
    train_ds = dpo.preference_dataset(train_pairs, tokenizer)
    eval_ds = dpo.preference_dataset(eval_pairs, tokenizer) if eval_pairs else None
    args = dpo.training_arguments(cfg.dpo, backend, out_dir, has_eval=eval_ds is not None)
    args.disable_tqdm = True
    return dpo.build_trainer(model, tokenizer, train_ds, args, eval_ds, peft_config,
                             training.standard_callbacks(cfg.dpo.train, eval_ds is not None))


@pytest.fixture(scope="module")
def pairs(records):
    train, val = records
    return pairs_from(val[:12]), pairs_from(val[12:16])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_path, tokenizer, pairs):
    train_pairs, eval_pairs = pairs
    trainer = build(tiny_path, tokenizer, train_pairs, tmp_path_factory.mktemp("dpo"), eval_pairs)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    margin_before = margin_on_training_pairs(trainer)
    result = training.train_with_resume(trainer)
    margin_after = margin_on_training_pairs(trainer)
    return trainer, before, margin_before, margin_after, result


def margin_on_training_pairs(trainer) -> float:
    """Mean reward margin over all training pairs (TRL logs it; the log line is removed again)."""
    trainer.evaluate(trainer.train_dataset, metric_key_prefix="fixed")
    return trainer.state.log_history.pop()["eval_rewards/margins"]


def test_answers_end_on_the_end_token_and_prompts_match_inference(tiny_path, tokenizer, records):
    from empathy_workbook.chat import render_prompt
    from empathy_workbook.family import family_of

    _, val = records
    ds = dpo.preference_dataset(pairs_from(val[:2]), tokenizer)
    assert ds[0]["prompt"] == render_prompt(tokenizer, val[0]["prompt"])
    end = family_of(tokenizer).end_of_turn
    assert ds[0]["chosen"] == val[0]["completion"][0]["content"] + end
    assert ds[0]["rejected"].endswith(end) and ds[0]["rejected"] != ds[0]["chosen"]


@pytest.mark.slow
def test_first_step_policy_equals_the_reference(trained):
    trainer, *_ = trained
    assert trainer.ref_model is None  # the reference is the starting model with the adapter switched off
    first_train = next(row for row in trainer.state.log_history if "rewards/chosen" in row)
    first_eval = next(row for row in trainer.state.log_history if "eval_rewards/chosen" in row)
    assert first_eval["step"] == 0
    for row, prefix in ((first_train, ""), (first_eval, "eval_")):
        assert abs(row[f"{prefix}rewards/chosen"]) < 1e-4 and abs(row[f"{prefix}rewards/rejected"]) < 1e-4
        assert row[f"{prefix}loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)


@pytest.mark.slow
def test_a_few_steps_change_the_adapter_and_raise_the_margin(trained):
    trainer, before, margin_before, margin_after, result = trained
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)
    assert margin_before == pytest.approx(0.0, abs=1e-4)
    assert margin_after > margin_before + 0.01
    metrics = dpo.history_metrics(trainer.state.log_history, result)
    assert metrics["steps"] == 6 and metrics["reward_margin_last"] > metrics["reward_margin_first"]


DPO_METRICS_KEYS = {
    "loss_first", "loss_last", "reward_margin_first", "reward_margin_last", "reward_accuracy_last", "eval_loss_first",
    "eval_loss_last", "eval_reward_accuracy", "eval_reward_margin_first", "eval_reward_margin_last", "steps",
    "max_steps", "stopped_early", "resumed_from", "tokens", "beta", "loss_type", "train_pairs", "eval_pairs",
    "heldout_source", "warnings", "backend", "backend_reason", "train_seconds", "processes", "peak_memory_mb",
    "spot_check_ids", "margin_sources"}


def test_metrics_contract_is_built_from_the_training_results():
    cfg = load_config("tiny", {"dpo": {"beta": 0.1}})
    # accuracy 1.0 from step 2 of 10 on: the pairs are too easy, which the warnings must say
    history = [{"step": s, "loss": 0.7 - s / 20, "rewards/margins": s / 10, "rewards/accuracies": 0.5 if s == 1 else 1.0}
               for s in range(1, 11)]
    history += [{"step": 5, "eval_loss": 0.6, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.5},
                {"step": 10, "eval_loss": 0.5, "eval_rewards/margins": 0.6, "eval_rewards/accuracies": 0.75}]
    result = {"global_step": 10, "max_steps": 10, "stopped_early": False, "resumed_from": None, "tokens": 900,
              "seconds": 4.0}
    warnings = dpo.training_warnings(history, cfg.dpo.beta)
    assert warnings == [dpo.EASY_PAIRS.format(step=2, total=10)]
    assert dpo.margin_sources(history) is None  # this history logged no held-out log-probabilities
    sources = {"share_of_margin_from_rejected": 0.9}  # as notebook 03 showed it: recorded as given, not recomputed
    metrics = dpo.metrics(SimpleNamespace(cfg=cfg), history=history, result=result,
                          backend=Backend("cpu", "cpu", False, "fp32", "no GPU"), train_pairs=[{}] * 3,
                          eval_pairs=[{}], heldout_source="pairs_heldout.jsonl", train_peak_mb=1e9, processes=1,
                          spot_records=[{"id": "val-00002"}], warnings=warnings, sources=sources)
    assert set(metrics) == DPO_METRICS_KEYS
    assert (metrics["reward_margin_last"], metrics["eval_reward_accuracy"], metrics["beta"]) == (1.0, 0.75, 0.1)
    assert (metrics["train_pairs"], metrics["eval_pairs"], metrics["peak_memory_mb"]) == (3, 1, 1e9)
    # what the notebook showed is what metrics.json records, not a second computation
    assert metrics["warnings"] is warnings and metrics["margin_sources"] is sources


def test_margin_sources_say_which_side_moved():
    """Run base3's shape: salad-like rejected answers far less likely than the chosen, and nearly all of the margin
    from pushing them further down."""
    history = [{"step": 0, "eval_logps/chosen": -283.7, "eval_logps/rejected": -941.0, "eval_rewards/chosen": 0.0,
                "eval_rewards/rejected": 0.0},
               {"step": 8, "eval_logps/chosen": -283.2, "eval_logps/rejected": -947.1, "eval_rewards/chosen": 0.044,
                "eval_rewards/rejected": -0.611}]
    sources = dpo.margin_sources(history)
    assert sources["reference_logp_rejected"] == -941.0 and sources["share_of_margin_from_rejected"] == 0.933
    text = dpo.describe_margin_sources(sources)
    assert "93% of the margin came from pushing the rejected answers down" in text and "change little" in text
    balanced = dict(history[1], **{"eval_rewards/chosen": 0.3, "eval_rewards/rejected": -0.3})
    assert dpo.margin_sources([history[0], balanced])["share_of_margin_from_rejected"] == 0.5


@pytest.mark.slow
def test_interrupted_dpo_resumes_to_the_same_step_count(tmp_path, tiny_path, tokenizer, pairs):
    from transformers import TrainerCallback

    train_pairs, _ = pairs

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # before step 3 is saved: the last checkpoint is step 2
                raise KeyboardInterrupt

    first = build(tiny_path, tokenizer, train_pairs, tmp_path / "ckpt", max_steps=4, save_steps=1, eval_steps=1)
    first.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        training.train_with_resume(first, fingerprint="f")
    again = build(tiny_path, tokenizer, train_pairs, tmp_path / "ckpt", max_steps=4, save_steps=1, eval_steps=1)
    result = training.train_with_resume(again, fingerprint="f")
    assert result["resumed_from"].endswith("checkpoint-2") and result["global_step"] == 4
    assert [row["step"] for row in again.state.log_history if "rewards/margins" in row] == [1, 2, 3, 4]


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pair_files_name_the_bad_row_and_field(tmp_path, records):
    _, val = records
    good = pairs_from(val[:2])
    bad = dict(good[1], rejected=[{"role": "assistant", "content": "  "}])
    write_pairs(tmp_path / "pairs.jsonl", [good[0], bad])
    with pytest.raises(ValueError, match=r"pairs.jsonl: row 2, field 'rejected'"):
        dpo.read_pairs(tmp_path / "pairs.jsonl")
    write_pairs(tmp_path / "pairs.jsonl", [{"prompt": good[0]["prompt"], "chosen": "text"}])
    with pytest.raises(ValueError, match=r"row 1, field 'chosen'"):
        dpo.read_pairs(tmp_path / "pairs.jsonl")


def test_missing_heldout_pairs_fall_back_to_a_seeded_slice_by_question(tmp_path, records):
    _, val = records
    rows = pairs_from(val[:20])
    write_pairs(tmp_path / "pairs.jsonl", rows)
    (tmp_path / "pairs_heldout.jsonl").write_text("")  # empty file: same as missing
    train, heldout, source = dpo.load_pairs(tmp_path, 0.25, seed=7)
    assert heldout and len(train) + len(heldout) == len(rows) and "held out" in source
    assert not {dpo.prompt_key(p) for p in train} & {dpo.prompt_key(p) for p in heldout}
    assert dpo.load_pairs(tmp_path, 0.25, seed=7)[1] == heldout  # seeded
    write_pairs(tmp_path / "pairs_heldout.jsonl", rows[:3])
    train, heldout, source = dpo.load_pairs(tmp_path, 0.25, seed=7)
    assert len(train) == len(rows) and heldout == rows[:3] and "validation prompts" in source


def history(accuracies, margins):
    return [{"step": i + 1, "rewards/accuracies": a, "rewards/margins": m}
            for i, (a, m) in enumerate(zip(accuracies, margins))]


def test_warnings_flag_saturated_accuracy_and_runaway_margins():
    calm = history([0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.75, 0.8, 0.8, 0.8], [0, .1, .2, .3, .35, .4, .42, .44, .45, .46])
    assert dpo.training_warnings(calm, beta=0.1) == []
    easy = history([0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0, .5, 1, 1.5, 1.8, 2, 2.1, 2.2, 2.3, 2.3])
    assert ["too easy" in w for w in dpo.training_warnings(easy, beta=0.1)] == [True]
    runaway = history([0.5, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [0, 1, 2, 3, 4.5, 6, 8, 10, 13, 16])
    assert ["Raise beta" in w for w in dpo.training_warnings(runaway, beta=0.1)] == [True]
