"""Figures logged as MLflow artifacts, drawn on an own Agg canvas (no pyplot, no global backend state)."""

from __future__ import annotations

import math
from pathlib import Path


def metric_curves(table: list[dict], metric: str, path: str | Path, group_key: str = "run",
                  x_key: str = "iteration", title: str | None = None) -> Path:
    """One line per `group_key` value (a run, a method) of `metric` against `x_key`, as a PNG.

    `table` holds one dict per (group, iteration); rows without the metric (or with NaN) are skipped,
    so runs that logged different metrics can share a table.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lines: dict[str, list[tuple[float, float]]] = {}
    for row in table:
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        lines.setdefault(str(row[group_key]), []).append((row[x_key], float(value)))
    if not lines:
        raise ValueError(f"no row of the table has a value for {metric!r}")

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in lines.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
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
