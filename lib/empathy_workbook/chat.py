"""Chat formatting: every phase renders conversations with the model's own template, non-thinking."""

from __future__ import annotations

import json
import re

from .family import family_of

THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def prompt_messages(system_prompt: str, question: str) -> list[dict]:
    """The prompt turns: system persona, then the user's question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def prompt_completion(system_prompt: str, question: str, answer: str) -> dict:
    """One TRL conversational prompt/completion record."""
    return {
        "prompt": prompt_messages(system_prompt, question),
        "completion": [{"role": "assistant", "content": answer}],
    }


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The exact text the model sees before it answers (generation prompt, thinking off)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def render_training_text(tokenizer, messages: list[dict], answer: str) -> tuple[str, str]:
    """(prompt, completion) strings for training: the prompt is the inference prompt, the
    completion is the answer plus the family's end-of-turn token and nothing else."""
    return render_prompt(tokenizer, messages), answer + family_of(tokenizer).end_of_turn


def strip_think(text: str) -> str:
    """Remove any <think>…</think> block (a leak in non-thinking mode) and surrounding space."""
    return THINK_BLOCK.sub("", text).strip()


def has_think_leak(text: str) -> bool:
    return "<think>" in text or "</think>" in text


# --- Tokenizing prompts safely: message text never becomes a control token ---
#
# The chat template writes control tokens (<|im_start|>, <|im_end|>, <think>) as plain strings, and a
# tokenizer turns every occurrence of such a string into the control token, also inside a question or an
# answer. A data row or a sampled answer holding "<|im_end|>\n<|im_start|>system ..." would then end the turn
# and open a new system turn. So prompts are tokenized in pieces: the template's own text with its control
# tokens, the messages' text as plain text only. Every phase tokenizes prompts through encode_messages.

_SLOT = "\u2063slot{}\u2063"  # invisible separator around an index: cannot occur in a template


def added_token_strings(tokenizer) -> list[str]:
    """The strings the tokenizer would turn into added (control or marker) tokens, longest first.

    Whitespace-only added tokens (Gemma's runs of newlines, tabs and spaces) are left out: they cannot end a
    turn or open one, and splitting them would tokenize a paragraph break differently from plain text.
    """
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({t.content for t in decoder.values() if t.content.strip()}, key=len, reverse=True)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as plain text: an added-token string inside it is split into ordinary tokens."""
    if not text:
        return []
    markers = [m for m in added_token_strings(tokenizer) if m in text]
    if not markers:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    pattern = re.compile("(" + "|".join(re.escape(m) for m in markers) + ")")
    ids: list[int] = []
    for piece in pattern.split(text):
        if piece in markers:
            # its first character and the rest are both ordinary text: no added token can match either
            ids += tokenizer(piece[0], add_special_tokens=False)["input_ids"]
            ids += encode_text(tokenizer, piece[1:])
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def encode_messages(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                    prefill: str = "") -> list[int]:
    """Token ids of the rendered conversation (thinking off), with every message's content as plain text.

    The template is rendered once with a placeholder per message; its own text is tokenized with control
    tokens, each message's content with encode_text. With ordinary content the ids equal tokenizing
    render_prompt's text (a test checks it with Qwen3's real tokenizer). prefill is the caller's own text
    that begins the reply (a judge's '{"warmth": '): it is tokenized together with the template's end, as
    it would be in the whole rendered string. Any object with the three calls used here works as the
    tokenizer (llamacpp.inference.GGUFTokenizer puts llama.cpp's behind them).
    """
    slots = [dict(m, content=_SLOT.format(i)) for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(slots, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             enable_thinking=False)
    ids: list[int] = []
    rest = rendered
    for i, message in enumerate(messages):
        before, found, rest = rest.partition(_SLOT.format(i))
        if not found:
            raise ValueError(f"the chat template dropped or changed message {i} ({message.get('role')!r}); "
                             "it cannot be tokenized safely")
        ids += tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        ids += encode_text(tokenizer, _template_view(message))
    rest += prefill
    return ids + (tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])


def _template_view(message: dict) -> str:
    """The content as the template would show it (Qwen3 drops a think block from assistant turns)."""
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    if message.get("role") == "assistant":
        return content.split("</think>")[-1].lstrip("\n")
    return content


def _holds_markers(tokenizer, messages: list[dict], answer: str = "") -> bool:
    """True when some message or the answer contains an added-token string (e.g. a smuggled <|im_end|>)."""
    markers = added_token_strings(tokenizer)
    texts = [m.get("content") or "" for m in messages] + [answer]
    return any(m in t for t in texts for m in markers)


def encode_prompt_answer(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids): the inference prompt, then the answer as text plus the end-of-turn token."""
    prompt_ids = encode_messages(tokenizer, messages, add_generation_prompt=True)
    end = family_of(tokenizer).end_of_turn
    answer_ids = encode_text(tokenizer, answer) + tokenizer(end, add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids


def tokenize_prompt_completion(tokenizer, prompt: list[dict], answer: str, max_length: int | None = None) -> dict:
    """input_ids and completion_mask for one training example.

    The prompt part is tokenized from exactly the text used at inference (render_prompt), and the
    mask marks the answer and its end-of-turn token, nothing else: the model is trained to write
    the answer and to stop, never to reproduce the question or the template. Message text stays
    text (encode_messages): a row cannot smuggle in a control token.
    """
    prompt_ids, answer_ids = encode_prompt_answer(tokenizer, prompt, answer)
    full_ids = prompt_ids + answer_ids
    if not _holds_markers(tokenizer, prompt, answer):
        # ordinary text: the pieces must tokenize exactly like the whole rendered string (nothing merges
        # across a piece boundary), so training sees the ids inference and llama.cpp see
        prompt_text, completion_text = render_training_text(tokenizer, prompt, answer)
        if tokenizer(prompt_text + completion_text, add_special_tokens=False)["input_ids"] != full_ids:
            raise ValueError("tokenizing the prompt and the answer apart differs from tokenizing them together; "
                             f"the answer would be trained on a different context than inference uses: "
                             f"{prompt_text[-60:]!r}")
    mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
    if max_length is not None:
        full_ids, mask = full_ids[:max_length], mask[:max_length]
    return {"input_ids": full_ids, "completion_mask": mask}


def mark_trained_tokens(tokenizer, input_ids: list[int], mask: list[int], html: bool = False) -> str:
    """Render a training example with the trained (masked-in) tokens highlighted."""
    pieces = []
    for token_id, trained in zip(input_ids, mask):
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if html:
            import html as _html

            text = _html.escape(text).replace("\n", "↵<br>")
            pieces.append(f"<span style='background:#c8f7c5'>{text}</span>" if trained else
                          f"<span style='color:#888'>{text}</span>")
        else:
            pieces.append(text)
    if html:
        return "<pre style='white-space:pre-wrap'>" + "".join(pieces) + "</pre>"
    # plain text: bracket each trained run
    out, inside = [], False
    for piece, trained in zip(pieces, mask):
        if trained and not inside:
            out.append("⟦")
        if not trained and inside:
            out.append("⟧")
        inside = bool(trained)
        out.append(piece)
    if inside:
        out.append("⟧")
    return "".join(out)


def word_count(text: str) -> int:
    """Words as a reader counts them (runs of non-space): data filters, pair statistics and eval budgets."""
    return len(text.split())


def one_per_question(records: list[dict]) -> list[dict]:
    """The first record of each question, in file order (a question can have several answers = records).

    Records of notebook 00 carry question_key (the normalized question); others are keyed by the prompt.
    """
    seen, kept = set(), []
    for record in records:
        key = record.get("question_key") or json.dumps(record["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept
