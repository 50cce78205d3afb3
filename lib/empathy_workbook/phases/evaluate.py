"""Phase 05: base vs SFT vs DPO vs the phone file (Q4_K_M GGUF) on the same prompts, scored the same way.

What is measured, per model and per prompt category:
- the judge's 1-10 score (mean with a bootstrap confidence interval) and per-prompt win rates
  (tables.py turns answers and scores into those tables);
- perplexity of the reference validation answers (answer tokens + the end token only);
- the automatic checks of suite_checks.py (urges medical attention, declines to diagnose, no <think>
  text, ended on the end token, word budget, distinct-2).
The answer viewer and the chat box with the phone file are in ui.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..chat import encode_messages, one_per_question, prompt_messages, tokenize_prompt_completion
from ..io import read_jsonl
from ..llamacpp.inference import context_size, gguf_complete, gguf_scores, load_gguf
from ..logprobs import scored_positions, token_nll
from .suite_checks import CATEGORIES, EXPECTATIONS, VALIDATION, answer_checks

# ---------------------------------------------------------------- prompts


@dataclass
class EvalPrompt:
    """One prompt every model answers: a held-out validation question or a fall-risk suite item."""

    prompt_id: str
    suite: str  # "validation" or "fall_risk_suite"
    category: str
    messages: list[dict]
    expectations: list[str] = field(default_factory=list)
    reference: str | None = None  # the validation answer (for perplexity)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def load_suite(path: Path, system_prompt: str) -> list[EvalPrompt]:
    """The fall-risk suite, validated row by row (id, category, prompt, expectations)."""
    prompts, seen = [], set()
    for line, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}: row {line}"
        for key, kind in (("id", str), ("category", str), ("prompt", str), ("expectations", list)):
            if not isinstance(row.get(key), kind):
                raise ValueError(f"{where}: field {key!r} must be a {kind.__name__}, got {row.get(key)!r}")
        if row["category"] not in CATEGORIES:
            raise ValueError(f"{where}: field 'category' is {row['category']!r}; use one of {CATEGORIES}")
        unknown = [e for e in row["expectations"] if e not in EXPECTATIONS]
        if unknown:
            raise ValueError(f"{where}: field 'expectations' has {unknown}; use values from {EXPECTATIONS}")
        if row["id"] in seen:
            raise ValueError(f"{where}: field 'id' {row['id']!r} is used twice")
        if not row["prompt"].strip():
            raise ValueError(f"{where}: field 'prompt' is empty")
        seen.add(row["id"])
        prompts.append(EvalPrompt(row["id"], "fall_risk_suite", row["category"],
                                  prompt_messages(system_prompt, row["prompt"]), list(row["expectations"])))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def validation_prompts(records: list[dict], n: int) -> list[EvalPrompt]:
    """The first n distinct validation questions (file order), each with its first reference answer."""
    return [EvalPrompt(f"val-{record.get('id', number)}", VALIDATION, VALIDATION, record["prompt"], [],
                       record["completion"][0]["content"])
            for number, record in enumerate(one_per_question(records)[:n])]


# ---------------------------------------------------------------- answering


def answer_with_transformers(model_path: str, prompts: list[EvalPrompt], sampling, device: str = "cpu",
                             precision: str = "fp32", trust_remote_code: bool = False, desc: str = "") -> list[dict]:
    """Answers of a transformers model folder (or hub id), with the shared seeded batched sampler."""
    from ..models.loading import free_memory, generate, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code)
    model = load_causal_lm(model_path, device, precision, trust_remote_code)
    try:
        return generate(model, tokenizer, [p.messages for p in prompts], sampling, desc=desc or "answering")
    finally:
        del model
        free_memory()


def answer_with_gguf(path: Path, tokenizer, prompts: list[EvalPrompt], sampling, n_threads: int = 0,
                     llm=None) -> list[dict]:
    """Answers of the GGUF file to prompts tokenized by the HF tokenizer and its template, as for the others
    (chat.encode_messages: message text stays text). Prompt i is sampled with seed + i, so in N processes
    (accelerate; each answers a share) the answers are those of one process."""
    from tqdm.auto import tqdm

    from ..distributed import is_main_process, map_in_order

    prompt_ids = [encode_messages(tokenizer, p.messages) for p in prompts]
    own = llm is None
    if own:
        longest = max(len(ids) for ids in prompt_ids)
        llm = load_gguf(path, n_ctx=context_size(longest + sampling.max_new_tokens), n_threads=n_threads,
                        seed=sampling.seed)
    try:
        return map_in_order(lambda share: [gguf_complete(llm, ids, sampling, sampling.seed + i) for i, ids in
                                           tqdm(share, desc="answering (gguf)", disable=not is_main_process())],
                            list(enumerate(prompt_ids)))
    finally:
        if own:
            llm.close()  # free the model now rather than at interpreter exit


# ---------------------------------------------------------------- perplexity


def perplexity_examples(tokenizer, prompts: list[EvalPrompt]) -> list[dict]:
    """input_ids and completion_mask of each validation prompt with its reference answer."""
    return [tokenize_prompt_completion(tokenizer, p.messages, p.reference) for p in prompts if p.reference]


def perplexity_transformers(model_path: str, examples: list[dict], device: str = "cpu", precision: str = "fp32",
                            trust_remote_code: bool = False) -> float:
    """exp(mean negative log-likelihood) of the answer tokens (answer + end token)."""
    import torch

    from ..models.loading import free_memory, load_causal_lm

    model = load_causal_lm(model_path, device, precision, trust_remote_code)
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = example["input_ids"]
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()
            nll = token_nll(logits, *scored_positions(ids, example["completion_mask"]))
            total, count = total + float(nll.sum()), count + len(nll)
    del model
    free_memory()
    return math.exp(total / count) if count else float("nan")


def perplexity_gguf(path: Path, examples: list[dict], n_threads: int = 0) -> float:
    """The same perplexity through llama.cpp, fed the very same token ids."""
    if not examples:
        return float("nan")
    llm = load_gguf(path, n_ctx=context_size(max(len(e["input_ids"]) for e in examples)), n_threads=n_threads,
                    logits_all=True)
    total, count = 0.0, 0
    for example in examples:
        rows, targets = scored_positions(example["input_ids"], example["completion_mask"])
        nll = token_nll(gguf_scores(llm, example["input_ids"]), rows, targets)
        total, count = total + float(nll.sum()), count + len(nll)
    llm.close()
    return math.exp(total / count) if count else float("nan")


# ---------------------------------------------------------------- answers + scores → tables


def answer_rows(model: str, prompts: list[EvalPrompt], answers: list[dict], word_budget: int) -> list[dict]:
    """One row per (model, prompt): the answer, how generation ended, and every automatic check."""
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        rows.append({"model": model, "prompt_id": prompt.prompt_id, "suite": prompt.suite,
                     "category": prompt.category, "question": prompt.question, "answer": answer["text"],
                     "new_tokens": answer["new_tokens"],
                     **answer_checks(answer["text"], prompt.expectations, answer["ended_on_eos"], word_budget)})
    return rows


def score_rows(judge, rows: list[dict]) -> list[dict]:
    """The judge's verdict on every answer (parse failures kept, with overall None)."""
    results = judge.score([r["question"] for r in rows], [r["answer"] for r in rows])
    if len(results) != len(rows):
        raise ValueError(f"judge {judge.name!r} returned {len(results)} results for {len(rows)} answers")
    return [{"model": r["model"], "prompt_id": r["prompt_id"], "judge": judge.name,
             "overall": res.overall, "criteria": dict(res.criteria or {}), "parse_failed": bool(res.parse_failed),
             "raw": res.raw} for r, res in zip(rows, results)]


def similarity_rows(embedder, rows: list[dict], prompts: list[EvalPrompt]) -> list[dict]:
    """Each validation answer's cosine similarity to the held-out counselor answer, shaped like score_rows'
    output (overall = the similarity) so the same tables and win rates apply. Suite prompts have no
    reference answer and get no row."""
    from ..similarity import NAME, reference_similarity

    references = {p.prompt_id: p.reference for p in prompts if p.reference}
    kept = [r for r in rows if r["prompt_id"] in references]
    values = reference_similarity(embedder, [r["answer"] for r in kept], [references[r["prompt_id"]] for r in kept])
    return [{"model": r["model"], "prompt_id": r["prompt_id"], "judge": f"{NAME} similarity", "overall": v,
             "criteria": {}, "parse_failed": False, "raw": ""} for r, v in zip(kept, values)]


def second_judge_block(second_judge, second_table, second_wins, main_judge_name: str) -> dict:
    """metrics.json's record of the second judge: its scores and win rates, or why it did not run."""
    from ..tables import model_summary

    if second_judge is None:
        return {"name": main_judge_name, "skipped": "the second judge is configured exactly like the main one: "
                                                    "two identical columns cannot disagree"}
    return {"name": second_judge.name, "scoring": second_judge.scoring,
            "judge_mean": {m: v["judge_mean"] for m, v in model_summary(second_table, {}).items()},
            "win_rates": second_wins}


def signal_block(signal_table, signal_wins, agreement: dict) -> dict:
    """metrics.json's record of the independent signal: per-model mean similarity with its interval, win rates,
    and the signal's own agreement with labels."""
    from ..similarity import NAME
    from ..tables import bootstrap_ci, models_in

    means = {}
    for model in models_in(signal_table):
        values = signal_table.loc[signal_table["model"] == model, "score"].dropna().tolist()
        mean, low, high = bootstrap_ci(values, seed=0)
        means[model] = {"mean": None if mean is None else round(mean, 4), "low": None if low is None else round(low, 4),
                        "high": None if high is None else round(high, 4), "n": len(values)}
    return {"name": f"{NAME} similarity to the held-out counselor answer", "models": means, "win_rates": signal_wins,
            "agreement": agreement}


def metrics(ctx, *, models: dict, wins: dict, categories, suite_n: int, val_n: int, judge, passes_per_answer,
            robustness: dict, second: dict, signal: dict, judge_agreement: dict, check_agreement: dict) -> dict:
    """Phase 05's metrics.json contract, from what the notebook's library calls returned."""
    from ..tables import to_json_rows

    cfg = ctx.cfg.eval
    return {
        "models": models, "win_rates": wins, "category_scores": to_json_rows(categories),
        "suite_prompts": suite_n, "val_prompts": val_n, "judge": judge.name, "judge_scoring": judge.scoring,
        "judge_forward_passes_per_answer": passes_per_answer,
        "master_key_floor_rate": robustness[judge.name]["master_key_floor_rate"],
        "length_score_correlation": robustness[judge.name]["length_score_correlation"],
        "judge_robustness": robustness, "second_judge": second, "independent_signal": signal,
        "judge_agreement": judge_agreement, "check_agreement": check_agreement,
        "word_budget": cfg.word_budget, "confidence": cfg.confidence,
    }
