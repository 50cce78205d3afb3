"""Answers and judge scores → the tables of notebook 05 and metrics.json: scores per category with
bootstrap intervals, win rates, pass rates of the automatic checks, answers side by side; and the statistics
the phases share (bootstrap and Wilson intervals, Pearson correlation)."""

from __future__ import annotations

import json
import math

from .suite import CATEGORIES, VALIDATION

MODEL_ORDER = ("base", "sft", "dpo", "gguf")


def results_table(answers: list[dict], scores: list[dict]):
    """Answers joined with their scores: one row per (model, prompt), the long table every summary starts from."""
    import pandas as pd

    frame = pd.DataFrame(answers)
    score_frame = pd.DataFrame(scores)[["model", "prompt_id", "overall", "parse_failed"]].rename(
        columns={"overall": "score"})
    return frame.merge(score_frame, on=["model", "prompt_id"], how="left", validate="one_to_one")


def bootstrap_ci(values, confidence: float = 0.95, samples: int = 2000, seed: int = 0) -> tuple:
    """(mean, low, high): percentile bootstrap of the mean; (None, None, None) without values."""
    import numpy as np

    values = np.asarray([v for v in values if v is not None and not is_nan(v)], dtype=float)
    if values.size == 0:
        return None, None, None
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, float(low), float(high)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple:
    """(low, high) of a share successes / n: the Wilson score interval.

    Used for agreement and win rates instead of the bootstrap, which collapses to a single point when every
    trial agrees (27 of 27 would read [1.00, 1.00], as if 27 pairs proved perfection); Wilson's interval stays
    honest at 0 % and 100 % (27 of 27: [0.88, 1.00]). (None, None) without trials.
    """
    from statistics import NormalDist

    if n <= 0:
        return None, None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation (None when undefined: fewer than 3 points or a constant series)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def models_in(table) -> list[str]:
    """Models present in the table, base → sft → dpo → gguf first."""
    present = list(dict.fromkeys(table["model"]))
    return [m for m in MODEL_ORDER if m in present] + [m for m in present if m not in MODEL_ORDER]


def category_scores(table, confidence: float = 0.95, samples: int = 2000, seed: int = 0):
    """Judge score per category and model: mean, CI low/high, n (scored answers); 'all suite' too."""
    import pandas as pd

    rows = []
    suite = table[table["suite"] != VALIDATION]
    groups = [(c, table[table["category"] == c]) for c in (VALIDATION, *CATEGORIES)]
    groups.append(("all suite", suite))
    for category, part in groups:
        for model in models_in(table):
            scores = part.loc[part["model"] == model, "score"].dropna().tolist()
            if not scores and part[part["model"] == model].empty:
                continue
            mean, low, high = bootstrap_ci(scores, confidence, samples, seed)
            rows.append({"category": category, "model": model, "mean": mean, "low": low, "high": high,
                         "n": len(scores)})
    return pd.DataFrame(rows)


def win_rate(table, model: str, other: str, confidence: float = 0.95, samples: int = 2000, seed: int = 0) -> dict:
    """Per prompt, does `model` score higher than `other`? Shares of wins, ties and losses (scored pairs only),
    the win rate's Wilson interval and a bootstrap interval (over prompts) of the net rate (wins - losses) / n."""
    empty = {"n": 0, "wins": 0, "ties": 0, "losses": 0, "win_rate": None, "tie_rate": None, "loss_rate": None,
             "win_rate_low": None, "win_rate_high": None, "net_rate": None, "net_rate_low": None,
             "net_rate_high": None}
    wide = table.pivot(index="prompt_id", columns="model", values="score")
    if model not in wide or other not in wide:
        return empty
    both = wide[[model, other]].dropna()
    n = len(both)
    if not n:
        return empty
    wins, ties = int((both[model] > both[other]).sum()), int((both[model] == both[other]).sum())
    losses = n - wins - ties
    rate = (lambda k: round(k / n, 4))
    net = [1.0 if a > b else -1.0 if a < b else 0.0 for a, b in zip(both[model], both[other])]
    win_low, win_high = wilson_interval(wins, n, confidence)
    net_mean, net_low, net_high = bootstrap_ci(net, confidence, samples, seed)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": rate(wins), "tie_rate": rate(ties),
            "loss_rate": rate(losses), "win_rate_low": round(win_low, 4), "win_rate_high": round(win_high, 4),
            "net_rate": round(net_mean, 4), "net_rate_low": round(net_low, 4), "net_rate_high": round(net_high, 4)}


WIN_PAIRS = (("dpo", "sft"), ("sft", "base"), ("dpo", "base"), ("gguf", "dpo"))


def win_rates(table, confidence: float = 0.95, samples: int = 2000, seed: int = 0) -> dict:
    """Win rates of each model over the one before it (and of the phone file over its source)."""
    return {f"{a}_vs_{b}": win_rate(table, a, b, confidence, samples, seed) for a, b in WIN_PAIRS}


def _checked(values) -> list[bool]:
    """The outcomes of a check, without the answers it did not apply to (None or NaN)."""
    return [bool(v) for v in values if v is not None and not is_nan(v)]


def _rate(values) -> float | None:
    values = _checked(values)
    return round(sum(values) / len(values), 4) if values else None


def rate_interval(values, confidence: float = 0.95) -> dict:
    """{passed, checked, low, high}: a check's passes with their Wilson interval (6 prompts leave a wide one)."""
    values = _checked(values)
    low, high = wilson_interval(sum(values), len(values), confidence)
    return {"passed": sum(values), "checked": len(values),
            "low": None if low is None else round(low, 4), "high": None if high is None else round(high, 4)}


def model_summary(table, perplexities: dict) -> dict:
    """metrics.json's per-model block: judge mean, perplexity, suite pass rates, generation hygiene."""
    summary = {}
    for model in models_in(table):
        part = table[table["model"] == model]
        scores = part["score"].dropna()
        ppl = perplexities.get(model)
        summary[model] = {
            "judge_mean": round(float(scores.mean()), 4) if len(scores) else None,
            "judge_parse_failures": int(part["parse_failed"].fillna(False).astype(bool).sum()),
            "perplexity": round(ppl, 4) if ppl is not None and math.isfinite(ppl) else None,
            "safety_pass_rate": _rate(part["urges_medical"].tolist()),
            "boundary_pass_rate": _rate(part["declines"].tolist()),
            "safety_passes": rate_interval(part["urges_medical"].tolist()),
            "boundary_passes": rate_interval(part["declines"].tolist()),
            "think_leaks": int(part["think_leak"].sum()),
            "ended_on_eos_rate": _rate(part["ended_on_eos"].tolist()),
            "suite_ended_on_eos_rate": _rate(part.loc[part["suite"] != VALIDATION, "ended_on_eos"].tolist()),
            "within_budget_rate": _rate(part["within_budget"].tolist()),
            "mean_words": round(float(part["words"].mean()), 2),
            "distinct_2": round(float(part["distinct_2"].mean()), 4),
            "answers": int(len(part)),
            "suite_answers": int((part["suite"] != VALIDATION).sum()),
            "suite_scored": int(part.loc[part["suite"] != VALIDATION, "score"].notna().sum()),
        }
    return summary


def checks_table(table):
    """Per model: pass rates of the automatic checks (the suite checks only where the prompt expects them)."""
    import pandas as pd

    rows = []
    for model in models_in(table):
        part = table[table["model"] == model]
        rows.append({"model": model,
                     "safety: urges medical attention": _rate(part["urges_medical"].tolist()),
                     "boundary: declines to diagnose/prescribe": _rate(part["declines"].tolist()),
                     "ended on end token": _rate(part["ended_on_eos"].tolist()),
                     "within word budget": _rate(part["within_budget"].tolist()),
                     "think leaks": int(part["think_leak"].sum()),
                     "mean words": round(float(part["words"].mean()), 1),
                     "distinct-2": round(float(part["distinct_2"].mean()), 3)})
    return pd.DataFrame(rows).set_index("model")


def answers_by_prompt(table):
    """One row per prompt: the question, then each model's answer and score next to each other."""
    wide = table.pivot(index="prompt_id", columns="model", values=["answer", "score"])
    info = table.drop_duplicates("prompt_id").set_index("prompt_id")[["suite", "category", "question"]]
    columns = {}
    for model in models_in(table):
        columns[f"{model} answer"] = wide[("answer", model)]
        columns[f"{model} score"] = wide[("score", model)]
    import pandas as pd

    out = info.join(pd.DataFrame(columns))
    order = list(dict.fromkeys(table["prompt_id"]))
    return out.loc[order].reset_index()


def score_pivot(categories, value: str = "mean"):
    """category × model table of one column of category_scores (for plots.plot_grouped_bars)."""
    pivot = categories.pivot(index="category", columns="model", values=value)
    rows = [c for c in (VALIDATION, *CATEGORIES, "all suite") if c in pivot.index]
    cols = [m for m in MODEL_ORDER if m in pivot.columns] + [m for m in pivot.columns if m not in MODEL_ORDER]
    return pivot.loc[rows, cols]


def error_half_widths(categories):
    """Half the width of each confidence interval, for symmetric error bars (the table has the exact bounds)."""
    frame = categories.assign(half=(categories["high"] - categories["low"]) / 2)
    return score_pivot(frame, "half")


def to_json_rows(frame) -> list[dict]:
    """DataFrame rows as plain JSON values (NaN → None)."""
    return json.loads(frame.to_json(orient="records", force_ascii=False))


def describe_run(models: dict, wins: dict, categories) -> str:
    """What this run's evaluation shows, in sentences computed from its numbers (never written in advance)."""
    suite = categories[categories["category"] == "all suite"].set_index("model")
    lines = []
    order = [m for m in MODEL_ORDER if m in suite.index]
    if order:
        lines.append("judge mean on the suite: " + " → ".join(
            f"{m} {suite.loc[m, 'mean']:.2f} [{suite.loc[m, 'low']:.2f}, {suite.loc[m, 'high']:.2f}]" for m in order))
    for pair, rates in wins.items():
        if rates["n"]:
            a, b = pair.split("_vs_")
            lines.append(f"{a} vs {b}: {a} scored higher on {rates['wins']} of {rates['n']} prompts, "
                         f"tied on {rates['ties']}, lower on {rates['losses']}")
    ends = {m: s.get("suite_ended_on_eos_rate") for m, s in models.items()}
    lines.append("suite answers that ended on the end-of-turn token: " + ", ".join(
        f"{m} {rate:.0%}" for m, rate in ends.items() if rate is not None))
    ppl = {m: s["perplexity"] for m, s in models.items() if s.get("perplexity") is not None}
    if "base" in ppl and "sft" in ppl:
        change = "lowered" if ppl["sft"] < ppl["base"] else "did not lower"
        lines.append(f"SFT {change} the perplexity of held-out answers: {ppl['base']:.2f} → {ppl['sft']:.2f}")
    return "\n".join(lines)
