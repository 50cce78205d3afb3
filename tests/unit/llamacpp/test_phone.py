"""The phone's chat engine in the loop: llama.cpp's own server renders and answers from the exported file.

llama-server is built by `make setup` (scripts/build_llama_cpp.sh) in the same compile as llama-cpp-python;
a setup without it fails these tests on purpose (the export checks need it).
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from empathy_workbook.chat import prompt_messages, render_prompt
from empathy_workbook.family import PROFILES, QWEN3
from empathy_workbook.llamacpp import phone
from empathy_workbook.llamacpp.server import LlamaServer, ServerError, ServerUnavailable, tools_build

CONVERSATIONS = [prompt_messages("You are a kind assistant.", "I fell twice this week. Should I worry?"),
                 prompt_messages("", "My mother's walker squeaks on the rug; is that risky?"),
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "I feel dizzy at night."}]]


# ---------------------------------------------------------------------------------------------
# Fast: settings and the tools' version check, no server
# ---------------------------------------------------------------------------------------------

def test_tools_of_another_llama_cpp_python_are_refused(tmp_path):
    with pytest.raises(ServerUnavailable, match="make setup"):
        tools_build(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps({"llama_cpp_python": "0.0.1"}))
    with pytest.raises(ServerUnavailable, match="0.0.1"):
        tools_build(tmp_path)


def test_phone_settings_derive_n_predict_from_the_word_budget(tokenizer, tmp_path):
    answers = ["Please call your doctor today, and keep a light on at night."] * 4
    ratio = phone.tokens_per_word(tokenizer, answers)
    sampling = SimpleNamespace(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, repetition_penalty=1.0)
    settings = phone.phone_settings(tokenizer, sampling, 100, answers, prompt_tokens=80, trained_context=1024)
    assert settings["n_predict"] == int(-(-100 * ratio * phone.N_PREDICT_MARGIN // 1))
    assert settings["jinja"] is True and settings["enable_thinking"] is False
    assert settings["stop"][0] == QWEN3.end_of_turn and settings["n_ctx"] == 1024  # capped at the trained context
    call = phone.llama_rn_call(settings)
    assert "enable_thinking: false" in call and f"n_predict: {settings['n_predict']}" in call
    with pytest.raises(ValueError, match="word_budget"):
        phone.phone_settings(tokenizer, sampling, 2000, answers, prompt_tokens=80, trained_context=1024)
    gguf = tmp_path / "model-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    written = json.loads(phone.write_phone_settings(gguf, settings).read_text())
    assert written["file"] == gguf.name and len(written["sha256"]) == 64 and written["n_predict"] == settings["n_predict"]


# ---------------------------------------------------------------------------------------------
# The server itself (tiny F16 GGUF)
# ---------------------------------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie is stopped too


@pytest.mark.slow
def test_server_is_stopped_even_when_the_check_inside_fails(tiny_gguf):
    with pytest.raises(RuntimeError, match="a check failed"):
        with LlamaServer(tiny_gguf, n_ctx=512, n_threads=1) as server:
            pid = server.process.pid
            assert server.props()["build_info"].endswith(tools_build()["llama_server_version"].split("commit ")[-1]
                                                         .rstrip(")"))
            raise RuntimeError("a check failed")
    assert _gone(pid)


def test_a_file_the_server_cannot_load_fails_with_its_log(tmp_path):
    broken = tmp_path / "model-f16.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    server = LlamaServer(broken, n_ctx=512, n_threads=1, startup_timeout=60)
    with pytest.raises(ServerError, match="exited with code"):
        server.start()
    assert server.process is None


# ---------------------------------------------------------------------------------------------
# Rendering parity: every family, llama.cpp's engine vs the training prompt
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_official_qwen3_template_fails_without_the_flag_and_ours_passes_both(tiny_path, tokenizer, tmp_path):
    """The phone failure this check exists for: Qwen3's own template and an app that forgets enable_thinking."""
    from empathy_workbook.phases.export import convert_to_gguf
    from helpers import official_qwen3_template

    official = tmp_path / "official-f16.gguf"
    convert_to_gguf(Path(tiny_path), official, chat_template=official_qwen3_template(), log=lambda *_: None)
    ours = tmp_path / "ours-f16.gguf"
    convert_to_gguf(Path(tiny_path), ours, chat_template=QWEN3.template_text(), log=lambda *_: None)
    with LlamaServer(official, n_ctx=512, n_threads=1) as server:
        result = phone.rendering_check(server, tokenizer, CONVERSATIONS)
    by_mode = {mode: all(r["text_equal"] and r["ids_equal"] for r in result["rows"] if r["mode"] == mode)
               for mode in phone.RENDER_MODES}
    assert by_mode == {"enable_thinking: false": True, "flag left out": False}
    assert not result["ok"]
    with LlamaServer(ours, n_ctx=512, n_threads=1) as server:
        result = phone.rendering_check(server, tokenizer, CONVERSATIONS)
    assert result["ok"], result["failures"]
    assert render_prompt(tokenizer, CONVERSATIONS[0]).endswith("<think>\n\n</think>\n\n")


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_every_family_renders_the_training_prompt_in_llama_cpp(profile, tmp_path, request):
    """A GGUF with the family's real vocabulary, served with the family's template (the one export embeds)."""
    from helpers import family_test_model

    gguf, tokenizer = family_test_model(profile, request)
    template = tmp_path / "template.jinja"
    template.write_text(profile.template_text(), encoding="utf-8")
    with LlamaServer(gguf, n_ctx=512, n_threads=1, extra_args=("--chat-template-file", str(template))) as server:
        result = phone.rendering_check(server, tokenizer, CONVERSATIONS)
    assert result["ok"], result["failures"]
