"""chat.py and family.py: each family's chat format (Qwen3, Gemma 3, ChatML), training and inference prompts
rendered alike, and a tokenizer or template matched to exactly one family."""

import pytest

from empathy_workbook.chat import (encode_messages, encode_text, mark_trained_tokens, prompt_messages, render_prompt,
                                   strip_think, tokenize_prompt_completion)
from empathy_workbook.family import CHATML, GEMMA3, PROFILES, QWEN3, family_of, family_of_template, matching_profiles

# One two-turn chat with a system prompt, rendered below in each family's format.
TWO_TURN_CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "I fell."},
                 {"role": "assistant", "content": "Call a doctor."}]

# Qwen3's non-thinking rendering of that chat, written out from its documented format.
EXPECTED = (
    "<|im_start|>system\nBe kind.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nI fell.<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nCall a doctor.<|im_end|>\n"
)


def test_template_renders_qwen3_non_thinking_format(tokenizer):
    assert tokenizer.apply_chat_template(TWO_TURN_CHAT, tokenize=False) == EXPECTED


def test_generation_prompt_ends_with_empty_think_block(tokenizer):
    text = render_prompt(tokenizer, prompt_messages("Be kind.", "I fell."))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Unlike Qwen3's own template, the project's is non-thinking with the flag left out (llama.rn then sends
    # enable_thinking=true) and even with enable_thinking=true: the model never learnt to think
    for kwargs in ({}, {"enable_thinking": True}):
        unflagged = tokenizer.apply_chat_template(prompt_messages("Be kind.", "I fell."), tokenize=False,
                                                  add_generation_prompt=True, **kwargs)
        assert unflagged == text


def test_training_prompt_is_the_inference_prompt_byte_for_byte(chat_tokenizer):
    end = family_of(chat_tokenizer).end_of_turn
    messages = prompt_messages("Be kind.", "I fell.")
    full = chat_tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "Call a doctor."}],
                                              tokenize=False)
    inference = render_prompt(chat_tokenizer, messages)
    assert full.startswith(inference)
    assert full[len(inference):] == f"Call a doctor.{end}\n"


def test_completion_mask_is_the_answer_plus_end_token(chat_tokenizer):
    end = family_of(chat_tokenizer).end_of_turn
    messages = prompt_messages("Be kind.", "I fell last night.")
    encoded = tokenize_prompt_completion(chat_tokenizer, messages, "Please call your doctor today.")
    trained = [t for t, m in zip(encoded["input_ids"], encoded["completion_mask"]) if m]
    assert chat_tokenizer.decode(trained, skip_special_tokens=False) == f"Please call your doctor today.{end}"
    assert trained[-1] == chat_tokenizer.convert_tokens_to_ids(end)
    assert encoded["completion_mask"][0] == 0 and sum(encoded["completion_mask"]) == len(trained)
    assert f"⟦Please call your doctor today.{end}⟧" in mark_trained_tokens(
        chat_tokenizer, encoded["input_ids"], encoded["completion_mask"])


def test_whitespace_in_message_text_tokenizes_as_plain_text(chat_tokenizer):
    # Gemma's added tokens include runs of newlines and tabs: they cannot end a turn, so they stay whole
    question, answer = "I fell.\n\nWhat now?", "I'm sorry.\n\nYou could:\n\t\t- ask your doctor  about a class."
    messages = prompt_messages("Be kind.", question)
    plain = chat_tokenizer(render_prompt(chat_tokenizer, messages), add_special_tokens=False)["input_ids"]
    assert encode_messages(chat_tokenizer, messages) == plain
    assert encode_text(chat_tokenizer, answer) == chat_tokenizer(answer, add_special_tokens=False)["input_ids"]


def test_family_is_read_from_the_tokenizer(chat_tokenizer):
    profile = family_of(chat_tokenizer)
    assert profile in PROFILES
    assert chat_tokenizer.pad_token == profile.pad != profile.end_of_turn
    assert render_prompt(chat_tokenizer, prompt_messages("Be kind.", "Hi")).endswith(
        profile.generation_prompt + ("<think>\n\n</think>\n\n" if profile.think_block else ""))


# Gemma 3's rendering of the same chat, written out from its documented turn format: <bos> first, no
# system role (the system text opens the first user turn), the assistant's role is "model".
EXPECTED_GEMMA = (
    "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n"
    "<start_of_turn>model\nHello.<end_of_turn>\n"
    "<start_of_turn>user\nI fell.<end_of_turn>\n"
    "<start_of_turn>model\nCall a doctor.<end_of_turn>\n"
)


def test_gemma_template_renders_gemma3_turns(gemma_tokenizer):
    assert gemma_tokenizer.apply_chat_template(TWO_TURN_CHAT, tokenize=False) == EXPECTED_GEMMA
    prompt = render_prompt(gemma_tokenizer, prompt_messages("", "I fell."))
    assert prompt == "<bos><start_of_turn>user\nI fell.<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_special_tokens(gemma_tokenizer):
    ids = {t: gemma_tokenizer.convert_tokens_to_ids(t)
           for t in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")}
    assert ids == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106}
    text = render_prompt(gemma_tokenizer, prompt_messages("Be kind.", "I fell."))
    encoded = gemma_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoded[0] == 2 and encoded.count(2) == 1  # exactly one <bos>, from the template
    assert encoded[-3] == 105 and gemma_tokenizer.decode(encoded[-2:]) == "model\n"  # the generation prompt


def test_strip_think_removes_leaked_reasoning():
    assert strip_think("<think>hmm</think>\n\nHello") == "Hello"


# ChatML without a think block (SmolLM2-Instruct): the same turns as Qwen3, no think block in the last answer.
EXPECTED_CHATML = (
    "<|im_start|>system\nBe kind.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nI fell.<|im_end|>\n"
    "<|im_start|>assistant\nCall a doctor.<|im_end|>\n"
)


def test_chatml_template_renders_smollm2_turns_without_a_think_block(smollm_tokenizer):
    assert smollm_tokenizer.apply_chat_template(TWO_TURN_CHAT, tokenize=False) == EXPECTED_CHATML
    assert render_prompt(smollm_tokenizer, prompt_messages("Be kind.", "I fell.")).endswith(
        "I fell.<|im_end|>\n<|im_start|>assistant\n")


def test_chatml_template_adds_no_system_prompt_of_its_own(smollm_tokenizer):
    """SmolLM2's own template writes "You are a helpful AI assistant named SmolLM ..." into a chat without a system
    message; this project's template renders exactly the messages given."""
    text = smollm_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert CHATML.default_system not in text


def test_smollm2_pad_token_is_not_its_end_of_turn_token(smollm_tokenizer):
    """The GGUF's own tokenizer pads with <|im_end|>: padding with the end token would teach the model to ignore it."""
    assert smollm_tokenizer.pad_token == "<|endoftext|>" and smollm_tokenizer.eos_token == "<|im_end|>"
    assert smollm_tokenizer.pad_token_id != smollm_tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("family, model_type", [("qwen3", "qwen3"), ("gemma3", "gemma3_text"), ("chatml", "llama")])
def test_each_family_fits_exactly_one_profile(request, family, model_type):
    """Qwen3 and SmolLM2 share <|im_start|>, <|im_end|> and <|endoftext|>: tokens alone would fit both."""
    tok = request.getfixturevalue({"qwen3": "tokenizer", "gemma3": "gemma_tokenizer", "chatml": "smollm_tokenizer"}[family])
    assert [p.name for p in matching_profiles(tok)] == [family]
    assert [p.name for p in matching_profiles(tok, model_type)] == [family]
    assert matching_profiles(tok, "mistral") == []  # a model type of no family: no profile, never a guess


def test_a_template_names_its_family():
    assert family_of_template(QWEN3.template_text()) is QWEN3
    assert family_of_template(CHATML.template_text()) is CHATML
    assert family_of_template(GEMMA3.template_text()) is GEMMA3
