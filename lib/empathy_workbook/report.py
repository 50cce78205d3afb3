"""One self-contained HTML report of a run: key numbers, every figure, the side-by-side tables.

Everything is inline (figures as base64 PNG, styles in a <style> block): the file can be mailed or
opened offline. Built from summary.json plus the files the phases wrote; no phase is re-computed.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .io import atomic_write_text

# Files in a phase folder that are not tables for the reader (configuration, raw training logs).
NOT_TABLES = {"config.json", "metrics.json", "log_history.json"}
# JSONL outputs worth a sample in the report (the others are long raw logs of every candidate and score).
JSONL_SAMPLES = {"pairs.jsonl": 8}
MAX_TABLE_ROWS = 40
MAX_CELL_CHARS = 600

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ran { color: #1a7f37; } .skipped, .reused { color: #57606a; } .failed { color: #cf222e; font-weight: bold; }
.failure { background: #ffebe9; border: 1px solid #cf222e; padding: 0.6em 1em; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } figure img { max-width: 520px; }
figcaption { font-size: 0.8em; color: #57606a; } .muted { color: #57606a; font-size: 0.85em; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def format_number(value) -> str:
    """Numbers as a reader wants them: ints plain, floats to 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td class='num'>{format_number(value)}</td>"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[:MAX_CELL_CHARS] + " …"
    return f"<td>{esc(text)}</td>"


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of row dicts (columns: the union of keys, in first-seen order)."""
    if not rows:
        return "<p class='muted'>(empty)</p>"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows[:MAX_TABLE_ROWS])
    more = (f"<p class='muted'>{len(rows) - MAX_TABLE_ROWS} more rows not shown</p>"
            if len(rows) > MAX_TABLE_ROWS else "")
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def metrics_html(metrics: dict) -> str:
    """Key numbers of one phase: scalars in one table, each nested mapping as its own table."""
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    scalars = [{"metric": k, "value": v} for k, v in public.items() if is_scalar(v)]
    parts = [table(scalars)] if scalars else []
    for key, value in public.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [{"": name, **{k: v for k, v in inner.items() if is_scalar(v)}} for name, inner in value.items()]
            parts.append(f"<h4>{esc(key)}</h4>{table(rows)}")
        elif isinstance(value, dict) and value and all(is_scalar(v) for v in value.values()):
            parts.append(f"<h4>{esc(key)}</h4>{table([value])}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"<h4>{esc(key)}</h4>{table(value)}")
        elif isinstance(value, list) and value:
            parts.append(f"<h4>{esc(key)}</h4><p>{esc(', '.join(map(str, value)))}</p>")
    return "".join(parts)


def figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(path.name)}</figcaption></figure>")


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
        from .io import iter_jsonl

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


def phase_html(phase: str, entry: dict, phase_dir: Path) -> str:
    status = entry.get("status", "")
    parts = [f"<h2 id='{esc(phase)}'>{esc(phase)} <span class='{esc(status.split()[0] if status else '')}'>"
             f"({esc(status)})</span></h2>",
             f"<p class='muted'>{esc(entry.get('notebook', ''))} · {esc(entry.get('reason', ''))}"
             + (f" · {entry['seconds']:.1f} s" if entry.get("seconds") else "") + "</p>"]
    metrics = entry.get("metrics")
    if metrics:
        parts.append("<h3>Key numbers</h3>" + metrics_html(metrics))
    figures = sorted((phase_dir / "figures").glob("*.png")) if (phase_dir / "figures").exists() else []
    if figures:
        parts.append("<h3>Figures</h3>" + "".join(figure_html(p) for p in figures))
    for path in table_files(phase_dir) if phase_dir.exists() else []:
        rows = read_table(path)
        if rows:
            sample = " (first rows)" if path.suffix == ".jsonl" else ""
            parts.append(f"<h3>{esc(path.name)}{sample}</h3>{table(rows)}")
    return "".join(parts)


def build_report(run_root: Path, summary: dict) -> str:
    """The report as one HTML string."""
    run_root = Path(run_root)
    phases = summary.get("phases", {})
    overview = [{"phase": p, "notebook": e.get("notebook", ""), "status": e.get("status", ""),
                 "reason": e.get("reason", ""), "seconds": e.get("seconds", 0.0),
                 "phase seconds (metrics)": (e.get("metrics") or {}).get("seconds", "")}
                for p, e in phases.items()]
    failure = summary.get("failure")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Run {esc(summary.get('run', ''))}: empathy workbook report</title><style>{STYLE}</style></head><body>",
        f"<h1>Run <code>{esc(summary.get('run', ''))}</code></h1>",
        f"<p>preset <b>{esc(summary.get('preset', ''))}</b> · status <b>{esc(summary.get('status', ''))}</b> · "
        f"runner wall time {format_number(summary.get('seconds', 0.0))} s · {esc(summary.get('finished_at', ''))}</p>",
    ]
    if failure:
        parts.append(f"<div class='failure'>Phase <b>{esc(failure['phase'])}</b> failed in {esc(failure['notebook'])}, "
                     f"cell {esc(failure.get('cell'))} (In [{esc(failure.get('exec_count'))}]): "
                     f"{esc(failure['error'])}<br>executed copy: <code>{esc(failure['executed'])}</code></div>")
    parts.append("<h2>Phases</h2>" + table(overview))
    for phase, entry in phases.items():
        if entry.get("metrics") or entry.get("status") in ("ran", "failed"):
            parts.append(phase_html(phase, entry, run_root / phase))
    parts.append("<h2>Configuration</h2><details><summary>resolved preset</summary><pre>"
                 + esc(json.dumps(summary.get("config", {}), indent=2)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_root: Path, summary: dict) -> Path:
    """Write <run>/report.html (atomically) and return its path."""
    path = Path(run_root) / "report.html"
    atomic_write_text(path, build_report(run_root, summary))
    return path
