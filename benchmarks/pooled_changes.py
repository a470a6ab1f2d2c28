"""Held-out WER of an align run's policy versions pooled over sampling seeds, with each version's change
against the base (95% paired bootstrap over utterance-seed pairs): the align run's own evaluation (seed
`align.seed`) plus `jobs.evaluate --out` files of the same versions at other seeds.

    python -m jobs.evaluate --base checkpoints/base --out runs/e/v0.json align.seed=1000 ...
    python -m jobs.evaluate --base checkpoints/base --adapter runs/tiny/align/adapters/v1 --out runs/e/v1.json align.seed=1000 ...
    python -m benchmarks.pooled_changes --run runs/tiny --extra runs/e/v0.json runs/e/v1.json ...

`--extra` files are matched to versions by their `adapter` (none = the base, v0). Pooling two seeds is what
`align.eval_seeds=2` does inside a run; this adds seeds to a finished run without re-running it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sa_ray.align_run import AlignRun
from sa_ray.metrics.stats import pool_seeds, record_wer_changes

SPLITS = ("heldout_sentences", "heldout_voices")


def version_of(evaluation: dict) -> int:
    match = re.search(r"v(\d+)/?$", evaluation.get("adapter") or "v0")
    if match is None:
        raise ValueError(f"adapter {evaluation['adapter']!r}: expected an align run's adapters/v<k> directory")
    return int(match.group(1))


def pooled(run_dir: str | Path, extra: list[str | Path]) -> list[dict]:
    run = AlignRun(run_dir)
    evals: dict[int, list[dict]] = {}
    k = 0
    while (record := run.record(k)) is not None:
        evals[k] = [record]
        k += 1
    for path in extra:
        evaluation = json.loads(Path(path).read_text())
        evals.setdefault(version_of(evaluation), []).append(evaluation)
    rows = []
    base = pool_seeds(evals[0])
    for k in sorted(evals):
        p = pool_seeds(evals[k])
        row = {"version": k, "seeds": len(evals[k]), **{key: p[key] for key in p if not isinstance(p[key], list)}}
        if k:
            row.update(record_wer_changes(base, p))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the align run's run_dir")
    ap.add_argument("--extra", nargs="*", default=[], help="jobs.evaluate --out files of its versions at other seeds")
    args = ap.parse_args(argv)
    rows = pooled(args.run, args.extra)
    print("version seeds " + " ".join(f"{s.split('_')[1]:>38}" for s in SPLITS))
    for r in rows:
        cells = []
        for s in SPLITS:
            change = (f" {r[f'{s}_wer_change']:+.3f} [{r[f'{s}_wer_change_lo']:+.3f}, {r[f'{s}_wer_change_hi']:+.3f}]"
                      if f"{s}_wer_change" in r else "")
            cells.append(f"WER {r[f'{s}_wer']:.3f}±{r.get(f'{s}_wer_spread', 0):.3f}{change} SIM {r[f'{s}_sim']:.3f}")
        print(f"{r['version']:>7} {r['seeds']:>5} " + " | ".join(cells))
    return rows


if __name__ == "__main__":
    main()
