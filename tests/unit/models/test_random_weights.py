"""models/random_weights.py: the rehearsal's random-weight models, from spec to a cached folder."""

import pytest

from empathy_workbook.models import random_weights


@pytest.mark.parametrize("spec, expected", [
    ("random:qwen3-0.6b?layers=2", random_weights.RandomModelSpec("qwen3-0.6b", 2, 0)),
    ("random:qwen3-4b?layers=1&seed=3", random_weights.RandomModelSpec("qwen3-4b", 1, 3)),
    ("random:qwen3-0.6b", random_weights.RandomModelSpec("qwen3-0.6b", 2, 0)),
])
def test_random_specs_parse(spec, expected):
    assert random_weights.parse_random_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("random:qwen9", "unknown shape"), ("random:qwen3-0.6b?layer=2", "unknown option"),
    ("random:qwen3-0.6b?layers=two", "whole numbers"), ("random:qwen3-0.6b?layers=99", "layers=99"),
])
def test_bad_random_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        random_weights.parse_random_spec(spec)


def test_cache_key_follows_the_spec_and_the_tokenizer_content(tmp_path):
    real = random_weights.qwen3_tokenizer_dir()
    a = random_weights.random_model_key(random_weights.parse_random_spec("random:qwen3-0.6b?layers=2"), real)
    b = random_weights.random_model_key(random_weights.parse_random_spec("random:qwen3-0.6b?layers=3"), real)
    copy = tmp_path / "tok"
    copy.mkdir()
    for f in real.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert a == random_weights.random_model_key(random_weights.parse_random_spec("random:qwen3-0.6b?layers=2"), copy)
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + " ")
    c = random_weights.random_model_key(random_weights.parse_random_spec("random:qwen3-0.6b?layers=2"), copy)
    assert len({a, b, c}) == 3


@pytest.mark.slow
def test_a_random_model_has_real_shapes_and_the_real_tokenizer():
    from transformers import AutoConfig, AutoTokenizer

    from empathy_workbook.models.loading import resolve_model_path

    folder = resolve_model_path("random:qwen3-0.6b?layers=2")
    config = AutoConfig.from_pretrained(folder)
    shape = random_weights.QWEN3_SHAPES["qwen3-0.6b"]
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.num_hidden_layers, config.vocab_size) == (
        shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"],
        shape["num_key_value_heads"], shape["head_dim"], 2, random_weights.QWEN3_VOCAB_SIZE)
    assert str(config.dtype).endswith("bfloat16")  # saved as Qwen publishes Qwen3, so merges stay bf16 as well
    ours = AutoTokenizer.from_pretrained(folder)
    real = AutoTokenizer.from_pretrained(str(random_weights.qwen3_tokenizer_dir()))
    assert ours.get_vocab() == real.get_vocab() and ours.chat_template == real.chat_template
    assert resolve_model_path("random:qwen3-0.6b?layers=2") == folder  # cached: built once
