"""The phone's view of an exported file, measured with llama.cpp's own chat engine (llama-server).

- ``phone_settings``: the llama.rn completion parameters the file is checked with (written beside the GGUF as
  phone_settings.json): jinja on, enable_thinking off, the family's stop words, the evaluation's sampling, an
  n_predict derived from the word budget, a context size that fits prompt and answer.
- ``rendering_check``: the server renders each evaluation conversation from the file's template, once with
  ``enable_thinking: false`` and once without the flag (llama.rn's default is true); both must equal the training
  prompt byte for byte, and tokenize to the training ids.
- ``server_answers`` / ``stop_summary``: the suite through the server's chat endpoint with exactly those settings:
  how each answer stopped (llama.cpp's stop type: an end-of-generation token, a stop word, or the n_predict
  limit) and whether a think block appeared.
- ``python_answers``: the same prompts and settings through llama-cpp-python on the same file (token ids from the
  training template), whose stop rate the server's must match.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..chat import encode_messages, has_think_leak, render_prompt, word_count
from ..family import family_of
from ..io import sha256_file, write_json
from .inference import gguf_complete, open_llama
from .server import LlamaServer

PHONE_SETTINGS_FILE = "phone_settings.json"
# n_predict = word budget x tokens per word of the training answers x this margin: an answer a little over the
# budget still ends by itself (the evaluation counts the budget separately), a rambling one is cut.
N_PREDICT_MARGIN = 1.25
# The two ways an app renders a chat with llama.rn's Jinja engine: with the flag the workbook documents, and
# without it (llama.rn then sends enable_thinking true).
RENDER_MODES = {"enable_thinking: false": {"enable_thinking": False}, "flag left out": None}


def tokens_per_word(tokenizer, answers: list[str]) -> float:
    """Tokens per word of these answers with this tokenizer (answer text only, no template)."""
    words = sum(word_count(a) for a in answers)
    if not words:
        raise ValueError("no answer words to measure tokens per word with")
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) / words


def phone_settings(tokenizer, sampling, word_budget: int, answers: list[str], prompt_tokens: int,
                   trained_context: int) -> dict:
    """The llama.rn settings (its own parameter names) this file is checked and evaluated with.

    sampling: the evaluation's SamplingConfig (what notebook 05 compares every model with); answers: training
    answers (for tokens per word); prompt_tokens: the longest prompt the checks send; trained_context: the
    file's context length. write_phone_settings adds the file the phone gets.
    """
    ratio = tokens_per_word(tokenizer, answers)
    n_predict = int(math.ceil(word_budget * ratio * N_PREDICT_MARGIN))
    needed = prompt_tokens + n_predict
    if needed > trained_context:
        raise ValueError(f"a {prompt_tokens}-token prompt plus n_predict {n_predict} ({word_budget} words x {ratio:.2f} "
                         f"tokens/word x {N_PREDICT_MARGIN}) exceeds the model's {trained_context}-token context: "
                         "lower eval.word_budget")
    # 2048 positions hold a few turns of conversation on a phone; never more than the model was trained with.
    n_ctx = min(trained_context, max(2048, int(math.ceil(needed / 256) * 256)))
    return {
        "n_ctx": n_ctx,
        "jinja": True, "enable_thinking": False,
        "stop": family_of(tokenizer).stop_words,
        "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
        "min_p": sampling.min_p, "penalty_repeat": sampling.repetition_penalty,
        "n_predict": n_predict,
        "why": {"n_predict": f"{word_budget}-word budget x {ratio:.2f} tokens per word of the training answers x "
                             f"{N_PREDICT_MARGIN}",
                "sampling": "the evaluation's sampling (eval.sampling): the settings notebook 05 measured",
                "enable_thinking": "the file's template is non-thinking anyway; sending false keeps an official "
                                   "template (a re-export, another file) on the trained prompt too"},
    }


def write_phone_settings(gguf_path: Path, settings: dict) -> Path:
    """phone_settings.json beside the phone file, naming it and its sha256 (check it after copying to a device)."""
    gguf_path = Path(gguf_path)
    path = gguf_path.with_name(PHONE_SETTINGS_FILE)
    write_json(path, {"file": gguf_path.name, "sha256": sha256_file(gguf_path), **settings})
    return path


def llama_rn_call(settings: dict) -> str:
    """The llama.rn code (JavaScript) that loads the file and answers with exactly these settings."""
    stop = ", ".join(f"'{s}'" for s in settings["stop"])
    return (f"const context = await initLlama({{ model: 'file://.../{settings.get('file', 'model.gguf')}', "
            f"n_ctx: {settings['n_ctx']} }})\n"
            "const result = await context.completion({\n"
            "  messages: [{ role: 'system', content: systemPrompt }, { role: 'user', content: question }],\n"
            "  jinja: true, enable_thinking: false,\n"
            f"  stop: [{stop}],\n"
            f"  temperature: {settings['temperature']}, top_p: {settings['top_p']}, top_k: {settings['top_k']}, "
            f"min_p: {settings['min_p']},\n"
            f"  penalty_repeat: {settings['penalty_repeat']}, n_predict: {settings['n_predict']},\n"
            "})\n"
            "// result.stopped_eos: the answer ended on an end-of-generation token; result.stopped_limit: n_predict cut it")


# ---------------------------------------------------------------------------------------------
# Rendering: llama.cpp's Jinja engine vs the training prompt
# ---------------------------------------------------------------------------------------------

def rendering_check(server, tokenizer, conversations: list[list[dict]]) -> dict:
    """Does llama.cpp render every conversation as training did, with and without enable_thinking: false?

    Text: llama.cpp drops a leading BOS text from the rendering when its tokenizer adds BOS by itself (Gemma);
    that BOS is put back before comparing, so the text compared is what the model reads. Ids: the server's
    tokenization of its rendering (BOS included) against the training ids (chat.encode_messages).
    """
    auto_bos = server.tokenize("", add_special=True)
    bos_text = server.props().get("bos_token", "") if auto_bos else ""
    rows = []
    for number, messages in enumerate(conversations):
        training = render_prompt(tokenizer, messages)
        training_ids = encode_messages(tokenizer, messages)
        for mode, kwargs in RENDER_MODES.items():
            rendered = server.apply_template(messages, kwargs)
            seen = rendered if rendered.startswith(bos_text) else bos_text + rendered
            ids = server.tokenize(rendered, add_special=True)
            rows.append({"conversation": number, "mode": mode, "text_equal": seen.encode() == training.encode(),
                         "ids_equal": ids == training_ids, "first_difference": _first_difference(seen, training),
                         "rendered_tail": rendered[-60:], "training_tail": training[-60:]})
    return {"ok": bool(rows) and all(r["text_equal"] and r["ids_equal"] for r in rows),
            "conversations": len(conversations), "auto_bos": bool(auto_bos), "rows": rows,
            "failures": [r for r in rows if not (r["text_equal"] and r["ids_equal"])][:6]}


def _first_difference(a: str, b: str) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ---------------------------------------------------------------------------------------------
# Answers: the server's chat endpoint vs llama-cpp-python, same file, same settings
# ---------------------------------------------------------------------------------------------

def server_answers(server, tokenizer, conversations: list[list[dict]], settings: dict, seed: int) -> list[dict]:
    """Each conversation answered by the server's chat endpoint with the phone settings (seed + index).

    end_of_turn: stopped by an end-of-generation token (llama.cpp's stop type "eos", llama.rn's stopped_eos) and
    that token was the family's end-of-turn token; think: a think block in the text or moved to reasoning_content.
    """
    end_id = tokenizer.convert_tokens_to_ids(family_of(tokenizer).end_of_turn)
    answers = []
    for number, messages in enumerate(conversations):
        out = server.chat(messages, settings, seed + number)
        last = out["tokens"][-1] if out["tokens"] else None
        answers.append({"text": out["text"], "stop_type": out["stop_type"], "finish_reason": out["finish_reason"],
                        "end_of_turn": out["stop_type"] == "eos" and last == end_id,
                        "think": bool(out["reasoning"]) or has_think_leak(out["text"]),
                        "new_tokens": out["new_tokens"], "words": word_count(out["text"])})
    return answers


def python_answers(llm, tokenizer, conversations: list[list[dict]], settings: dict, seed: int) -> list[dict]:
    """The same conversations through llama-cpp-python (an open Llama over the same file), same settings.

    The prompt ids come from the training template (chat.encode_messages), as in the evaluation; stop is
    llama.cpp's end-of-generation set, as on the server.
    """
    sampling = _sampling_of(settings)
    answers = []
    for number, messages in enumerate(conversations):
        out = gguf_complete(llm, encode_messages(tokenizer, messages), sampling, seed + number)
        answers.append({"text": out["text"], "ended_on_eos": out["ended_on_eos"], "new_tokens": out["new_tokens"],
                        "think": has_think_leak(out["text"])})
    return answers


def _sampling_of(settings: dict):
    from types import SimpleNamespace

    return SimpleNamespace(temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"],
                           min_p=settings["min_p"], repetition_penalty=settings["penalty_repeat"],
                           max_new_tokens=settings["n_predict"])


def stop_summary(answers: list[dict]) -> dict:
    """Counts and shares of how the server's answers stopped."""
    n = len(answers)
    count = {kind: sum(a["stop_type"] == kind for a in answers) for kind in ("eos", "word", "limit")}
    return {"answers": n, "stop_types": count, "eos_rate": count["eos"] / n if n else 0.0,
            "end_of_turn_rate": sum(a["end_of_turn"] for a in answers) / n if n else 0.0,
            "think_blocks": sum(a["think"] for a in answers),
            "mean_words": sum(a["words"] for a in answers) / n if n else 0.0}


# ---------------------------------------------------------------------------------------------
# Which file the phone gets, and every server check on it
# ---------------------------------------------------------------------------------------------

def choose_deploy(candidates: list[dict], max_kld: float, min_stop_rate: float, stop_rate_of) -> dict:
    """export.deploy: auto. The smallest format whose mean KL divergence from F16 is at most max_kld and whose
    suite answers through llama-server stop on an end-of-generation token for at least min_stop_rate.

    candidates: [{"format", "bytes", "kld_mean"}]; stop_rate_of(format) runs the server (only for formats that
    pass the KL limit, smallest first, until one passes). Returns format (None when none passes), reason, and
    every candidate with what was measured.
    """
    rows, chosen = [], None
    for cand in sorted(candidates, key=lambda c: c["bytes"]):
        row = dict(cand, stop_rate=None, verdict="")
        if chosen is not None:
            row["verdict"] = "larger than the choice"
        elif cand["kld_mean"] > max_kld:
            row["verdict"] = f"KL divergence {cand['kld_mean']:.4f} > {max_kld}"
        else:
            row["stop_rate"] = stop_rate_of(cand["format"])
            if row["stop_rate"] < min_stop_rate:
                row["verdict"] = f"stop rate {row['stop_rate']:.0%} < {min_stop_rate:.0%}"
            else:
                row["verdict"] = "chosen"
                chosen = cand["format"]
        rows.append(row)
    if chosen is None:
        reason = (f"no format is within the limits (KL divergence from F16 <= {max_kld}, stop rate >= "
                  f"{min_stop_rate:.0%}): " + "; ".join(f"{r['format']}: {r['verdict']}" for r in rows))
    else:
        pick = next(r for r in rows if r["format"] == chosen)
        smaller = [f"{r['format']} ({r['verdict']})" for r in rows if r["bytes"] < pick["bytes"]]
        reason = (f"{chosen} is the smallest format within the limits: KL divergence {pick['kld_mean']:.4f} <= "
                  f"{max_kld}, stop rate {pick['stop_rate']:.0%} >= {min_stop_rate:.0%}"
                  + (f"; smaller: {', '.join(smaller)}" if smaller else ""))
    return {"format": chosen, "reason": reason, "candidates": rows}


def phone_checks(files: dict[str, Path], kld_mean: dict[str, float], tokenizer, render_conversations: list[list[dict]],
                 suite_conversations: list[list[dict]], settings: dict, cfg, log_dir: Path, named: str | None) -> dict:
    """Every check of what the phone sees, run with llama-server on the exported files (cfg: ExportConfig).

    1. Which file: `named` (the preset's export.deploy, resolved), or with named None (deploy: auto) choose_deploy's
       pick. choose_deploy runs in both cases, so the report can say when auto would have chosen otherwise.
    2. On that file: rendering_check over render_conversations, the suite through the chat endpoint
       (server_answers) and through llama-cpp-python (python_answers), all with `settings`.
    """
    seed = cfg.sampling.seed
    server_runs: dict[str, list[dict]] = {}

    def serve(fmt: str):
        return LlamaServer(files[fmt], n_ctx=settings["n_ctx"], n_threads=cfg.n_threads,
                           log_path=Path(log_dir) / f"llama-server-{fmt.lower()}.log")

    def stop_rate_of(fmt: str) -> float:
        if fmt not in server_runs:
            with serve(fmt) as server:
                server_runs[fmt] = server_answers(server, tokenizer, suite_conversations, settings, seed)
        return stop_summary(server_runs[fmt])["eos_rate"]

    quants = [q for q in files if q != "F16"]
    candidates = [{"format": q, "bytes": Path(files[q]).stat().st_size, "kld_mean": kld_mean[q]} for q in quants]
    auto = choose_deploy(candidates, cfg.auto_max_kld, cfg.min_stop_rate, stop_rate_of)
    # auto and no format within the limits: the checks still run on the closest one, and within_limits is False
    deploy = named or auto["format"] or min(quants, key=lambda q: kld_mean[q])
    with serve(deploy) as server:
        rendering = rendering_check(server, tokenizer, render_conversations)
        if deploy not in server_runs:
            server_runs[deploy] = server_answers(server, tokenizer, suite_conversations, settings, seed)
    llm = open_llama(files[deploy], settings["n_ctx"], cfg.n_threads, seed=seed)
    try:
        python = python_answers(llm, tokenizer, suite_conversations, settings, seed)
    finally:
        llm.close()
    served = server_runs[deploy]
    summary = stop_summary(served)
    python_rate = sum(a["ended_on_eos"] for a in python) / len(python)
    return {
        "deploy": deploy, "setting": cfg.deploy, "auto": auto,
        "auto_differs": named is not None and auto["format"] != deploy,
        "within_limits": named is not None or auto["format"] == deploy,
        "rendering": rendering, "server": summary, "server_answers": served,
        "server_stop_rates": {fmt: stop_summary(a)["eos_rate"] for fmt, a in server_runs.items()},
        "python_stop_rate": python_rate, "python_answers": python,
        "stop_rate_gap": abs(summary["eos_rate"] - python_rate),
        "same_text": sum(s["text"].strip() == p["text"] for s, p in zip(served, python)),
    }
