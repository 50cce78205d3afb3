"""Chat formatting: every phase renders conversations with the model's own template, non-thinking."""

from __future__ import annotations

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


def tokenize_prompt_completion(tokenizer, prompt: list[dict], answer: str, max_length: int | None = None) -> dict:
    """input_ids and completion_mask for one training example.

    The prompt part is tokenized from exactly the text used at inference (render_prompt), and the
    mask marks the answer and its end-of-turn token, nothing else: the model is trained to write
    the answer and to stop, never to reproduce the question or the template.
    """
    prompt_text, completion_text = render_training_text(tokenizer, prompt, answer)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt_text + completion_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the tokenized prompt is not a prefix of prompt+answer; the answer would be "
                         f"trained on a different context than inference uses: {prompt_text[-60:]!r}")
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
