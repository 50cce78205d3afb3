"""What a learner looks at in notebook 05: the answer viewer and a chat box backed by the phone file.

Both are ipywidgets inside a live Jupyter kernel; under papermill (no frontend) the notebook shows
the static fallbacks instead: answers_html cards and a scripted GGUFChat exchange.
"""

from __future__ import annotations

from pathlib import Path

from .chat import render_prompt
from .llamacpp import gguf_complete, load_gguf
from .tables import is_nan

class GGUFChat:
    """A multi-turn chat with the exported GGUF, rendered by the tokenizer's template exactly like the eval."""

    def __init__(self, path: Path, tokenizer, system_prompt: str, sampling, n_threads: int = 0, n_ctx: int | None = None):
        self.llm = load_gguf(path, n_ctx=n_ctx, n_threads=n_threads, seed=sampling.seed)
        self.tokenizer, self.sampling = tokenizer, sampling
        self.messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turn = 0

    def reply(self, user_text: str) -> dict:
        """Answer one user message, keeping the conversation (oldest turns dropped when it gets too long)."""
        self.messages.append({"role": "user", "content": user_text})
        prompt = render_prompt(self.tokenizer, self.messages)
        while (len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + self.sampling.max_new_tokens
               > self.llm.n_ctx() and len(self.messages) > 3):
            del self.messages[1:3]  # keep the system prompt, drop the oldest exchange
            prompt = render_prompt(self.tokenizer, self.messages)
        answer = gguf_complete(self.llm, prompt, self.sampling, self.sampling.seed + self.turn)
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


def answers_html(side, prompt_id: str) -> str:
    """One prompt's answers from every model side by side (HTML cards with the judge score)."""
    import html

    row = side[side["prompt_id"] == prompt_id].iloc[0]
    models = [c[: -len(" answer")] for c in side.columns if c.endswith(" answer")]
    cards = []
    for model in models:
        score = row[f"{model} score"]
        shown = "parse failed" if score is None or is_nan(score) else f"{score:g}/10"
        cards.append(f"<div style='flex:1;min-width:180px;border:1px solid #ccc;border-radius:6px;padding:6px'>"
                     f"<b>{html.escape(model)}</b> · judge {shown}<br>"
                     f"<span style='white-space:pre-wrap'>{html.escape(str(row[f'{model} answer']))}</span></div>")
    return (f"<p><b>{html.escape(row['category'])}</b> · {html.escape(row['question'])}</p>"
            f"<div style='display:flex;gap:8px;flex-wrap:wrap'>{''.join(cards)}</div>")


def prompt_viewer(side):
    """A dropdown of prompts; picking one shows the models' answers and scores side by side."""
    import ipywidgets as widgets

    options = [(f"{r.category} · {r.question[:70]}", r.prompt_id) for r in side.itertuples()]
    picker = widgets.Dropdown(options=options, description="prompt", layout=widgets.Layout(width="95%"))
    shown = widgets.HTML(answers_html(side, options[0][1]))
    picker.observe(lambda change: setattr(shown, "value", answers_html(side, change["new"])), names="value")
    return widgets.VBox([picker, shown])


def chat_widget(chat: GGUFChat):
    """A text box and a Send button; every reply comes from the GGUF file through llama.cpp."""
    import html

    import ipywidgets as widgets

    # continuous_update=False: the value changes on Enter (or leaving the box), not on every keystroke.
    box = widgets.Text(placeholder="e.g. I'm scared of falling on the stairs at night", continuous_update=False,
                       layout=widgets.Layout(width="80%"))
    send = widgets.Button(description="Send", button_style="primary")
    log = widgets.HTML()

    def on_send(_):
        text = box.value.strip()
        if not text:
            return
        box.value = ""
        answer = chat.reply(text)
        end = "" if answer["ended_on_eos"] else " <i>(cut at the length limit)</i>"
        log.value += (f"<p><b>you:</b> {html.escape(text)}<br><b>assistant:</b> "
                      f"{html.escape(answer['text'])}{end}</p>")

    send.on_click(on_send)
    box.observe(on_send, names="value")
    return widgets.VBox([widgets.HBox([box, send]), log])
