"""Figures logged as MLflow artifacts, drawn on an own Agg canvas (no pyplot, no global backend state)."""

from __future__ import annotations

import math
from pathlib import Path


def metric_curves(
    table: list[dict],
    metric: str,
    path: str | Path,
    group_key: str = "run",
    x_key: str = "iteration",
    title: str | None = None,
) -> Path:
    """One line per `group_key` value (a run, a method) of `metric` against `x_key`, as a PNG.

    `table` holds one dict per (group, iteration); rows without the metric (or with NaN) are skipped,
    so runs that logged different metrics can share a table. Rows that also hold `<metric>_lo` and
    `<metric>_hi` (e.g. a WER change's 95% interval) draw it as an error bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lines: dict[str, list[tuple[float, float]]] = {}
    for row in table:
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        bounds = (float(lo), float(hi)) if lo is not None and hi is not None else (math.nan, math.nan)
        lines.setdefault(str(row[group_key]), []).append((row[x_key], float(value), *bounds))
    if not lines:
        raise ValueError(f"no row of the table has a value for {metric!r}")

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in lines.items():
        xs, ys, los, his = zip(*sorted(points))
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        bars = [(x, y, lo, hi) for x, y, lo, hi in zip(xs, ys, los, his) if not math.isnan(lo)]
        if bars:
            bx, by, blo, bhi = (list(v) for v in zip(*bars))
            ax.errorbar(
                bx,
                by,
                yerr=[[y - lo for y, lo in zip(by, blo)], [hi - y for y, hi in zip(by, bhi)]],
                fmt="none",
                ecolor=line.get_color(),
                capsize=4,
                alpha=0.7,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
