"""models/tiny.py: the embedded model: Qwen3's special tokens, K-quant-friendly sizes, a deterministic build."""

import json
from pathlib import Path

import pytest

from empathy_workbook.models.tiny import TinyRecipe, build_model, build_tokenizer, corpus_paths, corpus_texts


def test_special_tokens_follow_qwen(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    assert "<think>" in tokenizer.decode(tokenizer("<think>x</think>")["input_ids"], skip_special_tokens=True)


def test_tiny_model_sizes_allow_k_quants(tiny_path):
    config = json.loads((tiny_path_path := Path(tiny_path) / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    for key in ("hidden_size", "intermediate_size"):
        assert config[key] % 256 == 0
    assert (config["num_attention_heads"] * config["head_dim"]) % 256 == 0
    assert list(tiny_path_path.parent.glob("*.safetensors"))
    assert not list(tiny_path_path.parent.glob("*.bin"))


def test_recipe_rejects_sizes_that_break_k_quants():
    with pytest.raises(ValueError, match="multiple of 256"):
        TinyRecipe(hidden_size=192)


def test_build_is_deterministic():
    texts = corpus_texts(corpus_paths())[:60]
    recipe = TinyRecipe(vocab_size=400, num_hidden_layers=1, pretrain_steps=0)
    tok_a, tok_b = build_tokenizer(texts, 400), build_tokenizer(texts, 400)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    model_a, model_b = build_model(tok_a, recipe), build_model(tok_b, recipe)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert (a == b).all(), name


def test_tokenizer_round_trips_text(tokenizer):
    text = "I'm scared of the stairs at night — it's 3 a.m. and I can't sleep.\n\nWhat should I do?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
