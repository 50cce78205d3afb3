"""The answer viewer and the chat box without a browser: the stable ew-* hooks the browser test reads, the
prompt and model pickers switching the cards, and a chat turn rendered with the reply's own text."""

import pandas as pd
import pytest

pytest.importorskip("ipywidgets")

from empathy_workbook import ui  # noqa: E402


@pytest.fixture()
def side():
    return pd.DataFrame([
        {"prompt_id": "p1", "suite": "val", "category": "fall_worry", "question": "I fell <twice>",
         "base answer": "b1", "base score": 3.0, "sft answer": "s1 & more", "sft score": float("nan")},
        {"prompt_id": "p2", "suite": "suite", "category": "safety_critical", "question": "I hit my head",
         "base answer": "b2", "base score": 4.0, "sft answer": "s2", "sft score": 7.0},
    ])


def test_cards_carry_prompt_and_model_hooks(side):
    html = ui.answers_html(side, "p1")
    assert "data-prompt-id='p1'" in html and "I fell &lt;twice&gt;" in html
    assert "data-model='base'" in html and "data-model='sft'" in html and "s1 &amp; more" in html
    assert "parse failed" in html  # a NaN score is shown as such, not as a number
    only = ui.answers_html(side, "p2", ["sft"])
    assert "data-model='sft'" in only and "data-model='base'" not in only and "7/10" in only


def test_viewer_pickers_switch_the_cards(side):
    viewer = ui.prompt_viewer(side)
    picker, model, shown = viewer.children
    assert "ew-viewer" in viewer._dom_classes and "ew-prompt-picker" in picker._dom_classes
    assert "ew-model-picker" in model._dom_classes and "ew-answers" in shown._dom_classes
    assert list(model.options) == [ui.ALL_MODELS, "base", "sft"]
    picker.value = "p2"
    assert "data-prompt-id='p2'" in shown.value and "data-model='base'" in shown.value
    model.value = "sft"
    assert "data-prompt-id='p2'" in shown.value and "data-model='base'" not in shown.value
    model.value = ui.ALL_MODELS
    assert "data-model='base'" in shown.value


class FakeChat:
    def __init__(self):
        self.heard = []

    def reply(self, text):
        self.heard.append(text)
        return {"text": f"reply <{len(self.heard)}>", "ended_on_eos": True}


def test_chat_box_answers_once_per_message():
    chat = FakeChat()
    box = ui.chat_widget(chat)
    (text, send), log = box.children[0].children, box.children[1]
    assert "ew-chat" in box._dom_classes and "ew-chat-input" in text._dom_classes
    assert "ew-chat-send" in send._dom_classes and "ew-chat-log" in log._dom_classes
    text.value = "I'm scared"  # what Enter does in the browser (continuous_update=False)
    send.click()  # an empty box after the reply: the button adds nothing
    assert chat.heard == ["I'm scared"]
    assert log.value.count("class='ew-turn'") == 1
    assert "<span class='ew-user'>I&#x27;m scared</span>" in log.value
    assert "<span class='ew-reply'>reply &lt;1&gt;</span>" in log.value
