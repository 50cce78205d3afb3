"""training.py: backend choice without CUDA imports, non-finite loss stop, resume, merge-and-save, spot-check prompts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import empathy_workbook
from empathy_workbook.config import load_config
from empathy_workbook.phases import training
from helpers import sft_trainer


def small_cfg(**train):
    """The tiny preset with a short, fast schedule (overrides as in a notebook's parameters cell)."""
    values = {"batch_size": 4, "grad_accum": 1, "max_steps": 4, "eval_steps": 2, "save_steps": 2,
              "gradient_checkpointing": False, "warmup_ratio": 0.0, **train}
    return load_config("tiny", {"sft": {"train": values}})


FAKE_PACKAGES = ("unsloth", "bitsandbytes")


def test_cpu_backend_imports_neither_unsloth_nor_bitsandbytes(tmp_path, tiny_path):
    # Importable stand-ins: if the CPU path imported them, they would show up in sys.modules.
    for name in FAKE_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    script = textwrap.dedent(f"""
        import json, sys
        from empathy_workbook.config import load_config
        from empathy_workbook.models.loading import load_training_base
        from empathy_workbook.phases import training, sft
        cfg = load_config("qwen3-0.6b")   # asks for Unsloth and a 4-bit base
        backend = training.prepare_backend(cfg.model, cfg.sft.train)
        load_training_base({str(tiny_path)!r}, backend, 64)
        selection = [m for m in {FAKE_PACKAGES!r} if m in sys.modules]
        sft.training_arguments(cfg.sft, backend, {str(tmp_path / 'out')!r}, True)
        sft.trainer_class()
        print(json.dumps({{"backend": backend.name, "load_in_4bit": backend.load_in_4bit,
                          "selection": selection, "unsloth_later": "unsloth" in sys.modules}}))
    """)
    # the package under test (this checkout, not whichever one is installed) after the stand-ins
    lib = Path(empathy_workbook.__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{lib}", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "cpu" and not result["load_in_4bit"]
    assert result["selection"] == []       # choosing the backend and loading the base: neither package
    assert result["unsloth_later"] is False  # building the TRL trainer on CPU never pulls Unsloth in


def test_cpu_arguments_train_in_fp32_with_plain_adamw(tmp_path):
    cfg = load_config("qwen3-0.6b")  # fp16 + adamw_8bit in the preset
    backend = training.prepare_backend(cfg.model, cfg.sft.train)
    args = training.common_arguments(cfg.sft.train, backend, tmp_path, has_eval=True)
    assert backend.device == "cpu"
    assert (args["fp16"], args["bf16"], args["use_cpu"]) == (False, False, True)
    assert args["optim"] == "adamw_torch"
    assert args["eval_on_start"] and args["load_best_model_at_end"] and not args["logging_nan_inf_filter"]


@pytest.mark.slow
def test_non_finite_loss_stops_with_advice(tmp_path, tiny_path, tokenizer, records):
    train, _ = records
    cfg = small_cfg(max_steps=3)
    trainer = sft_trainer(cfg, tiny_path, tokenizer, train[:8], tmp_path / "ckpt")
    # poison one adapter matrix: the first forward pass yields a NaN loss
    lora_a = next(p for n, p in trainer.model.named_parameters() if "lora_A" in n)
    lora_a.data.fill_(float("nan"))
    with pytest.raises(training.NonFiniteLossError, match="learning rate") as err:
        trainer.train()
    assert "step 1" in str(err.value) and "nan" in str(err.value)
    assert not list((tmp_path / "ckpt").glob("checkpoint-*"))  # nothing broken was saved


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_step_count(tmp_path, tiny_path, tokenizer, records):
    from transformers import TrainerCallback

    train, _ = records
    cfg = small_cfg(max_steps=5, eval_steps=2, save_steps=2)

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after the checkpoint of step 2 was written
                raise KeyboardInterrupt

    full = sft_trainer(cfg, tiny_path, tokenizer, train[:12], tmp_path / "full")
    full_result = training.train_with_resume(full, fingerprint="same")

    first = sft_trainer(cfg, tiny_path, tokenizer, train[:12], tmp_path / "cut")
    first.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        training.train_with_resume(first, fingerprint="same")
    again = sft_trainer(cfg, tiny_path, tokenizer, train[:12], tmp_path / "cut")
    resumed = training.train_with_resume(again, fingerprint="same")

    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["global_step"] == full_result["global_step"] == 5
    steps = [row["step"] for row in again.state.log_history if "loss" in row]
    assert steps == [1, 2, 3, 4, 5]  # the log continues from the checkpoint, no step counted twice


def test_finished_or_foreign_checkpoints_are_not_resumed(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (folder / training.RUN_MARKER).write_text(json.dumps({"fingerprint": "a", "finished": False}))
    assert training.resume_checkpoint(folder, "a", log=lambda *_: None).endswith("checkpoint-4")
    assert training.resume_checkpoint(folder, "b", log=lambda *_: None) is None  # other config: fresh start
    assert not folder.exists()
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / training.RUN_MARKER).write_text(json.dumps({"fingerprint": "a", "finished": True}))
    assert training.resume_checkpoint(folder, "a", log=lambda *_: None) is None  # a finished run is redone


@pytest.mark.slow
def test_merge_and_save_adds_exactly_the_adapter_delta(tmp_path, tiny_path, tokenizer, records):
    """Merged = base + B @ A * alpha / r on every adapted weight (up to the 16-bit save), nothing else moves,
    and the merged model computes the adapter model's logits, which differ clearly from the base's."""
    import torch
    from transformers import AutoModelForCausalLM

    train, _ = records
    cfg = small_cfg(max_steps=2, save_steps=2)
    trainer = sft_trainer(cfg, tiny_path, tokenizer, train[:8], tmp_path / "ckpt")
    trainer.train()
    peft_model = trainer.model.eval()
    # Two steps move B only a little; a seeded push makes the delta far larger than 16-bit rounding, so a
    # merge that dropped or mis-scaled the adapter could not pass the comparisons below.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = training.save_adapter(trainer, tmp_path / "adapter")
    merged_dir = training.merge_and_save(adapter, tiny_path, tmp_path / "merged", tokenizer)
    assert (merged_dir / "tokenizer.json").exists() and not (tmp_path / "merged.tmp").exists()

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert next(merged.parameters()).dtype in (torch.float16, torch.bfloat16)  # saved in 16 bits
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    merged_w = {k: v.float() for k, v in merged.state_dict().items()}
    base_w = base.state_dict()
    scale = cfg.sft.lora.alpha / cfg.sft.lora.r
    adapted = set()
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        key = name.split("base_model.model.", 1)[1] + ".weight"
        delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight).detach() * scale
        expected = base_w[key] + delta
        rounding = expected.abs() * 2**-7 + 1e-6  # bf16 rounds to 8 significant bits (≤ 2^-8 relative): 2x margin
        assert (merged_w[key] - expected).abs().le(rounding).all(), key
        assert delta.abs().mean() > 10 * rounding.mean(), key  # the delta stands far above the rounding
        adapted.add(key)
    assert len(adapted) == base.config.num_hidden_layers * len(cfg.sft.lora.target_modules)
    assert {k.rsplit(".", 2)[-2] for k in adapted} == set(cfg.sft.lora.target_modules)
    for key, value in base_w.items():  # everything without an adapter is the base, up to the 16-bit save
        if key not in adapted:
            assert (merged_w[key] - value).abs().le(value.abs() * 2**-7 + 1e-6).all(), key

    ids = torch.tensor([trainer.train_dataset[0]["input_ids"][:40]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits.float()
        got = merged.float()(input_ids=ids).logits
        before = base(input_ids=ids).logits
    tolerance = 0.05
    assert (expected - before).abs().max() > 10 * tolerance  # the adapter changes what the model computes
    assert torch.allclose(expected, got, atol=tolerance, rtol=0.0)  # the merged model computes it too


def test_spot_check_records_are_fixed_and_distinct(records):
    _, val = records
    chosen = training.spot_check_records(val, 5)
    assert chosen == training.spot_check_records(list(reversed(val)), 5)  # order of the file does not matter
    assert len({r["question_key"] for r in chosen}) == len(chosen) == min(5, len({r["question_key"] for r in val}))


def test_trainable_tokens_train_only_their_embedding_rows_and_merge_into_them(tmp_path, tiny_path, tokenizer, records):
    """lora.trainable_tokens (a base model's never-seen chat tokens): the named rows of the tied embedding learn,
    every other row stays the base's, and the merged model carries the learnt rows."""
    import torch
    from transformers import AutoModelForCausalLM

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg = load_config("tiny", {"sft": {"lora": {"trainable_tokens": ["<|im_end|>"]},
                                       "train": {"batch_size": 4, "grad_accum": 1, "max_steps": 2, "save_steps": 2, "eval_steps": 2,
                                                 "gradient_checkpointing": False, "warmup_ratio": 0.0,
                                                 "learning_rate": 1e-2}}})
    train, _ = records
    trainer = sft_trainer(cfg, tiny_path, tokenizer, train[:8], tmp_path / "ckpt")
    trainer.train()
    merged_dir = training.merge_and_save(training.save_adapter(trainer, tmp_path / "adapter"), tiny_path,
                                         tmp_path / "merged", tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).get_input_embeddings().weight
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).get_input_embeddings().weight
    moved = (merged - base).abs().amax(dim=1) > base.abs().amax() * 2**-7  # beyond the 16-bit save's rounding
    assert moved.nonzero().flatten().tolist() == [end]


def test_trainable_tokens_must_be_single_tokens(tokenizer):
    assert training.token_rows(tokenizer, ["<|im_end|>"]) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with pytest.raises(ValueError, match="'<end_of_turn>' is not a single token"):
        training.token_rows(tokenizer, ["<end_of_turn>"])
