"""Behaviour checks of exported GGUF files: do they compute what the trained model computes?

- ``quality_report``: perplexity of each file on held-out answers and each quant's KL divergence from
  F16 (the numbers ``llama-perplexity --kl-divergence`` prints);
- ``greedy_parity``: transformers and llama.cpp choose the same greedy tokens;
- ``chat_stop_check``: a llama-cpp-python chat completion with the embedded template ends on the end-of-turn token.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..chat import has_think_leak, one_per_question, render_prompt, tokenize_prompt_completion
from ..family import family_of, family_of_template
from ..io import read_jsonl
from ..logprobs import scored_positions, token_nll, token_statistics
from .file_checks import GGUFError, gguf_metadata
from .inference import gguf_scores, open_llama

# Qwen's advice for non-thinking chat, repeated in the llama.rn section of the notebook.


def phone_sampling(tokenizer) -> dict:
    """The family's published chat sampling advice (Qwen3: T 0.7, top-p 0.8, top-k 20; Gemma 3: T 1.0, 0.95, 64)."""
    return dict(family_of(tokenizer).sampling)


def stop_words(tokenizer) -> list[str]:
    """What a llama.rn client passes as `stop` for this model (the family's end-of-turn token first)."""
    return family_of(tokenizer).stop_words


def load_val_records(path: Path) -> list[dict]:
    """Validation records (TRL conversational prompt/completion); a malformed row raises naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 00 for this run first")
    records = read_jsonl(path)
    for number, row in enumerate(records, start=1):
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"{path}: row {number}: field 'prompt' must be a non-empty list of messages")
        if (not isinstance(completion, list) or not completion
                or not isinstance(completion[0].get("content"), str)):
            raise ValueError(f"{path}: row {number}: field 'completion' must hold one assistant message with text")
    if not records:
        raise ValueError(f"{path}: no validation records")
    return records


def scoring_examples(records: list[dict], tokenizer, max_texts: int) -> list[dict]:
    """Token ids of rendered validation chats and the mask of the answer tokens that get scored.

    The text is exactly the training text (chat.tokenize_prompt_completion): prompt rendered with the
    chat template in non-thinking mode, then the answer and the end-of-turn token. Only answer tokens and the
    closing end-of-turn token are scored, never the system prompt or the question.
    """
    examples = []
    for record in records[:max_texts]:
        encoded = tokenize_prompt_completion(tokenizer, record["prompt"], record["completion"][0]["content"])
        examples.append({"id": record.get("id"), "input_ids": encoded["input_ids"],
                         "mask": encoded["completion_mask"],
                         "text": tokenizer.decode(encoded["input_ids"], skip_special_tokens=False)})
    return examples


def _hf_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def quality_report(f16_path: Path, quant_paths: dict[str, Path], examples: list[dict], hf_model=None,
                   n_threads: int = 0) -> dict:
    """Perplexity of each file on the scored answer tokens, and each quant's KL divergence from F16.

    For every scored position t (logits at t predict token t+1): NLL = -log p(token), perplexity =
    exp(mean NLL) over all scored tokens of all texts. KLD(F16 || quant) = sum_v p16(v) (log p16(v) -
    log pq(v)) per position, reported as mean and 99th percentile; top-token agreement is the share of
    positions where both put the highest probability on the same token. These are the numbers
    `llama-perplexity --kl-divergence` prints, computed here from per-token logits. When hf_model is
    given, its perplexity and KLD(transformers || F16) show what the conversion itself changed.
    Memory stays bounded for a 152k vocabulary: logits are read from llama.cpp's own buffers and
    turned into float64 probabilities a chunk of positions at a time (logprobs.token_statistics).
    """
    import numpy as np

    n_ctx = max(len(e["input_ids"]) for e in examples) + 8
    models = {"F16": open_llama(f16_path, n_ctx, n_threads, logits_all=True)}
    models.update({q: open_llama(p, n_ctx, n_threads, logits_all=True) for q, p in quant_paths.items()})
    nll = {name: [] for name in models}
    kld = {q: [] for q in quant_paths}
    agree = {q: [] for q in quant_paths}
    hf_nll, hf_kld, hf_agree, hf_diff = [], [], [], []
    for example in examples:
        ids = example["input_ids"]
        rows, targets = scored_positions(ids, example["mask"])
        scores = {name: gguf_scores(llm, ids) for name, llm in models.items()}  # views, no copies
        nll["F16"].extend(token_nll(scores["F16"], rows, targets).tolist())
        for q in quant_paths:
            stats = token_statistics(scores["F16"], scores[q], rows, targets)
            nll[q].extend(stats["other_nll"].tolist())
            kld[q].extend(stats["kld"].tolist())
            agree[q].extend(stats["agree"].tolist())
        if hf_model is not None:
            stats = token_statistics(_hf_logits(hf_model, ids), scores["F16"], rows, targets)
            hf_nll.extend(stats["ref_nll"].tolist())
            hf_kld.extend(stats["kld"].tolist())
            hf_agree.extend(stats["agree"].tolist())
            hf_diff.extend(stats["max_logit_diff"].tolist())
    report = {
        "tokens_scored": len(nll["F16"]),
        "texts": len(examples),
        "perplexity": {name: float(math.exp(np.mean(v))) for name, v in nll.items()},
        "kld_mean": {q: float(np.mean(v)) for q, v in kld.items()},
        "kld_p99": {q: float(np.percentile(v, 99)) for q, v in kld.items()},
        "top_token_agreement": {q: float(np.mean(v)) for q, v in agree.items()},
    }
    if hf_model is not None:
        report["perplexity_transformers"] = float(math.exp(np.mean(hf_nll)))
        report["kld_f16_vs_transformers"] = {"mean": float(np.mean(hf_kld)), "p99": float(np.percentile(hf_kld, 99)),
                                             "top_token_agreement": float(np.mean(hf_agree)),
                                             "max_logit_diff": float(np.max(hf_diff)),
                                             "max_logit_diff_p99": float(np.percentile(hf_diff, 99))}
    return report


def _hf_greedy(model, prompt_ids: list[int], k: int) -> list[int]:
    """k greedy tokens from transformers, one forward step at a time with the KV cache (no stopping)."""
    import torch

    new, past, inputs = [], None, torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(k):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            new.append(token)
            inputs = torch.tensor([[token]])
    return new


def _gguf_greedy(llm, prompt_ids: list[int], k: int) -> list[int]:
    """k greedy tokens from llama.cpp (Llama.generate never stops by itself)."""
    new = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        new.append(int(token))
        if len(new) >= k:
            break
    return new


def greedy_parity(hf_model, tokenizer, gguf_path: Path, conversations: list[list[dict]], k: int,
                  n_threads: int = 0, tie_margin: float = 0.05) -> dict:
    """Do transformers and the GGUF (through llama.cpp) pick the same k greedy tokens?

    Each side tokenizes the rendered prompt itself, as an app would, and takes exactly k greedy steps:
    an end token counts as a token and decoding continues past it, so every prompt compares k
    choices even when a model stops early. At the first mismatch of a prompt, the transformers logit
    margin between its choice and llama.cpp's tells a near tie flipped by 16-bit rounding (margin at
    most tie_margin: verdict "near_tie") from a real defect (verdict "mismatch"); after that step the
    two continuations start from different text and are not compared further.
    Returns match (all identical), ok (no real mismatch), and the prompt and position of each difference.
    """
    # Both runtimes tokenize the rendered text with its control tokens parsed, on purpose: the check compares
    # them on the same ids (the validation prompts hold no control strings), not what a message may contain.
    prompts = [render_prompt(tokenizer, messages) for messages in conversations]
    n_ctx = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) + k + 8
    llm = open_llama(gguf_path, n_ctx, n_threads)
    rows, texts = [], []
    for index, prompt in enumerate(prompts):
        hf_ids = _hf_greedy(hf_model, tokenizer(prompt, add_special_tokens=False)["input_ids"], k)
        gguf_ids = _gguf_greedy(llm, llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True), k)
        texts.append(tokenizer.decode(hf_ids, skip_special_tokens=False))
        rows.append(_parity_row(index, hf_model, tokenizer, prompt, hf_ids, gguf_ids, tie_margin))
    differences = [{key: r[key] for key in ("prompt", "first_mismatch", "verdict", "hf_margin", "hf_token", "gguf_token")}
                   for r in rows if not r["match"]]
    return {"match": all(r["match"] for r in rows), "ok": all(r["verdict"] != "mismatch" for r in rows),
            "near_ties": sum(r["verdict"] == "near_tie" for r in rows), "tie_margin": tie_margin,
            "differences": differences, "prompts": len(rows), "k": k, "rows": rows, "texts": texts}


def _parity_row(index: int, hf_model, tokenizer, prompt: str, hf_ids: list[int], gguf_ids: list[int],
                tie_margin: float) -> dict:
    """One prompt's comparison: where the two greedy sequences first differ, and whether it is a near tie."""
    row = {"prompt": index, "match": hf_ids == gguf_ids, "tokens": len(hf_ids), "first_mismatch": None,
           "verdict": "match", "hf_margin": None, "hf_token": None, "gguf_token": None}
    if row["match"]:
        return row
    first = next((i for i, (a, b) in enumerate(zip(hf_ids, gguf_ids)) if a != b), min(len(hf_ids), len(gguf_ids)))
    if first >= min(len(hf_ids), len(gguf_ids)):  # one side produced fewer tokens: nothing to weigh
        return dict(row, first_mismatch=first, verdict="mismatch")
    prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] + hf_ids[:first]
    logits = _hf_logits(hf_model, prefix)[-1]
    margin = float(logits[hf_ids[first]] - logits[gguf_ids[first]])
    return dict(row, first_mismatch=first, hf_margin=margin, verdict="near_tie" if margin <= tie_margin else "mismatch",
                hf_token=tokenizer.decode([hf_ids[first]]), gguf_token=tokenizer.decode([gguf_ids[first]]))


def distinct_prompts(records: list[dict], n: int) -> list[list[dict]]:
    """The first n different prompts (a question can have several answers, i.e. several records)."""
    return [record["prompt"] for record in one_per_question(records)[:n]]


def chat_formatter(path: Path, enable_thinking: bool | None = False):
    """llama-cpp-python's Jinja chat formatter over the template stored in the GGUF.

    llama-cpp-python's create_chat_completion has no way to pass enable_thinking to the template, so
    its default formatter renders Qwen3's *thinking* generation prompt. Our formatter is the same class
    with enable_thinking fixed (False = the prompt the model was trained on).
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = gguf_metadata(path, ["tokenizer.chat_template"]).get("tokenizer.chat_template")
    if not isinstance(template, str):
        raise GGUFError(f"{path}: no tokenizer.chat_template in the metadata: llama.rn could not format chats")

    class TemplateFormatter(Jinja2ChatFormatter):
        def __call__(self, **kwargs):
            if enable_thinking is not None:
                kwargs.setdefault("enable_thinking", enable_thinking)
            return super().__call__(**kwargs)

    profile = family_of_template(template)  # Gemma's template writes bos_token itself; Qwen's has none
    return TemplateFormatter(template, eos_token=profile.end_of_turn, bos_token=profile.bos)


def chat_model(path: Path, n_ctx: int = 1024, n_threads: int = 0, seed: int = 1234):
    """A llama_cpp.Llama whose chat completions use the file's own template in non-thinking mode."""
    return open_llama(path, n_ctx, n_threads, chat_handler=chat_formatter(path).to_chat_handler(), seed=seed)


def chat_answers(path: Path, conversations: list[list[dict]], sampling, n_threads: int = 0,
                 llm=None) -> list[dict]:
    """Answer each conversation through llama-cpp-python's chat API (seeded, Qwen's non-thinking sampling)."""
    llm = llm or chat_model(path, n_threads=n_threads, seed=sampling.seed)
    results = []
    for number, messages in enumerate(conversations):
        out = llm.create_chat_completion(
            messages=messages, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            min_p=0.0, max_tokens=sampling.max_new_tokens, seed=sampling.seed + number,
            repeat_penalty=sampling.repetition_penalty)
        choice = out["choices"][0]
        results.append({"text": choice["message"]["content"].strip(), "ended_on_eos": choice["finish_reason"] == "stop",
                        "new_tokens": out["usage"]["completion_tokens"]})
    return results


def chat_stop_check(path: Path, tokenizer, messages: list[dict], max_tokens: int = 64, force_after: int = 6,
                    n_threads: int = 0, seed: int = 1234) -> dict:
    """Does a llama-cpp-python chat completion with the embedded template end on the end-of-turn token?

    1. Prompt: the default formatter (no enable_thinking) and ours (enable_thinking=False) are
       compared with the training prompt (chat.render_prompt).
    2. Forced run: a logits processor makes the end-of-turn token the only choice after force_after tokens; the
       completion must stop right there, finish_reason "stop", no end marker in the text. This proves
       the file's and the chat API's stop handling for exactly that token, whatever the model has learned.
    3. Natural run: the family's advised sampling within max_tokens; natural_stop says whether the model ended its
       answer by itself (an untrained model may not; notebook 05 measures this on many prompts).
    """
    import numpy as np
    from llama_cpp import LogitsProcessorList

    expected = render_prompt(tokenizer, messages)
    default_prompt = chat_formatter(path, enable_thinking=None)(messages=messages).prompt
    ours = chat_formatter(path, enable_thinking=False)(messages=messages).prompt
    llm = chat_model(path, n_threads=n_threads, seed=seed)
    sampling = dict(phone_sampling(tokenizer), max_tokens=max_tokens, seed=seed)
    end_token = family_of(tokenizer).end_of_turn
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    calls = {"n": 0}

    def force_end(input_ids, scores):
        calls["n"] += 1
        if calls["n"] > force_after:
            scores = np.full_like(scores, -np.inf)
            scores[end_id] = 0.0
        return scores

    forced = llm.create_chat_completion(messages=messages, logits_processor=LogitsProcessorList([force_end]),
                                        **sampling)
    natural = llm.create_chat_completion(messages=messages, **sampling)
    f_choice, n_choice = forced["choices"][0], natural["choices"][0]
    prompt_ok = ours == expected
    return {
        "default_formatter_matches_training": default_prompt == expected,
        "formatter_prompt_matches_training": prompt_ok,
        "forced_finish_reason": f_choice["finish_reason"],
        "forced_tokens": forced["usage"]["completion_tokens"],
        "stops_on_end_of_turn": bool(prompt_ok and f_choice["finish_reason"] == "stop"
                                     and forced["usage"]["completion_tokens"] == force_after
                                     and end_token not in f_choice["message"]["content"]),
        "natural_finish_reason": n_choice["finish_reason"],
        "natural_stop": n_choice["finish_reason"] == "stop",
        "natural_tokens": natural["usage"]["completion_tokens"],
        "natural_text": n_choice["message"]["content"],
        "think_leak": has_think_leak(n_choice["message"]["content"]),
    }
