"""What a learner looks at in notebook 05: the answer viewer and a chat box backed by the phone file.

Both are ipywidgets inside a live Jupyter kernel; under papermill (no frontend) the notebook shows
the static fallbacks instead: answers_html cards and a scripted GGUFChat exchange.
"""

from __future__ import annotations

from pathlib import Path

from .chat import encode_messages
from .llamacpp.inference import gguf_complete, load_gguf
from .tables import is_nan

class GGUFChat:
    """A multi-turn chat with the exported GGUF, rendered by the tokenizer's template exactly like the eval."""

    def __init__(self, path: Path, tokenizer, system_prompt: str, sampling, n_threads: int = 0, n_ctx: int | None = None):
        self.llm = load_gguf(path, n_ctx=n_ctx, n_threads=n_threads, seed=sampling.seed)
        self.tokenizer, self.sampling = tokenizer, sampling
        self.messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turn = 0

    def reply(self, user_text: str) -> dict:
        """Answer one user message, keeping the conversation (oldest turns dropped when it gets too long).

        What the user types (and what the model answered before) stays text: a typed "<|im_end|>" cannot end
        the turn or open a system turn (chat.encode_messages, as in the evaluation).
        """
        self.messages.append({"role": "user", "content": user_text})
        ids = encode_messages(self.tokenizer, self.messages)
        while len(ids) + self.sampling.max_new_tokens > self.llm.n_ctx() and len(self.messages) > 3:
            del self.messages[1:3]  # keep the system prompt, drop the oldest exchange
            ids = encode_messages(self.tokenizer, self.messages)
        answer = gguf_complete(self.llm, ids, self.sampling, self.sampling.seed + self.turn)
        self.turn += 1
        self.messages.append({"role": "assistant", "content": answer["text"]})
        return answer


# ---------------------------------------------------------------- viewer and chat box (widgets) + static fallbacks


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed (a frontend may still be absent: see the notebook)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def answers_html(side, prompt_id: str, models: list[str] | None = None) -> str:
    """One prompt's answers side by side (HTML cards with the judge score); `models` limits the cards.

    The ew-* classes and data attributes are stable hooks for tests/browser/test_browser.py.
    """
    import html

    row = side[side["prompt_id"] == prompt_id].iloc[0]
    models = models or viewer_models(side)
    cards = []
    for model in models:
        score = row[f"{model} score"]
        shown = "parse failed" if score is None or is_nan(score) else f"{score:g}/10"
        cards.append(f"<div class='ew-answer' data-model='{html.escape(model)}' "
                     f"style='flex:1;min-width:180px;border:1px solid #ccc;border-radius:6px;padding:6px'>"
                     f"<b>{html.escape(model)}</b> · judge {shown}<br>"
                     f"<span class='ew-answer-text' style='white-space:pre-wrap'>"
                     f"{html.escape(str(row[f'{model} answer']))}</span></div>")
    return (f"<div class='ew-prompt' data-prompt-id='{html.escape(str(prompt_id))}'>"
            f"<p><b>{html.escape(row['category'])}</b> · {html.escape(row['question'])}</p>"
            f"<div style='display:flex;gap:8px;flex-wrap:wrap'>{''.join(cards)}</div></div>")


def viewer_models(side) -> list[str]:
    """The models that have an answer column in the side-by-side table, in its order."""
    return [c[: -len(" answer")] for c in side.columns if c.endswith(" answer")]


ALL_MODELS = "all models"


def prompt_viewer(side):
    """A prompt dropdown and a model dropdown; the cards below show the picked prompt's answers and scores."""
    import ipywidgets as widgets

    options = [(f"{r.category} · {r.question[:70]}", r.prompt_id) for r in side.itertuples()]
    picker = widgets.Dropdown(options=options, description="prompt", layout=widgets.Layout(width="95%"))
    model = widgets.Dropdown(options=[ALL_MODELS] + viewer_models(side), description="model")
    shown = widgets.HTML(answers_html(side, options[0][1]))

    def update(_):
        shown.value = answers_html(side, picker.value, None if model.value == ALL_MODELS else [model.value])

    picker.observe(update, names="value")
    model.observe(update, names="value")
    for widget, hook in ((picker, "ew-prompt-picker"), (model, "ew-model-picker"), (shown, "ew-answers")):
        widget.add_class(hook)
    return widgets.VBox([picker, model, shown]).add_class("ew-viewer")


def chat_widget(chat: GGUFChat):
    """A text box and a Send button; every reply comes from the GGUF file through llama.cpp."""
    import html

    import ipywidgets as widgets

    # continuous_update=False: the value changes on Enter (or leaving the box), not on every keystroke.
    box = widgets.Text(placeholder="e.g. I'm scared of falling on the stairs at night", continuous_update=False,
                       layout=widgets.Layout(width="80%")).add_class("ew-chat-input")
    send = widgets.Button(description="Send", button_style="primary").add_class("ew-chat-send")
    log = widgets.HTML().add_class("ew-chat-log")

    def on_send(_):
        text = box.value.strip()
        if not text:
            return
        box.value = ""
        answer = chat.reply(text)
        end = "" if answer["ended_on_eos"] else " <i>(cut at the length limit)</i>"
        log.value += (f"<p class='ew-turn'><b>you:</b> <span class='ew-user'>{html.escape(text)}</span><br>"
                      f"<b>assistant:</b> <span class='ew-reply'>{html.escape(answer['text'])}</span>{end}</p>")

    send.on_click(on_send)
    box.observe(on_send, names="value")
    return widgets.VBox([widgets.HBox([box, send]), log]).add_class("ew-chat")
