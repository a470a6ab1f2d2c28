"""The speed-ups of docs/performance.md as one picture: each one's before and after, measured side by side in one
run of its benchmark (`docs/speedups.json` holds the figures and the commands that measured them).

    python -m analysis.speedups [--figures docs/speedups.json] [--out docs/img/speedups.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def gains(figures: list[dict]) -> list[float]:
    """How many times faster `after` is than `before` (a time falls, a rate rises)."""
    return [f["before"] / f["after"] if f["lower_is_better"] else f["after"] / f["before"] for f in figures]


def draw(figures: list[dict], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 0.7 + 0.55 * len(figures)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    times = gains(figures)
    rows = range(len(figures))[::-1]
    ax.barh(rows, times, color="#4c72b0")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, f, x in zip(rows, figures, times):
        ax.text(x + 0.02, y, f"{x:.2f}x  ({f['before']:g} → {f['after']:g})", va="center", fontsize=8)
    ax.set_yticks(list(rows), [f["what"] for f in figures], fontsize=8)
    ax.set_xlim(0, max(times) * 1.45)
    ax.set_xlabel("times faster than before (1 = no change)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", default="docs/speedups.json")
    ap.add_argument("--out", default="docs/img/speedups.png")
    args = ap.parse_args(argv)
    figures = json.loads(Path(args.figures).read_text())["speedups"]
    draw(figures, Path(args.out))
    for f, x in zip(figures, gains(figures)):
        print(f"{f['what']}: {f['before']:g} -> {f['after']:g} ({x:.2f}x; {f['command']})")
    print(f"wrote {args.out}")
    return gains(figures)


if __name__ == "__main__":
    main()
