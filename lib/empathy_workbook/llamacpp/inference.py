"""llama.cpp through llama-cpp-python: the one place that opens GGUF files for inference.

Export checks, the evaluation, the chat box and the llama_cpp judge all load models here, so thread
count, context size and log level are chosen the same way everywhere.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace


def threads(n_threads: int) -> int:
    """n_threads when set, else every core (llama.cpp's own default is fewer)."""
    return n_threads if n_threads > 0 else (os.cpu_count() or 1)


def quiet() -> None:
    """llama.cpp logs every tensor while quantizing or loading; keep errors only."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def open_llama(path: Path, n_ctx: int, n_threads: int, logits_all: bool = False, n_batch: int | None = None,
               **kwargs):
    """A quiet llama_cpp.Llama over a GGUF file with n_ctx positions (prompt batch n_batch, default up to 512)."""
    import llama_cpp

    quiet()
    count = threads(n_threads)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_batch or min(n_ctx, 512), n_threads=count,
                           n_threads_batch=count, logits_all=logits_all, verbose=False, **kwargs)


def vocab_model(path: Path):
    """A llama.cpp model with its vocabulary only (fast; for tokenizer and stop-token checks)."""
    import llama_cpp

    from llama_cpp._utils import suppress_stdout_stderr

    quiet()
    with suppress_stdout_stderr(disable=False):  # a vocab-only load warns about a context it never uses
        return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

def gguf_context_length(path: Path) -> int:
    """The context length the model was trained with, read from the file's metadata."""
    vocab = vocab_model(path)
    try:
        return int(vocab.metadata.get(f"{vocab.metadata.get('general.architecture', 'qwen3')}.context_length", 2048))
    finally:
        vocab.close()


def load_gguf(path: Path, n_ctx: int | None = None, n_threads: int = 0, seed: int = 1234, logits_all: bool = False):
    """A llama_cpp.Llama for the exported file (quiet; n_ctx None = up to 2048 within the trained length)."""
    n_ctx = min(n_ctx or 2048, gguf_context_length(path))
    return open_llama(path, n_ctx, n_threads, logits_all=logits_all, seed=seed)


def gguf_complete(llm, prompt_ids: list[int], sampling, seed: int, max_tokens: int | None = None) -> dict:
    """One answer from llama.cpp, with the same sampling knobs as transformers.

    It takes token ids, not text: ids from chat.encode_messages keep message text as text, where tokenizing
    the rendered prompt would turn a "<|im_end|>" inside a message into the control token.
    """
    greedy = sampling.temperature == 0
    out = llm.create_completion(
        prompt_ids, max_tokens=max_tokens or sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p, top_k=sampling.top_k,
        min_p=getattr(sampling, "min_p", 0.0),  # explicit: llama.cpp adds min-p 0.05 by default
        repeat_penalty=sampling.repetition_penalty, seed=seed)
    choice = out["choices"][0]
    return {"text": choice["text"].strip(), "ended_on_eos": choice["finish_reason"] == "stop",
            "new_tokens": out["usage"]["completion_tokens"]}


def context_size(tokens: int) -> int:
    """A context window that fits `tokens`, rounded up to a multiple of 256 (at least 512)."""
    return max(512, int(math.ceil((tokens + 8) / 256) * 256))



def gguf_scores(llm, ids: list[int]):
    """Evaluate ids and return the logits of every position (llm opened with logits_all=True).

    The result is a view into llama.cpp's own (n_ctx, vocab) float32 buffer, not a copy: it stays
    valid until the next eval on the same llm.
    """
    llm.reset()
    llm.eval(ids)
    return llm.scores[: len(ids)]


class GGUFTokenizer:
    """llama.cpp's tokenizer and a GGUF's own chat template behind the three calls chat.encode_messages makes
    (apply_chat_template, __call__, added_tokens_decoder), so a prompt built from a GGUF file alone keeps
    message text as text the way the transformers path does.

    llama.cpp parses user-defined tokens (<think>) even with special=False, so plain text cannot be left
    to it: chat.encode_text splits every control or user-defined token's string out of message text.
    """

    def __init__(self, llm, template: str, bos_token: str, eos_token: str):
        self.llm, self.template, self.bos_token, self.eos_token = llm, template, bos_token, eos_token
        self._formatters: dict = {}
        self._added: dict | None = None

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            **kwargs) -> str:
        """The template's text for the messages (keyword arguments such as enable_thinking reach the template)."""
        if tokenize:
            raise ValueError("GGUFTokenizer renders text only; tokenize through chat.encode_messages")
        if add_generation_prompt not in self._formatters:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatters[add_generation_prompt] = Jinja2ChatFormatter(
                self.template, eos_token=self.eos_token, bos_token=self.bos_token,
                add_generation_prompt=add_generation_prompt)
        return self._formatters[add_generation_prompt](messages=messages, **kwargs).prompt

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        """{"input_ids": ...} of text with control tokens parsed (for the template's own text; no BOS added)."""
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}

    @property
    def added_tokens_decoder(self) -> dict:
        """{id: token} of every control and user-defined token (each with .content, its text)."""
        if self._added is None:
            import llama_cpp

            marker = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            model = self.llm._model  # the vocabulary's attributes are not in the public API
            self._added = {i: SimpleNamespace(content=self.llm.detokenize([i], special=True).decode("utf-8", "replace"))
                           for i in range(self.llm.n_vocab()) if model.token_get_attr(i) & marker}
        return self._added
