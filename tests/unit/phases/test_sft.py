"""sft.py: completion-only labels from the trainer's collator, and a few LoRA steps that learn."""

import pytest
import torch

from empathy_workbook.chat import render_prompt
from empathy_workbook.config import load_config
from empathy_workbook.family import QWEN3
from empathy_workbook.models.loading import Backend
from empathy_workbook.phases import sft, training
from helpers import sft_trainer


def build(tiny_path, tokenizer, train_records, out_dir, eval_records=None, batching="padded", **train):
    values = {"batch_size": 4, "grad_accum": 1, "max_steps": 6, "eval_steps": 3, "save_steps": 3,
              "gradient_checkpointing": False, "warmup_ratio": 0.0, "learning_rate": 3e-3, **train}
    cfg = load_config("tiny", {"sft": {"train": values, "batching": batching}})
    return sft_trainer(cfg, tiny_path, tokenizer, train_records, out_dir, eval_records)


def test_collator_labels_are_exactly_the_answer_and_end_token(tmp_path, tiny_path, tokenizer, records):
    train, _ = records
    trainer = build(tiny_path, tokenizer, train[:4], tmp_path)
    # the trainer's own dataset order is not shuffled at preparation, so row i is record i
    batch = sft.collated_examples(trainer, n=4)
    assert (batch["labels"] == sft.IGNORE_INDEX).any(dim=1).all()  # every row has masked prompt tokens
    for record, span, labels, ids in zip(train[:4], sft.trained_spans(batch, tokenizer),
                                         batch["labels"], batch["input_ids"]):
        answer = record["completion"][0]["content"]
        assert span["trained"] == answer + QWEN3.end_of_turn  # nothing after <|im_end|>: not even the template's "\n"
        assert span["context"] == render_prompt(tokenizer, record["prompt"])  # untrained = the inference prompt
        kept = labels != sft.IGNORE_INDEX
        assert torch.equal(labels[kept], ids[kept])  # labels are the tokens themselves (the shift is the model's)
        positions = kept.nonzero().flatten()
        assert positions.max() - positions.min() + 1 == kept.sum()  # one contiguous span
        pad = ids == tokenizer.pad_token_id
        assert not kept[pad].any()  # padding is never trained


def test_unprepared_or_full_loss_setups_are_refused(tmp_path, tiny_path, tokenizer, records):
    from datasets import Dataset

    train, _ = records
    trainer = build(tiny_path, tokenizer, train[:4], tmp_path)
    with pytest.raises(ValueError, match="pre-tokenized"):
        sft.build_trainer(trainer.model, tokenizer, Dataset.from_list([{"text": "hi"}]), trainer.args)
    with pytest.raises(ValueError, match="malformed"):
        sft.tokenized_dataset([{"id": "x", "prompt": [], "completion": []}], tokenizer, 64)


def test_padding_free_batches_have_no_padding_and_the_same_loss(tmp_path, tiny_path, tokenizer, records):
    train, _ = records
    rows = train[:8]
    padded = build(tiny_path, tokenizer, rows, tmp_path / "padded", batch_size=8)
    flat = build(tiny_path, tokenizer, rows, tmp_path / "flat", batching="padding_free", batch_size=8)
    lengths = [len(r["input_ids"]) for r in padded.train_dataset]
    assert len(set(lengths)) > 1  # rows of different lengths, so the padded batch does pad
    a = padded.data_collator([padded.train_dataset[i] for i in range(8)])
    b = flat.data_collator([flat.train_dataset[i] for i in range(8)])
    assert a["input_ids"].shape == (8, max(lengths)) and b["input_ids"].shape == (1, sum(lengths))
    starts = (b["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 8  # positions restart at every row: that is what keeps rows from attending to each other
    assert torch.equal(a["labels"][a["labels"] != sft.IGNORE_INDEX], b["labels"][b["labels"] != sft.IGNORE_INDEX])
    with torch.no_grad():  # LoRA B starts at 0, so both models are the same base model here
        padded.model.eval(), flat.model.eval()
        loss_padded = padded.compute_loss(padded.model, a)
        loss_flat = flat.compute_loss(flat.model, b)
    # a row attending across the join (a missing block-diagonal mask) would change the loss far beyond this
    assert torch.isclose(loss_padded, loss_flat, rtol=1e-4), (loss_padded, loss_flat)


def test_length_grouped_batches_pad_less_than_random_order(tmp_path, tiny_path, tokenizer, records):
    train, _ = records
    rows = train  # ~300 rows: transformers sorts within "megabatches" of up to 50 batches, 4+ per epoch
    shares = {}
    for batching in ("padded", "length_grouped"):
        trainer = build(tiny_path, tokenizer, rows, tmp_path / batching, batching=batching, batch_size=8)
        assert trainer.args.train_sampling_strategy == ("group_by_length" if batching == "length_grouped" else "random")
        shares[batching] = sft.padding_shares(trainer)
    # random order: the trainer's batches pad about as much as a random draw of the same rows
    assert abs(shares["padded"]["configured"] - shares["padded"]["random_order"]) < 0.1, shares
    assert shares["length_grouped"]["configured"] < shares["padded"]["configured"] / 2, shares


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_path, tokenizer, records):
    """A short SFT run on 16 training examples; the loss on those same examples before and after."""
    train, val = records
    trainer = build(tiny_path, tokenizer, train[:16], tmp_path_factory.mktemp("sft"), eval_records=val[:8])
    before_weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    fixed = trainer.train_dataset.select(range(16))
    loss_before = trainer.evaluate(fixed, metric_key_prefix="fixed")["fixed_loss"]
    result = training.train_with_resume(trainer)
    loss_after = trainer.evaluate(fixed, metric_key_prefix="fixed")["fixed_loss"]
    return trainer, before_weights, loss_before, loss_after, result


@pytest.mark.slow
def test_a_few_steps_change_only_the_lora_weights(trained):
    trainer, before, *_ = trained
    assert before and all("lora_" in name for name in before)  # only the adapter is trainable
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)  # B starts at zero: it moved, so the adapter now does something


@pytest.mark.slow
def test_a_few_steps_lower_the_training_loss(trained):
    _, _, loss_before, loss_after, result = trained
    assert result["global_step"] == 6
    assert loss_after < loss_before


@pytest.mark.slow
def test_validation_loss_is_measured_before_the_first_step(trained):
    trainer, *_ , result = trained
    history = trainer.state.log_history
    evals = [row for row in history if "eval_loss" in row]
    assert evals[0]["step"] == 0 and [row["step"] for row in evals][1:] == [3, 6]
    metrics = sft.history_metrics(history, result)
    assert metrics["eval_loss_first"] == evals[0]["eval_loss"]
    assert metrics["eval_loss_best"] == min(row["eval_loss"] for row in evals)
    assert metrics["tokens"] > 0 and all(training.series(history, "peak_memory_mb"))


SFT_METRICS_KEYS = {
    "train_loss_first", "train_loss_last", "eval_loss_first", "eval_loss_last", "eval_loss_best", "steps", "max_steps",
    "stopped_early", "resumed_from", "tokens", "backend", "backend_reason", "precision", "load_in_4bit",
    "trainable_parameters", "train_seconds", "processes", "peak_memory_mb", "spot_check_ids",
    "end_of_turn_probability"}
TRAINING_RESULT = {"global_step": 6, "max_steps": 6, "stopped_early": False, "resumed_from": None, "tokens": 1200,
                   "seconds": 3.5}


def test_metrics_contract_is_built_from_the_training_results():
    history = [{"loss": 2.0}, {"eval_loss": 1.9}, {"loss": 1.5}, {"eval_loss": 1.6}, {"eval_loss": 1.7}]
    metrics = sft.metrics(history=history, result=TRAINING_RESULT, backend=Backend("cpu", "cpu", False, "fp32", "no GPU"),
                          trainable=1000, train_peak_mb=1e9, processes=1, spot_records=[{"id": "val-00001"}],
                          end_of_turn_probability={"base": 0.1, "sft": 0.5})
    assert set(metrics) == SFT_METRICS_KEYS
    assert (metrics["train_loss_last"], metrics["eval_loss_best"], metrics["eval_loss_last"]) == (1.5, 1.6, 1.7)
    assert metrics["peak_memory_mb"] == 1e9  # training's peak, when it is above this process's peak now
    assert (metrics["train_seconds"], metrics["spot_check_ids"], metrics["precision"]) == (3.5, ["val-00001"], "fp32")


class StopAfter(torch.nn.Module):
    """A stand-in model: logit 0 everywhere, except a chosen logit for the end-of-turn token exactly at the
    position after `last_id` (and nowhere else), so only the right position gives the known probability."""

    def __init__(self, vocab: int, end: int, last_id: int, logit: float):
        super().__init__()
        self.vocab, self.end, self.last_id, self.logit = vocab, end, last_id, logit
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the function reads the device from a parameter

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[0, -1, self.end] = self.logit if input_ids[0, -1] == self.last_id else -30.0
        return type("Out", (), {"logits": logits})()


def test_end_of_turn_probability_reads_the_position_after_the_whole_answer(tokenizer, records):
    from empathy_workbook.chat import encode_prompt_answer

    _, val = records
    record = val[0]
    _, answer_ids = encode_prompt_answer(tokenizer, record["prompt"], record["completion"][0]["content"])
    end = tokenizer.convert_tokens_to_ids(QWEN3.end_of_turn)
    vocab = len(tokenizer)
    # softmax with one logit L and vocab-1 zeros: e^L / (e^L + vocab - 1) = 0.25 for L = log((vocab - 1) / 3)
    model = StopAfter(vocab, end, last_id=answer_ids[-2], logit=float(torch.tensor((vocab - 1) / 3).log()))
    assert sft.end_of_turn_probability(model, tokenizer, [record]) == pytest.approx(0.25, rel=1e-4)
    wrong_place = StopAfter(vocab, end, last_id=answer_ids[-1], logit=10.0)  # reading after the end token itself
    assert sft.end_of_turn_probability(wrong_place, tokenizer, [record]) < 1e-9
