"""The CUDA backends, tested on the CPU: Unsloth and CUDA are stand-ins, the code that chooses and calls them is real.

* Unsloth installed: FastLanguageModel loads the preset's 4-bit base and puts the LoRA on the seven projections,
  Unsloth is imported before transformers, TRL and PEFT, DPO gets Unsloth's DPO patch before TRL is imported,
  and the merged model comes from Unsloth's merged 16-bit save.
* Unsloth missing: transformers + PEFT, the base on this process's GPU, 4-bit through bitsandbytes when installed.
* DeepSpeed or FSDP launch: transformers + PEFT on a 16-bit base, placed by the launcher.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from empathy_workbook.config import LORA_TARGETS, load_config
from empathy_workbook.models import loading as models
from empathy_workbook.phases import training
from helpers import gpu, with_patches

# A stand-in `unsloth` package: it logs (as JSON lines) what was imported before it, and every call the project makes.
FAKE_UNSLOTH = '''
import json, os, sys

def _log(event, **details):
    with open(os.environ["FAKE_UNSLOTH_LOG"], "a") as handle:
        handle.write(json.dumps({"event": event, **details}) + "\\n")

_log("import", before=[m for m in ("transformers", "trl", "peft") if m in sys.modules])

class _Model:
    pass

class FastLanguageModel:
    @staticmethod
    def from_pretrained(**kwargs):
        _log("from_pretrained", **{k: str(v) for k, v in kwargs.items()})
        return _Model(), None

    @staticmethod
    def get_peft_model(model, **kwargs):
        _log("get_peft_model", **{k: v if isinstance(v, (int, float, str, list)) else str(v) for k, v in kwargs.items()})
        return model

def PatchDPOTrainer():
    _log("PatchDPOTrainer", trl_imported="trl" in sys.modules)
'''


def run_with_fake_unsloth(tmp_path: Path, body: str) -> list[dict]:
    """Run `body` in a fresh interpreter that sees CUDA (mocked) and the stand-in Unsloth; returns its log."""
    (tmp_path / "unsloth").mkdir()
    (tmp_path / "unsloth" / "__init__.py").write_text(FAKE_UNSLOTH)
    log = tmp_path / "unsloth.log"
    script = textwrap.dedent("""
        from unittest import mock
        import torch
        from empathy_workbook.models import loading as models
        from empathy_workbook.phases import dpo, training
        from empathy_workbook.config import load_config
        cfg = load_config("qwen3-0.6b")
        with mock.patch.object(models, "cuda_available", return_value=True), \\
                mock.patch("torch.cuda.is_bf16_supported", return_value=True):
    """) + textwrap.indent(textwrap.dedent(body), "    ")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "FAKE_UNSLOTH_LOG": str(log),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_unsloth_trains_sft_on_a_4_bit_base_with_lora_on_the_seven_projections_imported_first(tmp_path):
    events = run_with_fake_unsloth(tmp_path, """
        backend = training.prepare_backend(cfg.model, cfg.sft.train)
        assert backend.name == "unsloth" and backend.load_in_4bit and backend.precision == "bf16", backend
        model, peft_config = training.load_model("/models/qwen3", backend, cfg.sft.train, cfg.sft.lora)
        assert peft_config is None  # Unsloth attached the adapter itself
    """)
    by_event = {e["event"]: e for e in events}
    assert by_event["import"]["before"] == []  # nothing of transformers, TRL or PEFT was loaded before Unsloth
    load = by_event["from_pretrained"]
    assert (load["model_name"], load["load_in_4bit"], load["dtype"]) == ("/models/qwen3", "True", "torch.bfloat16")
    assert load["max_seq_length"] == str(load_config("qwen3-0.6b").sft.train.max_length)
    lora = by_event["get_peft_model"]
    assert sorted(lora["target_modules"]) == sorted(LORA_TARGETS) and len(LORA_TARGETS) == 7
    assert (lora["r"], lora["lora_alpha"], lora["bias"]) == (16, 16, "none")


def test_unsloth_dpo_gets_the_dpo_patch_before_trl_and_a_16_bit_sft_model(tmp_path):
    events = run_with_fake_unsloth(tmp_path, """
        backend = dpo.prepare_backend(cfg.model, cfg.dpo)
        assert backend.name == "unsloth" and not backend.load_in_4bit, backend  # dpo.load_in_4bit is false
        training.load_model("/runs/real/sft/merged", backend, cfg.dpo.train, cfg.dpo.lora)
    """)
    names = [e["event"] for e in events]
    assert names[:2] == ["import", "PatchDPOTrainer"]
    assert events[1]["trl_imported"] is False
    assert next(e for e in events if e["event"] == "from_pretrained")["load_in_4bit"] == "False"


def test_unsloth_exports_through_its_merged_16_bit_save(tmp_path):
    calls = []

    class UnslothModel:
        def save_pretrained_merged(self, path, tokenizer, save_method):
            calls.append(save_method)
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_text("weights")

    backend = models.Backend("unsloth", "cuda", True, "bf16", "test")
    out = training.save_merged(SimpleNamespace(model=UnslothModel()), backend, tmp_path / "adapter",
                               str(tmp_path / "base"), tmp_path / "merged", tokenizer=object())
    assert calls == ["merged_16bit"]
    assert (out / "model.safetensors").exists() and not (tmp_path / "merged.tmp").exists()


def loaded_with(backend, monkeypatch) -> dict:
    """The keyword arguments load_training_base hands transformers (the model itself is a stand-in)."""
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs, path=path)
        return SimpleNamespace()

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", from_pretrained)
    monkeypatch.setattr("peft.prepare_model_for_kbit_training", lambda model, **kwargs: model)
    models.load_training_base("/models/qwen3", backend, 512)
    return seen


def test_without_unsloth_cuda_trains_with_transformers_and_peft_on_this_process_gpu(monkeypatch):
    cfg = load_config("qwen3-0.6b")
    backend = with_patches(gpu(installed=("bitsandbytes",)), lambda: training.prepare_backend(cfg.model, cfg.sft.train))
    assert (backend.name, backend.load_in_4bit) == ("transformers+peft", True)
    assert "unsloth" not in sys.modules
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of a DDP launch
    kwargs = loaded_with(backend, monkeypatch)
    assert kwargs["device_map"] == {"": 1}
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and str(quant.bnb_4bit_compute_dtype) == "torch.bfloat16"


@pytest.mark.parametrize("variable, name", [("ACCELERATE_USE_DEEPSPEED", "deepspeed"), ("ACCELERATE_USE_FSDP", "fsdp")])
def test_under_deepspeed_or_fsdp_the_launcher_places_a_16_bit_base(monkeypatch, variable, name):
    cfg = load_config("qwen3-0.6b")  # asks for Unsloth and a 4-bit base
    monkeypatch.setenv(variable, "true")
    backend = with_patches(gpu(installed=("bitsandbytes", "unsloth")), lambda: models.select_backend(cfg.model, "bf16"))
    assert (backend.name, backend.load_in_4bit) == ("transformers+peft", False) and name in backend.reason
    kwargs = loaded_with(backend, monkeypatch)
    assert "device_map" not in kwargs and "quantization_config" not in kwargs
