"""Loading models and tokenizers for a preset, choosing the training backend, and batched generation.

This is the only module that may import CUDA-only packages (Unsloth, bitsandbytes), and only after
checking that CUDA is there: a CPU machine never imports them.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_messages
from ..distributed import is_main_process, local_process_index, map_in_order, sharded_launcher
from ..config import TINY_MODEL, ModelConfig, SamplingConfig
from ..family import family_of
from ..family import stop_token_ids as _family_stop_ids


@dataclass(frozen=True)
class Backend:
    """How a phase trains: which stack, on which device, at which precision, and why."""

    name: str  # "unsloth", "transformers+peft" or "cpu"
    device: str  # "cuda" or "cpu"
    load_in_4bit: bool
    precision: str  # "fp32", "fp16" or "bf16"
    reason: str

    def __str__(self) -> str:
        quant = ", 4-bit base" if self.load_in_4bit else ""
        return f"{self.name} on {self.device} ({self.precision}{quant}): {self.reason}"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_precision(requested: str) -> tuple[str, str]:
    """(precision, note): 16-bit training runs in bf16 wherever the GPU supports it, fp16 only where it doesn't.

    Qwen3 ships in bf16; bf16 has fp32's exponent range, so activations that overflow fp16's 65,504
    stay finite, and no loss scaling is needed. GPUs before Ampere (e.g. T4, V100) lack bf16: fp16 there.
    """
    if requested not in ("fp16", "bf16"):
        return requested, ""
    import torch

    if torch.cuda.is_bf16_supported():
        return "bf16", "" if requested == "bf16" else "; bf16 instead of the preset's fp16 (this GPU supports it)"
    return "fp16", "" if requested == "fp16" else "; fp16: this GPU has no bf16"


def select_backend(model_cfg: ModelConfig, precision: str = "fp16") -> Backend:
    """Pick Unsloth, transformers+PEFT or CPU from what this machine has; never imports CUDA-only code.

    Under DeepSpeed or FSDP (accelerate launch with configs/accelerate/deepspeed_zero2.yaml or fsdp.yaml) the
    model is sharded by the launcher: transformers + PEFT on a 16-bit base, the combination those launchers
    shard; Unsloth and the 4-bit base are for one GPU and for DDP (multi_gpu.yaml).
    """
    if not cuda_available():
        return Backend("cpu", "cpu", False, "fp32",
                       "no CUDA device: transformers + PEFT in fp32, no quantization")
    precision, precision_note = gpu_precision(precision)
    sharded = sharded_launcher()
    if sharded:
        return Backend("transformers+peft", "cuda", False, precision,
                       f"CUDA under {sharded}: the launcher shards a 16-bit base (no Unsloth, no 4-bit)"
                       + precision_note)
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if model_cfg.use_unsloth and has_unsloth:
        return Backend("unsloth", "cuda", model_cfg.load_in_4bit, precision,
                       "CUDA and Unsloth are installed" + precision_note)
    why = "Unsloth disabled in the preset" if not model_cfg.use_unsloth else "Unsloth is not installed"
    four_bit = model_cfg.load_in_4bit and has_bnb
    if model_cfg.load_in_4bit and not has_bnb:
        why += "; bitsandbytes missing, so the base stays 16-bit"
    return Backend("transformers+peft", "cuda", four_bit, precision, f"CUDA; {why}{precision_note}")


def resolve_model_path(name_or_path: str, log=print) -> str:
    """'tiny' → the cached embedded model; 'random:<shape>?layers=N' → a cached random-weight Qwen3 with real
    shapes and Qwen3's tokenizer (random_weights.py); 'gguf-package:<name>' → the safetensors folder converted
    once from a GGUF shipped as a pip package (packaged.py). Built on first use; anything else as is."""
    name_or_path = str(name_or_path)
    if name_or_path == TINY_MODEL:
        from .tiny import ensure_tiny

        return str(ensure_tiny(log=log))
    from .random_weights import ensure_random_model, is_random_spec

    if is_random_spec(name_or_path):
        return str(ensure_random_model(name_or_path, log=log))
    from .packaged import PACKAGE_SCHEME, ensure_packaged

    if name_or_path.startswith(PACKAGE_SCHEME):
        return str(ensure_packaged(name_or_path[len(PACKAGE_SCHEME):], log=log))
    return name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token different from the end-of-turn token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path),
                                              trust_remote_code=trust_remote_code)
    profile = family_of(tokenizer)
    if tokenizer.pad_token is None or tokenizer.pad_token == profile.end_of_turn:
        # Padding with the end token would teach the model that the end token is noise: it would never stop.
        tokenizer.pad_token = profile.pad
    return tokenizer


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_causal_lm(name_or_path: str, device: str = "cpu", precision: str = "fp32",
                   trust_remote_code: bool = False):
    """A model for inference (no adapters, no quantization), in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=torch_dtype(precision),
        trust_remote_code=trust_remote_code, use_safetensors=True,
    )
    if device == "cuda":  # in N processes, each on its own GPU
        device = f"cuda:{local_process_index()}"
    return model.to(device).eval()


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the family's end-of-turn token and its document-end token."""
    return _family_stop_ids(tokenizer)


def sampling_kwargs(sampling: SamplingConfig, repetition_penalty: float | None = None) -> dict:
    """generate() arguments that spell out every sampling knob.

    Each one is passed explicitly, also when it is "off": a value left out is taken from the model's
    generation_config.json, and Qwen3 ships top_k=20 there, so "top_k: 0" in a preset would silently
    become 20 (and T = 1.5 rejected answers would come out far less varied than the preset says).
    """
    penalty = repetition_penalty or sampling.repetition_penalty
    if sampling.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None,
                "repetition_penalty": penalty, "max_new_tokens": sampling.max_new_tokens}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k, "min_p": sampling.min_p or None,
            "repetition_penalty": penalty, "max_new_tokens": sampling.max_new_tokens}


def length_sorted_batches(prompts: list[list[int]], batch_size: int, max_new_tokens: int = 0,
                          token_budget: int | None = None) -> list[list[int]]:
    """Indices of the token-id prompts, shortest first, cut into batches.

    Without a budget every batch holds `batch_size` rows. With `token_budget` a batch holds as many rows as
    keep rows x (its longest prompt + max_new_tokens) within the budget (the batch's largest KV cache), so
    short prompts share bigger batches; a prompt longer than the budget still gets a batch of its own.
    Equal lengths are ordered by their token ids, so the batches depend on the set of prompts, not their order.
    """
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    if token_budget is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = [[]]
    for index in order:  # ascending, so the prompt being added is the longest of its batch
        if batches[-1] and (len(batches[-1]) + 1) * (len(prompts[index]) + max_new_tokens) > token_budget:
            batches.append([])
        batches[-1].append(index)
    return [batch for batch in batches if batch]


def generate(model, tokenizer, conversations: list[list[dict]], sampling: SamplingConfig,
             repetition_penalty: float | None = None, progress: bool = True, desc: str = "generating",
             token_budget: int | None = None) -> list[dict]:
    """Answer each conversation (a list of prompt messages) with seeded, batched, left-padded sampling.

    Prompts are bucketed by length so a batch holds prompts of similar size (less padding); results
    come back in the input order. Each result: text, ended_on_eos, new_tokens. `token_budget` cuts the
    batches by tokens instead of rows (length_sorted_batches; bench/README.md, "Generation options").
    In N processes (accelerate) each one samples a share of the batches, each batch with the seed of its
    number, so the answers are those one process would sample (on the same kind of device).
    """
    import torch
    from tqdm.auto import tqdm

    # message text stays text: a question or answer holding "<|im_end|>" cannot end its turn (chat.encode_messages)
    prompts = [encode_messages(tokenizer, messages) for messages in conversations]
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    batches = length_sorted_batches(prompts, sampling.batch_size, sampling.max_new_tokens, token_budget)

    def sample(numbered: list[tuple[int, list[int]]]) -> list[list[dict]]:
        answers = []
        for number, batch in tqdm(numbered, desc=desc, disable=not progress or not is_main_process()):
            encoded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, padding=True,
                                    return_tensors="pt").to(device)
            torch.manual_seed(sampling.seed + number)  # each batch reproducible on its own
            with torch.no_grad():
                output = model.generate(
                    **encoded, **sampling_kwargs(sampling, repetition_penalty),
                    eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                )
            answers.append([finished_answer(tokenizer, ids, stops)
                            for ids in output[:, encoded["input_ids"].shape[1]:].tolist()])
        return answers

    results: list[dict | None] = [None] * len(prompts)
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for batch, answers in zip(batches, map_in_order(sample, list(enumerate(batches)))):
            for index, answer in zip(batch, answers):
                results[index] = answer
    finally:
        tokenizer.padding_side = previous_side
    return results  # type: ignore[return-value]


def finished_answer(tokenizer, ids: list[int], stops: list[int]) -> dict:
    """A generated row as text, cut at its first stop token: text, ended_on_eos, new_tokens."""
    ended = any(t in stops for t in ids)
    if ended:
        ids = ids[: min(ids.index(t) for t in stops if t in ids)]
    return {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(), "ended_on_eos": ended,
            "new_tokens": len(ids)}


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, resident-set peak on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def free_memory() -> None:
    """Give memory back after a model is deleted (Python garbage, then the CUDA cache)."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Timer:
    """Wall time of a phase: `with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def model_dir_ok(path: Path) -> bool:
    return (Path(path) / "config.json").exists() and any(Path(path).glob("*.safetensors"))


# --- Training-time loading (CUDA-only imports stay inside these functions, after the backend check) ---

def import_unsloth():
    """Import Unsloth; it patches transformers, TRL and PEFT, so it must come before them."""
    import sys
    import warnings

    late = [name for name in ("transformers", "trl", "peft") if name in sys.modules]
    if late:
        warnings.warn(f"Unsloth is imported after {late}: some of its speed-ups may not apply. Restart the "
                      "kernel and run the notebook from the top so the backend cell runs first.")
    import unsloth

    return unsloth


def patch_unsloth_dpo() -> None:
    """Unsloth's DPO patch, applied before TRL's DPOTrainer is imported.

    In Unsloth 2026.10.9 PatchDPOTrainer() is kept for old scripts and does nothing: importing Unsloth already
    rewrote TRL's trainers (PatchFastRL runs when unsloth.models loads). Calling it keeps older releases, where
    the patch was a real step, on their fast path too.
    """
    from unsloth import PatchDPOTrainer

    PatchDPOTrainer()


def four_bit_config(precision: str):
    """bitsandbytes NF4 settings of QLoRA: 4-bit storage, 16-bit compute, quantized quantization constants."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(precision))


def load_training_base(name_or_path: str, backend: Backend, max_length: int, trust_remote_code: bool = False,
                       gradient_checkpointing: bool = True):
    """The base model to put a LoRA on, as the backend wants it.

    cpu: fp32, no quantization. transformers+peft: 16-bit on the GPU, or 4-bit through bitsandbytes when the
    backend says so. unsloth: Unsloth's loader (4-bit when asked); attach its adapter with add_unsloth_lora.
    """
    path = resolve_model_path(name_or_path)
    if backend.name == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=max_length, dtype=torch_dtype(backend.precision),
            load_in_4bit=backend.load_in_4bit, trust_remote_code=trust_remote_code)
        return model
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch_dtype(backend.precision), "trust_remote_code": trust_remote_code,
              "use_safetensors": True}
    if backend.device == "cuda":
        if sharded_launcher() is None:  # DeepSpeed and FSDP place the shards themselves
            kwargs["device_map"] = {"": local_process_index()}  # each DDP process on its own GPU (0 with one)
        if backend.load_in_4bit:
            kwargs["quantization_config"] = four_bit_config(backend.precision)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if backend.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # norms in fp32 and input gradients on, so the adapter learns through the frozen 4-bit layers
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def add_unsloth_lora(model, r: int, alpha: int, dropout: float, target_modules: list, seed: int,
                     gradient_checkpointing: bool = True):
    """Attach a LoRA adapter the Unsloth way (its fused kernels need its own wrapper)."""
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False, random_state=seed)
