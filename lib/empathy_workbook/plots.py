"""Plot helpers: each takes `ax=None`, draws one thing, and returns the axes. `save` writes a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _axes(ax, size=(5, 3)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def save(ax, path: Path, dpi: int = 110) -> Path:
    """Save the figure that holds `ax` as PNG (the notebook still shows it inline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=dpi)
    return path


def smooth(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """Exponential moving average, the smoothing TensorBoard uses for noisy loss curves."""
    out, last = [], None
    for value in values:
        last = value if last is None else weight * last + (1 - weight) * value
        out.append(last)
    return out


def history_series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key of a Trainer log_history (e.g. 'loss', 'eval_loss', 'rewards/margins')."""
    rows = [row for row in log_history if key in row]
    return [row.get("step", i) for i, row in enumerate(rows)], [float(row[key]) for row in rows]


def plot_history(log_history: list[dict], keys: Sequence[str], ax=None, smoothing: float = 0.0,
                 title: str = "", ylabel: str = "value", labels: Sequence[str] | None = None,
                 raw_keys: Sequence[str] = ()):
    """Any log_history series against the optimizer step: losses, reward margins, accuracies.

    raw_keys are drawn unsmoothed (e.g. sparse evaluations, where an average would lag behind).
    """
    ax = _axes(ax)
    for i, key in enumerate(keys):
        steps, values = history_series(log_history, key)
        if not steps:
            continue
        label = labels[i] if labels else key
        if smoothing and len(values) > 2 and key not in raw_keys:
            ax.plot(steps, values, alpha=0.25, color=f"C{i}")
            values = smooth(values, smoothing)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label, color=f"C{i}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(ax.get_lines()) > len(keys) or len(keys) > 1:
        ax.legend()
    return ax


def plot_hist(series: dict[str, Sequence[float]], ax=None, bins: int = 30, xlabel: str = "value",
              title: str = "", vline: float | None = None, vline_label: str = ""):
    """Overlaid histograms of one or more named series, with an optional threshold line."""
    ax = _axes(ax)
    values = [v for vs in series.values() for v in vs]
    if values:
        lo, hi = min(values), max(values)
        edges = bins if lo == hi else [lo + (hi - lo) * i / bins for i in range(bins + 1)]
        for name, vs in series.items():
            ax.hist(list(vs), bins=edges, alpha=0.55, label=name)
    if vline is not None:
        ax.axvline(vline, color="k", linestyle="--", label=vline_label or f"{vline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    if len(series) > 1 or vline is not None:
        ax.legend()
    return ax


def plot_bars(counts: dict, ax=None, xlabel: str = "", ylabel: str = "count", title: str = ""):
    """Bars of a {label: value} mapping (e.g. questions by number of answers)."""
    ax = _axes(ax)
    labels = [str(k) for k in counts]
    ax.bar(labels, list(counts.values()), color="C0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def plot_grouped_bars(table, ax=None, ylabel: str = "value", title: str = "", errors=None):
    """Grouped bars from a DataFrame: one group per index entry, one bar per column."""
    ax = _axes(ax, size=(7, 3.2))
    n_groups, n_bars = table.shape
    width = 0.8 / max(1, n_bars)
    for j, column in enumerate(table.columns):
        xs = [i + (j - (n_bars - 1) / 2) * width for i in range(n_groups)]
        yerr = None if errors is None else errors[column].values
        ax.bar(xs, table[column].values, width=width, label=str(column), yerr=yerr, capsize=2)
    ax.set_xticks(range(n_groups))
    ax.set_xticklabels([str(i) for i in table.index], rotation=15)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if n_bars > 1:
        ax.legend(fontsize=8)
    return ax


def plot_scatter(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str] | None = None, ax=None,
                 xlabel: str = "x", ylabel: str = "y", title: str = ""):
    """Points with optional text labels (e.g. file size against KL divergence per quant)."""
    ax = _axes(ax)
    ax.scatter(xs, ys, color="C0")
    for x, y, label in zip(xs, ys, labels or []):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax
