"""Phase 02, step 2: preference pairs for DPO from the candidates rejected.py sampled.

chosen = the human answer from the data set; rejected = the sampled (maybe degraded) answer. A judge
scores every answer on its own; a pair is kept when chosen - rejected >= gap. The design document
expects 60-80 % of pairs to survive; `retention_advice` says what to change when a run falls outside
that range. Also here: the summaries notebook 02 shows, and the judges' agreement on hand-written pairs.
The judge caches its scores, so a re-run costs nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..chat import word_count
from ..io import iter_jsonl, write_jsonl
from ..tables import pearson, wilson_interval
from .rejected import DEGRADATIONS, question

RETENTION_RANGE = (0.6, 0.8)  # the design document's expected share of pairs that survive the gap filter


# ---------------------------------------------------------------------------------------------
# Judging and filtering
# ---------------------------------------------------------------------------------------------

def score_candidates(judge, candidates: list[dict], progress: bool = True) -> list[dict]:
    """Both answers of every candidate scored by the judge, each on its own (one row per candidate)."""
    prompts = [question(c) for c in candidates]
    results = judge.score(prompts + prompts, [c["chosen"] for c in candidates] + [c["rejected"] for c in candidates],
                          progress=progress)
    n = len(candidates)
    rows = []
    for c, chosen, rejected in zip(candidates, results[:n], results[n:]):
        row = {"id": c["id"], "split": c["split"], "judge": judge.name}
        for side, res in (("chosen", chosen), ("rejected", rejected)):
            row.update({f"{side}_overall": res.overall, f"{side}_criteria": res.criteria,
                        f"{side}_parse_failed": res.parse_failed, f"{side}_error": res.error,
                        f"{side}_raw": res.raw if res.parse_failed else ""})
        both = chosen.overall is not None and rejected.overall is not None
        row["gap"] = round(chosen.overall - rejected.overall, 6) if both else None
        rows.append(row)
    return rows


def sample_phase(preset: str = "tiny", run_name: str = "demo", overrides: dict | None = None,
                 artifacts: Path | None = None) -> dict:
    """Notebook 02's two long steps, in this process or in each of N (the `sample` command under accelerate launch):
    the rejected answers (candidates.jsonl) and both judges' scores of them (the judge cache). Notebook 02 then
    finds every answer done and every score cached, and goes on with the filtering and the figures."""
    from ..distributed import is_main_process
    from ..io import read_jsonl
    from ..judges import get_judge
    from .rejected import choose_records, sample_with_sft_model
    from ..pipeline.runtime import process_context

    ctx = process_context("preferences", preset, run_name, overrides, artifacts)
    cfg = ctx.cfg.preferences
    data_dir = ctx.input_dir("data")
    train_records = choose_records(read_jsonl(data_dir / "train.jsonl"), cfg.max_prompts, cfg.sampling.seed)
    val_records = choose_records(read_jsonl(data_dir / "val.jsonl"), cfg.max_val_prompts, cfg.sampling.seed)
    train, val, device = sample_with_sft_model(ctx.cfg.model, cfg, ctx.input_dir("sft"), train_records, val_records,
                                               ctx.out / "candidates.jsonl", progress=is_main_process())
    judged = {}
    for judge_cfg in (cfg.judge, cfg.second_judge):
        judge = get_judge(judge_cfg)
        score_candidates(judge, train + val, progress=is_main_process())
        judged[judge.name] = dict(judge.stats)
    return {"candidates": len(train) + len(val), "device": device, "judges": judged}


def compare_judges(main: list[dict], second: list[dict], gap: float) -> dict:
    """The main and the second judge on the same candidates: each one's retention at the gap, how many
    pairs both would keep, and the correlation of their overall scores (rows from score_candidates)."""
    def keeps(row):
        return row["gap"] is not None and row["gap"] >= gap

    out = {"judges": {}}
    for label, rows in (("judge", main), ("second_judge", second)):
        scored = [r for r in rows if r["gap"] is not None]
        out["judges"][label] = {"name": rows[0]["judge"] if rows else None, "scored": len(scored),
                                "kept": sum(map(keeps, rows)),
                                "retention": round(sum(map(keeps, rows)) / len(scored), 4) if scored else None}
    out["both_keep"] = sum(keeps(a) and keeps(b) for a, b in zip(main, second))
    xs, ys = [], []
    for a, b in zip(main, second):
        for side in ("chosen", "rejected"):
            if a[f"{side}_overall"] is not None and b[f"{side}_overall"] is not None:
                xs.append(a[f"{side}_overall"])
                ys.append(b[f"{side}_overall"])
    corr = pearson(xs, ys)
    out["overall_correlation"] = None if corr is None else round(corr, 4)
    return out


@dataclass
class FilterReport:
    """What the gap filter did. Retention = kept / scored, where scored pairs have both scores."""

    gap: float
    candidates: int = 0
    unscored: int = 0  # a parse failure on either side: neither kept nor in the retention denominator
    empty: int = 0  # the rejected answer is empty (nothing to learn, and DPO refuses it)
    identical: int = 0  # chosen and rejected are the same text
    small_gap: int = 0  # chosen - rejected < gap (includes pairs where the rejected answer scored higher)
    kept: int = 0

    @property
    def scored(self) -> int:
        return self.candidates - self.unscored

    @property
    def retention(self) -> float | None:
        return self.kept / self.scored if self.scored else None

    def as_dict(self) -> dict:
        return {**asdict(self), "scored": self.scored, "retention": self.retention}


def pair_status(candidate: dict, scores: dict, gap: float) -> str:
    """Why a pair is kept or dropped: kept, unscored, empty, identical or small_gap."""
    if scores["gap"] is None:
        return "unscored"
    if not candidate["rejected"].strip():
        return "empty"
    if " ".join(candidate["chosen"].split()) == " ".join(candidate["rejected"].split()):
        return "identical"
    return "kept" if scores["gap"] >= gap else "small_gap"


def filter_pairs(candidates: list[dict], scores: list[dict], gap: float) -> tuple[list[dict], FilterReport]:
    """(kept candidates joined with their scores and a status, report); all rows get a 'status'."""
    by_id = {s["id"]: s for s in scores}
    report = FilterReport(gap=gap, candidates=len(candidates))
    joined = []
    for c in candidates:
        if c["id"] not in by_id:
            raise KeyError(f"candidate {c['id']!r} ({c['split']}) has no scores")
        row = {**c, **by_id[c["id"]]}
        row["status"] = pair_status(c, by_id[c["id"]], gap)
        setattr(report, row["status"], getattr(report, row["status"]) + 1)
        joined.append(row)
    return joined, report


def retention_advice(retention: float | None, gap: float, judge_clears_gap: float | None = None,
                     low: float = RETENTION_RANGE[0], high: float = RETENTION_RANGE[1]) -> str | None:
    """What the design document suggests when retention is outside [low, high] (None inside it).

    judge_clears_gap: the share of hand-written pairs (better vs clearly worse) that the judge separates
    by at least the gap. When that is low too, the judge's resolution, not the sampled answers, is what
    limits retention, and the advice says so first.
    """
    if retention is None:
        return "No pair has both scores: look at the judge's parse failures before anything else."
    if retention < low and judge_clears_gap is not None and judge_clears_gap < low:
        return (f"Retention {retention:.0%} is below {low:.0%}, but even on hand-written pairs whose worse answer is "
                f"plainly worse this judge puts only {judge_clears_gap:.0%} of them {gap:g} or more points apart: "
                "its scale is too compressed for this gap, so the judge, not the sampled answers, limits retention. "
                "Use a stronger judge (transformers or llama_cpp) before changing sampling; only then apply the "
                "design document's remedies for pairs that are too similar (temperature 1.8-2.0, more "
                f"degradations, and as a last resort a gap of 1 instead of {gap:g}).")
    if retention < low:
        return (f"Retention {retention:.0%} is below {low:.0%}: rejected answers are too close to the human ones "
                "(or the judge cannot tell them apart). If the SFT model is already this good, ask whether DPO is "
                "needed at all. Otherwise: sample at a higher temperature (1.8-2.0), turn on more degradations "
                f"(truncation, dropping the first sentence, a repetition penalty below 1.0), and only as a last "
                f"resort lower the gap from {gap:g} to 1 (noisier preferences).")
    if retention > high:
        return (f"Retention {retention:.0%} is above {high:.0%}: almost every rejected answer is clearly worse, "
                "so the pairs may be too easy to teach fine distinctions (the design document's warning about "
                "random text and base-model outputs). Check that rejected answers come from the SFT model, "
                "lower the degradation rates or the temperature towards 1.0-1.2, or raise the gap to 3 "
                "(fewer but cleaner pairs). On the tiny preset a weak SFT model makes this expected.")
    return None


def judge_clears_gap(agreement: dict[str, dict], filter_with: str, judge_name: str, second_name: str) -> float | None:
    """Share of the scored hand-written pairs that the judge deciding the filter puts `gap` or more apart.

    agreement: judge name -> judge_agreement's summary (with clears_gap). The judge deciding is the main one, or
    with filter_with 'second_judge' the second one when it was measured on the pairs. None when it scored none.
    """
    summary = agreement[judge_name] if filter_with == "judge" else agreement.get(second_name, agreement[judge_name])
    scored = summary["pairs"] - summary["parse_failures"]
    return summary["clears_gap"] / scored if scored > 0 else None


def preference_row(row: dict) -> dict:
    """One pair in TRL's conversational preference format, plus metadata."""
    return {
        "prompt": row["prompt"],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
        "id": row["id"], "question_key": row.get("question_key", ""), "split": row["split"],
        "degradation": row["degradation"], "chosen_score": row["chosen_overall"],
        "rejected_score": row["rejected_overall"], "gap": row["gap"], "judge": row["judge"],
    }


def write_pairs(path: Path, rows: list[dict]) -> int:
    """Write the kept rows of `rows` as TRL preference pairs (atomic); returns how many."""
    return write_jsonl(path, [preference_row(r) for r in rows if r["status"] == "kept"])


# ---------------------------------------------------------------------------------------------
# Summaries for the notebook
# ---------------------------------------------------------------------------------------------

def criteria_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{criterion: {"chosen": mean, "rejected": mean}} over pairs with both scores."""
    from ..judges import CRITERIA

    scored = [r for r in rows if r["gap"] is not None]
    out = {}
    for name in CRITERIA + ("overall",):
        out[name] = {}
        for side in ("chosen", "rejected"):
            values = [r[f"{side}_overall"] if name == "overall" else r[f"{side}_criteria"][name] for r in scored]
            out[name][side] = round(sum(values) / len(values), 3) if values else None
    return out


def length_summary(rows: list[dict]) -> dict:
    """Mean words of chosen and rejected answers, and how strongly the judge's score follows length."""
    scored = [r for r in rows if r["gap"] is not None]
    lengths = [word_count(r["chosen"]) for r in scored] + [word_count(r["rejected"]) for r in scored]
    overall = [r["chosen_overall"] for r in scored] + [r["rejected_overall"] for r in scored]
    kept = [r for r in scored if r["status"] == "kept"]

    def mean(values):
        return round(sum(values) / len(values), 1) if values else None

    corr = pearson(lengths, overall)
    within = {side: pearson([word_count(r[side]) for r in scored], [r[f"{side}_overall"] for r in scored])
              for side in ("chosen", "rejected")}
    return {
        "chosen_words_mean": mean([word_count(r["chosen"]) for r in scored]),
        "rejected_words_mean": mean([word_count(r["rejected"]) for r in scored]),
        "kept_chosen_words_mean": mean([word_count(r["chosen"]) for r in kept]),
        "kept_rejected_words_mean": mean([word_count(r["rejected"]) for r in kept]),
        "length_score_correlation": None if corr is None else round(corr, 3),
        # within one kind of answer, length and quality are not confounded: a high value here is length bias
        **{f"length_score_correlation_{side}": None if c is None else round(c, 3) for side, c in within.items()},
    }


def by_degradation(rows: list[dict]) -> dict[str, dict]:
    """Per degradation: pairs, kept, retention and the mean rejected score."""
    out = {}
    for name in DEGRADATIONS:
        part = [r for r in rows if r["degradation"] == name]
        scored = [r for r in part if r["gap"] is not None]
        kept = sum(r["status"] == "kept" for r in part)
        out[name] = {
            "pairs": len(part), "kept": kept, "retention": round(kept / len(scored), 3) if scored else None,
            "rejected_mean": (round(sum(r["rejected_overall"] for r in scored) / len(scored), 2) if scored else None),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Judge agreement on hand-written pairs
# ---------------------------------------------------------------------------------------------

JUDGE_PAIR_FIELDS = ("id", "prompt", "better", "worse", "flaw")


def load_judge_pairs(path: Path) -> list[dict]:
    """Hand-written (prompt, better, worse, flaw) pairs, checked row by row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it holds the hand-written pairs used to check the judges")
    rows = []
    for number, row in enumerate(iter_jsonl(path), start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
        for name in JUDGE_PAIR_FIELDS:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}: row {number}, field {name!r}: expected non-empty text, got {value!r}")
        rows.append(row)
    ids = Counter(r["id"] for r in rows)
    repeated = [k for k, v in ids.items() if v > 1]
    if repeated:
        raise ValueError(f"{path}: id {repeated[0]!r} appears {ids[repeated[0]]} times")
    return rows


def pair_outcome(better: float | None, worse: float | None) -> str:
    """agree (better scored higher), tie, disagree, or parse_failure (either score missing)."""
    if better is None or worse is None:
        return "parse_failure"
    if better > worse:
        return "agree"
    return "tie" if better == worse else "disagree"


def judge_agreement(judge, pairs: list[dict], progress: bool = True, gap: float | None = None) -> tuple[dict, list[dict]]:
    """(summary, per-pair rows) of how often the judge scores the better answer higher.

    agreement = agree / (pairs with both scores); ties and parse failures are counted separately.
    mean_margin is the average better - worse; with `gap`, clears_gap counts pairs the gap filter would keep.
    """
    prompts = [p["prompt"] for p in pairs]
    results = judge.score(prompts + prompts, [p["better"] for p in pairs] + [p["worse"] for p in pairs],
                          progress=progress)
    n = len(pairs)
    rows = []
    for pair, better, worse in zip(pairs, results[:n], results[n:]):
        rows.append({"judge": judge.name, "id": pair["id"], "flaw": pair["flaw"], "better": better.overall,
                     "worse": worse.overall, "outcome": pair_outcome(better.overall, worse.overall)})
    counts = Counter(r["outcome"] for r in rows)
    scored = n - counts["parse_failure"]
    margins = [r["better"] - r["worse"] for r in rows if r["outcome"] != "parse_failure"]
    # the interval says how far 27 hand-written pairs pin the agreement down
    low, high = wilson_interval(counts["agree"], scored)
    summary = {"judge": judge.name, "pairs": n, "agree": counts["agree"], "ties": counts["tie"],
               "disagree": counts["disagree"], "parse_failures": counts["parse_failure"],
               "agreement": round(counts["agree"] / scored, 3) if scored else None,
               "agreement_low": None if low is None else round(low, 3),
               "agreement_high": None if high is None else round(high, 3),
               "mean_margin": round(sum(margins) / len(margins), 3) if margins else None}
    if gap is not None:
        summary["clears_gap"] = sum(m >= gap for m in margins)
    return summary, rows


def parse_failures(rows: list[dict]) -> int:
    """Answers the judge could not score, chosen and rejected sides counted apart."""
    return sum(r["chosen_parse_failed"] + r["rejected_parse_failed"] for r in rows)


def metrics(ctx, *, train_records: list[dict], val_records: list[dict], train_candidates: list[dict],
            val_candidates: list[dict], scores: list[dict], train_rows: list[dict], val_rows: list[dict],
            report: FilterReport, val_report: FilterReport, judge, second_judge, passes_per_answer: int,
            scoring_stats: dict, robustness: dict, judges_compared: dict, agreement: dict, not_run: dict,
            sampling_seconds: float, judging_seconds: float) -> dict:
    """Phase 02's metrics.json contract, from what the notebook's library calls returned.

    scores: the main judge's scores of every candidate (score_candidates); train_rows/val_rows and the reports:
    filter_pairs' results; scoring_stats: judge.stats right after scoring the candidates; robustness and agreement:
    judge name -> probe_judge's and judge_agreement's summaries.
    """
    from ..judges.probe import length_score_correlation

    cfg = ctx.cfg.preferences
    candidates = train_candidates + val_candidates
    rows = train_rows + val_rows
    clears_gap = judge_clears_gap(agreement, cfg.filter_with, judge.name, second_judge.name)
    return {
        "prompts": len(train_records),
        "generated": len(train_candidates),
        "judged": 2 * len(train_candidates),
        "parse_failures": parse_failures(train_rows),
        "kept": report.kept,
        "retention": report.retention,
        "retention_range": list(RETENTION_RANGE),
        "retention_advice": retention_advice(report.retention, cfg.gap, clears_gap),
        "gap_threshold": cfg.gap,
        "filter": report.as_dict(),
        "heldout": {"prompts": len(val_records), "generated": len(val_candidates), "judged": 2 * len(val_candidates),
                    "parse_failures": parse_failures(val_rows), "kept": val_report.kept,
                    "retention": val_report.retention},
        "judge": judge.name,
        "judge_scoring": judge.scoring,
        "judge_forward_passes_per_answer": passes_per_answer,
        "master_key_floor_rate": robustness[judge.name]["master_key_floor_rate"],
        "length_score_correlation": length_score_correlation(  # over every answer the main judge scored
            [c["chosen"] for c in candidates] + [c["rejected"] for c in candidates],
            [s["chosen_overall"] for s in scores] + [s["rejected_overall"] for s in scores]),
        "judge_robustness": robustness,
        "second_judge": second_judge.name,
        "second_judge_scoring": second_judge.scoring,
        "filter_with": cfg.filter_with,
        "judges_compared": judges_compared,
        "judge_cache_hits": scoring_stats.get("cache_hits", 0),
        "judge_retries": scoring_stats.get("retries", 0),
        "judge_agreement": agreement,
        "judges_not_run": not_run,
        "criteria_means": criteria_means(rows),
        "by_degradation": by_degradation(train_rows),
        "lengths": length_summary(rows),
        "temperature": cfg.sampling.temperature,
        "ended_on_eos": sum(c["ended_on_eos"] for c in candidates),
        "think_leaks": sum(c["think_leak"] for c in candidates),
        "sampling_seconds": round(sampling_seconds, 2),
        "judging_seconds": round(judging_seconds, 2),
    }


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------

def shorten(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def example_rows(rows: list[dict], n: int, status: str | None = None, width: int = 160) -> list[dict]:
    """Up to n rows (optionally of one status) with shortened texts, for a notebook table."""
    picked = [r for r in rows if status is None or r["status"] == status][:n]
    return [{"question": shorten(question(r), 90), "chosen": shorten(r["chosen"], width),
             "rejected": shorten(r["rejected"], width), "degradation": r["degradation"],
             "chosen_score": r["chosen_overall"], "rejected_score": r["rejected_overall"], "gap": r["gap"],
             "status": r["status"]} for r in picked]


def agreement_judges(main_judge, judge_cfg, gguf_path: str | None = None, cache_dir: Path | None = None
                     ) -> tuple[dict, dict[str, str]]:
    """({name: judge} to measure on the hand-written pairs, {backend: why it is not measured}).

    Always the pipeline's judge and the rubric; a llama.cpp judge when a GGUF path is given; a
    transformers judge only when it is the pipeline's (it needs a large model, usually a GPU).
    """
    from ..config import JudgeConfig
    from ..judges import get_judge

    chosen, not_run = {main_judge.name: main_judge}, {}
    if judge_cfg.backend != "rubric":
        chosen["rubric"] = get_judge(JudgeConfig(backend="rubric"), cache_dir=cache_dir)
    if judge_cfg.backend != "transformers":
        not_run["transformers"] = ("not configured: set judge_backend='transformers' and judge_model (Qwen3-4B in "
                                   "the qwen3-0.6b preset; needs a GPU)")
    if judge_cfg.backend == "llama_cpp":
        return chosen, not_run
    if not gguf_path:
        not_run["llama_cpp"] = "off: pass agreement_gguf='path/to/model.gguf' to measure a llama.cpp judge"
    elif not Path(gguf_path).is_file():
        not_run["llama_cpp"] = f"agreement_gguf={str(gguf_path)!r} is not a file"
    else:
        gguf = get_judge(JudgeConfig(backend="llama_cpp", model=str(gguf_path), temperature=judge_cfg.temperature,
                                     n_ctx=judge_cfg.n_ctx, max_new_tokens=judge_cfg.max_new_tokens),
                         cache_dir=cache_dir)
        chosen[gguf.name] = gguf
    return chosen, not_run
