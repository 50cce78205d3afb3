"""The embedded model: Qwen3 chat format, special tokens, K-quant-friendly sizes, determinism."""

import json

import pytest

from empathy_workbook.chat import (mark_trained_tokens, prompt_messages, render_prompt, strip_think,
                                   tokenize_prompt_completion)
from empathy_workbook.tiny import TinyRecipe, build_model, build_tokenizer, corpus_paths, corpus_texts

# Qwen3's non-thinking rendering of a two-turn chat, written out from its documented format.
EXPECTED = (
    "<|im_start|>system\nBe kind.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nI fell.<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nCall a doctor.<|im_end|>\n"
)


def test_template_renders_qwen3_non_thinking_format(tokenizer):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "I fell."},
                {"role": "assistant", "content": "Call a doctor."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == EXPECTED


def test_generation_prompt_ends_with_empty_think_block(tokenizer):
    text = render_prompt(tokenizer, prompt_messages("Be kind.", "I fell."))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = tokenizer.apply_chat_template(prompt_messages("Be kind.", "I fell."), tokenize=False,
                                             add_generation_prompt=True)
    assert thinking.endswith("<|im_start|>assistant\n")  # default (thinking) mode, as Qwen3 does


def test_training_prompt_is_the_inference_prompt_byte_for_byte(tokenizer):
    messages = prompt_messages("Be kind.", "I fell.")
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "Call a doctor."}],
                                         tokenize=False)
    inference = render_prompt(tokenizer, messages)
    assert full.startswith(inference)
    assert full[len(inference):] == "Call a doctor.<|im_end|>\n"


def test_completion_mask_is_the_answer_plus_end_token(tokenizer):
    messages = prompt_messages("Be kind.", "I fell last night.")
    encoded = tokenize_prompt_completion(tokenizer, messages, "Please call your doctor today.")
    trained = [t for t, m in zip(encoded["input_ids"], encoded["completion_mask"]) if m]
    assert tokenizer.decode(trained, skip_special_tokens=False) == "Please call your doctor today.<|im_end|>"
    assert trained[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "⟦Please call your doctor today.<|im_end|>⟧" in mark_trained_tokens(
        tokenizer, encoded["input_ids"], encoded["completion_mask"])


def test_special_tokens_follow_qwen(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    assert "<think>" in tokenizer.decode(tokenizer("<think>x</think>")["input_ids"], skip_special_tokens=True)


def test_tiny_model_sizes_allow_k_quants(tiny_path):
    config = json.loads((tiny_path_path := __import__("pathlib").Path(tiny_path) / "config.json").read_text())
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


def test_strip_think_removes_leaked_reasoning():
    assert strip_think("<think>hmm</think>\n\nHello") == "Hello"
