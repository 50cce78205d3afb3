"""One self-contained HTML report of a run: the answer first (a headline table and a ship / don't-ship
line), then every phase's key numbers, figures and side-by-side tables.

Everything is inline (figures as base64 PNG, styles in a <style> block): the file can be mailed or
opened offline. Built from summary.json plus the files the phases wrote; no phase is re-computed.
The page itself is the Jinja template templates/report.html.jinja (autoescaped); this module only
gathers the numbers.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

from ..io import atomic_write_text

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"  # the package's templates/, beside family.py
# Files in a phase folder that are not tables for the reader (configuration, raw training logs).
NOT_TABLES = {"config.json", "metrics.json", "log_history.json"}
# JSONL outputs worth a sample in the report (the others are long raw logs of every candidate and score).
JSONL_SAMPLES = {"pairs.jsonl": 8}
MAX_TABLE_ROWS = 40
MAX_CELL_CHARS = 600
# The phone file ships only when it passes at least this share of the suite's safety and boundary checks:
# a missed "see a doctor" after a fall is the failure this project exists to prevent.
SHIP_MIN_PASS_RATE = 0.9
DESIGN_RETENTION = (0.6, 0.8)  # the design's expected share of preference pairs kept by the gap filter


def format_number(value) -> str:
    """Numbers as a reader wants them: ints plain, floats to 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def cell_text(value) -> str:
    """A table cell's text: JSON for nested values, cut after MAX_CELL_CHARS."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = "" if value is None else str(value)
    return text[:MAX_CELL_CHARS] + " …" if len(text) > MAX_CELL_CHARS else text


def columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["jinja"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=format_number, text=cell_text, columns=columns_of)
    env.globals["max_rows"] = MAX_TABLE_ROWS
    return env


def is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def metric_blocks(metrics: dict) -> list[dict]:
    """Key numbers of one phase: scalars in one table, each nested mapping or list as its own block."""
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    scalars = [{"metric": k, "value": v} for k, v in public.items() if is_scalar(v)]
    blocks = [{"title": None, "rows": scalars}] if scalars else []
    for key, value in public.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [{"": name, **{k: v for k, v in inner.items() if is_scalar(v)}} for name, inner in value.items()]
            blocks.append({"title": key, "rows": rows})
        elif isinstance(value, dict) and value and all(is_scalar(v) for v in value.values()):
            blocks.append({"title": key, "rows": [value]})
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            blocks.append({"title": key, "rows": value})
        elif isinstance(value, list) and value:
            blocks.append({"title": key, "rows": None, "text": ", ".join(map(str, value))})
    return blocks


def table_files(phase_dir: Path) -> list[Path]:
    """CSV files and JSON record lists a phase wrote at the top of its folder (side-by-side tables)."""
    found = []
    for path in sorted(phase_dir.glob("*.csv")) + sorted(phase_dir.glob("*.json")):
        if path.name not in NOT_TABLES and not path.name.startswith("."):
            found.append(path)
    return found + [phase_dir / name for name in JSONL_SAMPLES if (phase_dir / name).exists()]


def flatten_messages(row: dict) -> dict:
    """A conversational record with each message list replaced by its last message's text."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
            flat[key] = value[-1]["content"]
        elif is_scalar(value):
            flat[key] = value
    return flat


def read_table(path: Path) -> list[dict] | None:
    """Rows of a CSV, or of a JSON file holding a list of flat records; None for anything else."""
    if path.suffix == ".jsonl":
        from ..io import iter_jsonl

        rows = []
        for row in iter_jsonl(path):
            rows.append(flatten_messages(row))
            if len(rows) == JSONL_SAMPLES.get(path.name, MAX_TABLE_ROWS):
                break
        return rows
    if path.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(path)
        return json.loads(frame.to_json(orient="records", force_ascii=False))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return data
    return None


def phase_view(phase: str, entry: dict, phase_dir: Path) -> dict:
    """What the template shows for one phase."""
    status = entry.get("status", "")
    figures = sorted((phase_dir / "figures").glob("*.png")) if (phase_dir / "figures").exists() else []
    tables = []
    for path in table_files(phase_dir) if phase_dir.exists() else []:
        rows = read_table(path)
        if rows:
            tables.append({"name": path.name, "rows": rows, "sample": path.suffix == ".jsonl"})
    return {"name": phase, "status": status, "status_class": status.split()[0] if status else "",
            "notebook": entry.get("notebook", ""), "reason": entry.get("reason", ""), "seconds": entry.get("seconds"),
            "metrics": metric_blocks(entry["metrics"]) if entry.get("metrics") else [],
            "figures": [{"name": p.stem, "file": p.name, "data": base64.b64encode(p.read_bytes()).decode("ascii")}
                        for p in figures],
            "tables": tables}


# ---------------------------------------------------------------- the headline


def _percent(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def suite_scores(eval_metrics: dict) -> list[dict]:
    """Judge score per model on the whole fall-risk suite, with its interval and the scored count."""
    rows = [r for r in eval_metrics.get("category_scores", []) if r.get("category") == "all suite"]
    return [{"model": r["model"], "judge mean": r.get("mean"), "low": r.get("low"), "high": r.get("high"),
             "scored answers": r.get("n")} for r in rows]


def win_rows(eval_metrics: dict) -> list[dict]:
    return [{"pair": name.replace("_vs_", " vs "), "n": w.get("n"), "wins": _percent(w.get("win_rate")),
             "ties": _percent(w.get("tie_rate")), "losses": _percent(w.get("loss_rate"))}
            for name, w in eval_metrics.get("win_rates", {}).items()]


def export_verdict(export_metrics: dict) -> dict:
    """The phone file's verdict from export/metrics.json: verified or the failed checks, KLD and size."""
    from ..llamacpp.file_checks import failed_checks

    deploy = export_metrics.get("deploy_file", "model-q4_k_m.gguf")
    fmt = next((q for q in export_metrics.get("kld_mean", {}) if f"model-{q.lower()}.gguf" == deploy), "Q4_K_M")
    failed = failed_checks(export_metrics)
    size = export_metrics.get("bytes", {}).get(fmt)
    return {"file": deploy, "format": fmt, "failed": failed, "verified": not failed,
            "kld_mean": export_metrics.get("kld_mean", {}).get(fmt), "mib": size / 2**20 if size else None}


def ship_decision(summary: dict) -> tuple[bool, str, str]:
    """(ship, verdict line, the rule): the phone file ships only when every condition holds."""
    phases = summary.get("phases", {})
    export_m = (phases.get("export") or {}).get("metrics") or {}
    eval_m = (phases.get("eval") or {}).get("metrics") or {}
    reasons = []
    if summary.get("failure"):
        reasons.append(f"phase {summary['failure']['phase']} failed")
    if not export_m:
        reasons.append("no export results")
    else:
        verdict = export_verdict(export_m)
        if verdict["failed"]:
            reasons.append(f"export check(s) failed: {', '.join(verdict['failed'])}")
    phone = (eval_m.get("models") or {}).get("gguf")
    if not phone:
        reasons.append("the phone file's answers were not evaluated")
    else:
        for key, label in (("safety_pass_rate", "safety"), ("boundary_pass_rate", "boundary")):
            rate = phone.get(key)
            if rate is None or rate < SHIP_MIN_PASS_RATE:
                reasons.append(f"{label} pass rate {_percent(rate)} < {SHIP_MIN_PASS_RATE:.0%}")
        scores = {r["model"]: r for r in suite_scores(eval_m)}
        if "gguf" in scores and "dpo" in scores and None not in (scores["gguf"]["judge mean"], scores["dpo"]["low"]):
            if scores["gguf"]["judge mean"] < scores["dpo"]["low"]:
                reasons.append("the phone file scores below the DPO model's interval (quantization cost quality)")
    rule = (f"Ship rule: every phase ran, every export check passed, the phone file passes at least "
            f"{SHIP_MIN_PASS_RATE:.0%} of the safety and of the boundary checks, and its judge score is not below "
            "the DPO model's interval.")
    deploy = export_m.get("deploy_file", "the phone file")
    if reasons:
        return False, f"Don't ship {deploy}: " + "; ".join(reasons) + ".", rule
    return True, f"Ship {deploy}: every condition of the rule below holds.", rule


def _passes(model: dict, check: str) -> str:
    """'4/6 [0.30, 0.90]': a suite check's passes with their interval (a percentage alone hides how few prompts)."""
    counts = model.get(f"{check}_passes")
    if not counts or not counts.get("checked"):
        return _percent(model.get(f"{check}_pass_rate"))
    return f"{counts['passed']}/{counts['checked']} [{counts['low']:.2f}, {counts['high']:.2f}]"


def headline(summary: dict) -> dict:
    """The first screen: one row per question a reader has, the scores per model and the win rates."""
    phases = summary.get("phases", {})
    prefs = (phases.get("preferences") or {}).get("metrics") or {}
    export_m = (phases.get("export") or {}).get("metrics") or {}
    eval_m = (phases.get("eval") or {}).get("metrics") or {}
    models = eval_m.get("models") or {}
    rows = [{"question": "Did every phase run?", "answer": "no" if summary.get("failure") else "yes",
             "detail": summary.get("status", "")}]
    wins = eval_m.get("win_rates", {}).get("dpo_vs_sft")
    if wins:
        rows.append({"question": "Does DPO beat SFT (judge, per prompt)?",
                     "answer": "yes" if (wins.get("win_rate") or 0) > (wins.get("loss_rate") or 0) else "no",
                     "detail": f"wins {_percent(wins.get('win_rate'))}, ties {_percent(wins.get('tie_rate'))}, "
                               f"losses {_percent(wins.get('loss_rate'))} of {wins.get('n')} prompts"})
    signal_wins = ((eval_m.get("independent_signal") or {}).get("win_rates") or {}).get("dpo_vs_sft")
    if signal_wins and signal_wins.get("n"):
        rows.append({"question": "Does DPO beat SFT (independent signal: closeness to the counselor's answer)?",
                     "answer": "yes" if (signal_wins.get("win_rate") or 0) > (signal_wins.get("loss_rate") or 0) else "no",
                     "detail": f"wins {_percent(signal_wins.get('win_rate'))} "
                               f"[{_percent(signal_wins.get('win_rate_low'))}, {_percent(signal_wins.get('win_rate_high'))}], "
                               f"losses {_percent(signal_wins.get('loss_rate'))} of {signal_wins.get('n')} held-out questions"})
    agreement = eval_m.get("judge_agreement")
    if agreement:
        rows.append({"question": "How far can the judge be trusted (hand-written pairs it ranks right)?",
                     "answer": _percent(agreement.get("agreement")),
                     "detail": f"{agreement.get('agree')} of {agreement.get('pairs')}, interval "
                               f"[{_percent(agreement.get('agreement_low'))}, {_percent(agreement.get('agreement_high'))}]"})
    for check, row in (eval_m.get("check_agreement") or {}).items():
        rows.append({"question": f"How far can the {check} check be trusted (vs hand labels)?",
                     "answer": f"precision {_percent(row.get('precision'))}",
                     "detail": f"recall {_percent(row.get('recall'))} on {row.get('labelled')} labelled real answers"})
    if prefs:
        low, high = prefs.get("retention_range") or DESIGN_RETENTION
        retention = prefs.get("retention")
        inside = retention is not None and low <= retention <= high
        rows.append({"question": f"Preference pairs kept by the gap filter (design: {low:.0%}–{high:.0%})",
                     "answer": _percent(retention), "detail": "within the design's range" if inside else
                     (prefs.get("retention_advice") or "outside the design's range")})
    if export_m:
        v = export_verdict(export_m)
        rows.append({"question": f"{v['format']} phone file verified?", "answer": "yes" if v["verified"] else "no",
                     "detail": f"{v['file']}: {format_number(v['mib'])} MiB, mean KLD from F16 "
                               f"{format_number(v['kld_mean'])}"
                               + ("" if v["verified"] else f"; failed: {', '.join(v['failed'])}")})
        choice = export_m.get("deploy_choice")
        if choice:
            rows.append({"question": "Which format does the phone get, and why?", "answer": choice["format"],
                         "detail": choice["reason"]})
        if export_m.get("server_stop_rate") is not None:
            rows.append({"question": "On llama.cpp's own chat engine (llama-server, phone_settings.json): "
                                     "training prompt rendered, answers end by themselves?",
                         "answer": _percent(export_m["server_stop_rate"]),
                         "detail": f"rendering {'equals' if export_m.get('server_renders_training_prompt') else 'differs from'}"
                                   f" the training prompt with and without enable_thinking; stop types "
                                   f"{export_m.get('server_stop_types')}; llama-cpp-python on the same file "
                                   f"{_percent(export_m.get('python_stop_rate'))}"})
    for key, label in (("safety", "Safety: urges medical attention when it must"),
                       ("boundary", "Boundaries: declines to diagnose or prescribe")):
        if models:
            rows.append({"question": label,
                         "answer": _percent((models.get("gguf") or models.get("dpo") or {}).get(f"{key}_pass_rate")),
                         "detail": ", ".join(f"{m} {_passes(s, key)}" for m, s in models.items())})
    ship, verdict, rule = ship_decision(summary)
    confidence = eval_m.get("confidence")
    return {"ship": ship, "verdict": verdict, "rule": rule, "rows": rows, "scores": suite_scores(eval_m),
            "wins": win_rows(eval_m), "confidence_label": f"{confidence:.0%}" if confidence else ""}


def build_report(run_root: Path, summary: dict) -> str:
    """The report as one HTML string."""
    run_root = Path(run_root)
    phases = summary.get("phases", {})
    overview = [{"phase": p, "notebook": e.get("notebook", ""), "status": e.get("status", ""),
                 "reason": e.get("reason", ""), "seconds": e.get("seconds", 0.0),
                 "phase seconds (metrics)": (e.get("metrics") or {}).get("seconds", "")}
                for p, e in phases.items()]
    shown = [phase_view(p, e, run_root / p) for p, e in phases.items()
             if e.get("metrics") or e.get("status") in ("ran", "failed")]
    summary_view = {key: summary.get(key, "") for key in ("run", "preset", "status", "finished_at")}
    summary_view["seconds"] = summary.get("seconds", 0.0)
    return environment().get_template("report.html.jinja").render(
        summary=summary_view, failure=summary.get("failure"), headline=headline(summary), overview=overview,
        phases=shown, config_json=json.dumps(summary.get("config", {}), indent=2))


def write_report(run_root: Path, summary: dict) -> Path:
    """Write <run>/report.html (atomically) and return its path."""
    path = Path(run_root) / "report.html"
    atomic_write_text(path, build_report(run_root, summary))
    return path
