"""The embedded default model: a byte-level BPE tokenizer and a small Qwen3, built here from the
project's own corpus, deterministically from a seed, and cached until the recipe changes.

Why: no model hub is reachable at run time, yet every phase must run for real. The tiny model has
the Qwen3 architecture, Qwen's special tokens and a chat template that renders Qwen3's
non-thinking format, so the code that trains and exports it is the code that handles Qwen3-0.6B.
Its hidden, intermediate and heads x head_dim sizes are multiples of 256 so that llama.cpp's
K-quants (Q4_K_M) really apply instead of silently falling back to other formats.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..family import QWEN2_SPLIT, QWEN3, TEMPLATES_DIR
from ..io import sha256_file, sha256_text, write_json
from ..paths import DATA_DIR, cache_dir

TURN_START = QWEN3.turn_start.split("{role}")[0]  # <|im_start|>
SPECIAL_TOKENS = [QWEN3.pad, TURN_START, QWEN3.end_of_turn]
THINK_TOKENS = ["<think>", "</think>"]
TEMPLATE_PATH = TEMPLATES_DIR / QWEN3.template
CORPUS_FILES = ("support_corpus.jsonl", "fall_risk_corpus_a.jsonl", "fall_risk_corpus_b.jsonl")
RECIPE_VERSION = 1  # bump when the build code changes in a way the fields below don't capture


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model; its hash names the cache folder."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 1024
    block_size: int = 128
    batch_size: int = 16
    pretrain_steps: int = 150
    learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 256:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of 256 for K-quants")
        if (self.num_attention_heads * self.head_dim) % 256:
            raise ValueError("num_attention_heads * head_dim must be a multiple of 256 for K-quants")


def corpus_paths(data_dir: Path = DATA_DIR) -> list[Path]:
    paths = [data_dir / name for name in CORPUS_FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the tiny model is built from the shipped corpus, but {missing} is missing")
    return paths


def corpus_texts(paths: list[Path]) -> list[str]:
    """Plain 'question, blank line, answer' documents: the base model learns English from them,
    not the chat format (that is what SFT teaches it)."""
    texts = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("Context") and row.get("Response"):
                    texts.append(f"{row['Context'].strip()}\n\n{row['Response'].strip()}")
    return texts


def recipe_hash(recipe: TinyRecipe, paths: list[Path]) -> str:
    parts = [json.dumps(asdict(recipe), sort_keys=True), str(RECIPE_VERSION), TEMPLATE_PATH.read_text()]
    parts += [sha256_file(p) for p in paths]
    return sha256_text(*parts)[:12]


def build_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE with Qwen2's pre-tokenizer split and wrap it for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=QWEN3.end_of_turn,
        pad_token=QWEN3.pad,
        additional_special_tokens=[TURN_START, QWEN3.end_of_turn],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    # Qwen3 keeps the think markers as ordinary added tokens (not skipped when decoding), so a leak stays visible.
    wrapped.add_tokens(THINK_TOKENS, special_tokens=False)
    wrapped.chat_template = TEMPLATE_PATH.read_text()
    return wrapped


def build_model(tokenizer, recipe: TinyRecipe):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(recipe.seed)
    end_id = tokenizer.convert_tokens_to_ids(QWEN3.end_of_turn)
    pad_id = tokenizer.convert_tokens_to_ids(QWEN3.pad)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=end_id,
        pad_token_id=pad_id,
    )
    model = Qwen3ForCausalLM(config)
    # Qwen's non-thinking sampling advice, stored with the model as Qwen does.
    advice = QWEN3.sampling
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=advice["temperature"], top_p=advice["top_p"], top_k=advice["top_k"],
        eos_token_id=[end_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id,
    )
    return model


def pack_blocks(tokenizer, texts: list[str], block_size: int) -> "torch.Tensor":
    """Concatenate documents (separated by the document-end token) and cut them into equal blocks."""
    import torch

    sep = tokenizer.convert_tokens_to_ids(QWEN3.pad)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(sep)
    n_blocks = len(ids) // block_size
    return torch.tensor(ids[: n_blocks * block_size]).view(n_blocks, block_size)


def pretrain(model, blocks, recipe: TinyRecipe, log=print) -> list[float]:
    """A short causal-LM pre-training so the base model writes words, not noise."""
    import torch

    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    warmup = max(1, recipe.pretrain_steps // 20)

    def lr_at(step):  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    for step in range(recipe.pretrain_steps):
        index = torch.randint(len(blocks), (recipe.batch_size,), generator=generator)
        batch = blocks[index]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 25 == 0 or step == recipe.pretrain_steps - 1:
            log(f"  pre-train step {step + 1}/{recipe.pretrain_steps}: loss {loss.item():.3f}")
    model.eval()
    return losses


def build_tiny(out_dir: Path, recipe: TinyRecipe = TinyRecipe(), data_dir: Path = DATA_DIR, log=print) -> Path:
    """Build tokenizer + pre-trained tiny Qwen3 into out_dir (safetensors). Returns out_dir."""
    import torch

    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    texts = corpus_texts(corpus_paths(data_dir))
    started = time.time()
    tokenizer = build_tokenizer(texts, recipe.vocab_size)
    model = build_model(tokenizer, recipe)
    blocks = pack_blocks(tokenizer, texts, recipe.block_size)
    log(f"tiny model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{len(tokenizer)} tokens in the vocabulary, {blocks.numel():,} corpus tokens")
    losses = pretrain(model, blocks, recipe, log=log)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "tiny_recipe.json", {
        "recipe": asdict(recipe), "pretrain_loss_first": losses[0], "pretrain_loss_last": losses[-1],
        "seconds": round(time.time() - started, 1), "corpus_documents": len(texts),
    })
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # the finished folder appears at once: a crash leaves only *.tmp behind
    return out_dir


def ensure_tiny(recipe: TinyRecipe = TinyRecipe(), data_dir: Path = DATA_DIR, log=print) -> Path:
    """Path of the cached tiny model, building it first when its recipe (or corpus) changed."""
    key = recipe_hash(recipe, corpus_paths(data_dir))
    path = cache_dir("tiny") / f"tiny-qwen3-{key}"
    if not (path / "model.safetensors").exists():
        log(f"building the embedded tiny model into {path} (recipe {key}) …")
        build_tiny(path, recipe, data_dir, log=log)
    return path
