"""The real (qwen3-0.6b, CUDA) path's choices tested on the CPU with CUDA, bitsandbytes and Unsloth mocked:
precision, 8-bit optimizer fallback, 4-bit loading for DPO, sampling flags, the CUDA build of llama.cpp."""

import subprocess
from pathlib import Path

import pytest

from empathy_workbook.config import SamplingConfig, TrainConfig, load_config
from empathy_workbook.models import loading as models
from empathy_workbook.paths import REPO_ROOT
from empathy_workbook.phases import dpo, training
from helpers import gpu, with_patches


# --- precision: bf16 wherever the GPU has it ---

@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_sixteen_bit_training_uses_bf16_on_a_gpu_that_supports_it(requested):
    cfg = load_config("qwen3-0.6b")
    backend = with_patches(gpu(bf16=True), lambda: models.select_backend(cfg.model, requested))
    assert backend.device == "cuda" and backend.precision == "bf16"


@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_fp16_only_where_the_gpu_has_no_bf16(requested):
    cfg = load_config("qwen3-0.6b")
    backend = with_patches(gpu(bf16=False), lambda: models.select_backend(cfg.model, requested))
    assert backend.precision == "fp16"
    assert "no bf16" in backend.reason or requested == "fp16"


def test_the_real_preset_asks_for_bf16():
    cfg = load_config("qwen3-0.6b")
    assert cfg.sft.train.precision == "bf16" and cfg.dpo.train.precision == "bf16"
    backend = with_patches(gpu(bf16=True), lambda: training.prepare_backend(cfg.model, cfg.sft.train))
    args = training.common_arguments(cfg.sft.train, backend, Path("/tmp/x"), has_eval=True)
    assert args["bf16"] is True and args["fp16"] is False


# --- 8-bit AdamW falls back, saying why ---

def test_adamw_8bit_falls_back_without_bitsandbytes_and_says_why():
    cfg = load_config("qwen3-0.6b").sft.train
    lines = []
    backend = models.Backend("transformers+peft", "cuda", False, "bf16", "test")
    name = with_patches(gpu(installed=()), lambda: training.optimizer_name(cfg, backend, log=lines.append))
    assert name == "adamw_torch"
    assert len(lines) == 1 and "bitsandbytes is not installed" in lines[0] and "adamw_8bit" in lines[0]


def test_adamw_8bit_kept_with_bitsandbytes_on_cuda_and_replaced_on_cpu():
    cfg = load_config("qwen3-0.6b").sft.train
    cuda = models.Backend("transformers+peft", "cuda", True, "bf16", "test")
    assert with_patches(gpu(installed=("bitsandbytes",)), lambda: training.optimizer_name(cfg, cuda, log=print)) \
        == "adamw_8bit"
    lines = []
    cpu = models.Backend("cpu", "cpu", False, "fp32", "test")
    assert training.optimizer_name(cfg, cpu, log=lines.append) == "adamw_torch" and "CPU" in lines[0]
    assert training.optimizer_name(TrainConfig(optim="adamw_torch"), cpu, log=lines.append) == "adamw_torch"
    assert len(lines) == 1  # nothing to say when nothing was replaced


# --- DPO: 16-bit base by default, 4-bit only by its own flag ---

def test_dpo_loads_the_sft_model_in_16_bit_even_when_sft_used_4_bit():
    cfg = load_config("qwen3-0.6b")
    assert cfg.model.load_in_4bit is True and cfg.dpo.load_in_4bit is False
    sft_backend = with_patches(gpu(), lambda: models.select_backend(cfg.model, "bf16"))
    dpo_backend = with_patches(gpu(), lambda: training.prepare_backend(dpo.model_config(cfg.model, cfg.dpo),
                                                                       cfg.dpo.train))
    assert sft_backend.load_in_4bit is True
    assert dpo_backend.load_in_4bit is False and dpo_backend.precision == "bf16"


def test_dpo_4_bit_only_by_its_own_flag():
    cfg = load_config("qwen3-0.6b", {"dpo": {"load_in_4bit": True}})
    backend = with_patches(gpu(), lambda: models.select_backend(dpo.model_config(cfg.model, cfg.dpo), "bf16"))
    assert backend.load_in_4bit is True


# --- sampling: every knob explicit (Qwen3's generation_config says top_k=20) ---

class RecordingModel:
    """Stands in for a causal LM: records generate()'s keyword arguments, returns two new tokens."""

    def __init__(self):
        import torch

        self.calls, self._p = [], torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append(dict(kwargs, input_ids=input_ids.tolist()))
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 2), 5)], dim=1)


def test_sampling_passes_top_k_0_and_min_p_explicitly():
    from transformers import AutoTokenizer

    from empathy_workbook.models.random_weights import qwen3_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    model = RecordingModel()
    sampling = SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, min_p=0.05, max_new_tokens=4, batch_size=2)
    models.generate(model, tokenizer, [[{"role": "user", "content": "hello"}]], sampling, progress=False)
    call = model.calls[0]
    assert call["top_k"] == 0 and call["min_p"] == 0.05 and call["temperature"] == 1.5 and call["do_sample"]


def test_top_k_0_really_turns_top_k_off_against_a_generation_config_of_20():
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)  # as Qwen3 ships it
    kwargs = models.sampling_kwargs(SamplingConfig(temperature=1.5, top_p=1.0, top_k=0))
    merged = config.to_dict() | {k: v for k, v in kwargs.items() if k in config.to_dict()}
    assert merged["top_k"] == 0 and merged["temperature"] == 1.5
    with pytest.raises(Exception):
        SamplingConfig(min_p=1.5)


# --- setup: llama-cpp-python with CUDA on a CUDA machine ---

def fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize("with_nvcc", [True, False])
def test_setup_builds_llama_cpp_with_cuda_when_nvcc_exists(tmp_path, with_nvcc):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup_venv.sh").write_text((REPO_ROOT / "scripts" / "setup_venv.sh").read_text())
    (tmp_path / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv_bin.mkdir(parents=True)
    log = tmp_path / "calls.log"
    # build_llama_cpp.sh (llama-cpp-python + llama-server from one compile, cached by CMAKE_ARGS) is recorded only
    fake_tool(tmp_path / "scripts", "build_llama_cpp.sh", f'echo "BUILD_LLAMA CMAKE_ARGS=$CMAKE_ARGS" >> {log}')
    fake_tool(bin_dir, "nvidia-smi", 'echo "GPU 0: fake"')
    if with_nvcc:
        fake_tool(bin_dir, "nvcc", "exit 0")
    # the venv's python: records each call with CMAKE_ARGS; "-c" checks (llama_cpp offload, final import) fail/pass
    fake_tool(venv_bin, "python", f'echo "CMAKE_ARGS=$CMAKE_ARGS ARGS=$*" >> {log}\n'
                                  'if [[ "$1" == "-c" && "$2" == *gpu_offload* ]]; then exit 1; fi\nexit 0')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "CUDA_HOME": str(tmp_path / "no-cuda")}
    subprocess.run(["bash", str(tmp_path / "scripts" / "setup_venv.sh")], check=True, env=env, capture_output=True)
    calls = log.read_text().splitlines()
    installs = [c for c in calls if "pip install" in c]
    builds = [c for c in calls if c.startswith("BUILD_LLAMA")]
    assert len(builds) == 1  # the build is cached per CMAKE_ARGS, so a cached CPU build never serves a CUDA setup
    if with_nvcc:
        assert "-DGGML_CUDA=on" in builds[0]
    else:
        assert "GGML_CUDA" not in builds[0] and all("GGML_CUDA" not in c for c in installs)
    assert any(".[gpu,dev,lab]" in c for c in installs)
