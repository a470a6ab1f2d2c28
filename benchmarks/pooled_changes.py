"""Held-out WER of an align run's policy versions pooled over sampling seeds, with each version's change
against the base (95% paired bootstrap over utterance-seed pairs): the align run's own evaluation (seed
`align.seed`) plus `jobs.evaluate --out` files of the same versions at other seeds.

    python -m jobs.evaluate --base checkpoints/base --out runs/e/v0.json align.seed=1000 ...
    python -m jobs.evaluate --base checkpoints/base --adapter runs/tiny/align/adapters/v1 --out runs/e/v1.json align.seed=1000 ...
    python -m benchmarks.pooled_changes --run runs/tiny --extra runs/e/v0.json runs/e/v1.json ...

`--extra` files are matched to versions by their `adapter` (none = the base, v0); each version is compared with
the base pooled over the same seeds (its `align.seed`; the run's own is `--run-seed`). Pooling two seeds is what
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


def pooled(run_dir: str | Path, extra: list[str | Path], run_seed: int = 0) -> list[dict]:
    if not (Path(run_dir) / "align" / "records" / "iter_0.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no align run with an evaluated base (align/records/iter_0.json)")
    run = AlignRun(run_dir)
    evals: dict[int, dict[int, dict]] = {}  # version -> seed -> evaluation
    k = 0
    while (record := run.record(k)) is not None:
        evals[k] = {run_seed: record}
        k += 1
    for path in extra:
        evaluation = json.loads(Path(path).read_text())
        if evaluation.get("eval_seeds", 1) != 1:
            raise ValueError(f"{path}: evaluations of one seed each (align.eval_seeds=1) can be paired here")
        evals.setdefault(version_of(evaluation), {})[evaluation["seed"]] = evaluation
    rows = []
    for k in sorted(evals):
        seeds = sorted(evals[k])
        if not set(seeds) <= set(evals.get(0, {})):
            raise ValueError(f"version {k} was evaluated at seeds {seeds}, the base only at {sorted(evals.get(0, {}))}")
        p = pool_seeds([evals[k][s] for s in seeds])
        row = {"version": k, "seeds": seeds, **{key: v for key, v in p.items() if not isinstance(v, list)}}
        if k:
            row.update(record_wer_changes(pool_seeds([evals[0][s] for s in seeds]), p))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the align run's run_dir")
    ap.add_argument("--extra", nargs="*", default=[], help="jobs.evaluate --out files of its versions at other seeds")
    ap.add_argument("--run-seed", type=int, default=0, help="the align run's align.seed")
    ap.add_argument("--plot-dir", default=None, help="also draw each split's WER change with its interval (PNG)")
    args = ap.parse_args(argv)
    rows = pooled(args.run, args.extra, args.run_seed)
    splits = [s for s in SPLITS if f"{s}_wer" in rows[0]]
    if args.plot_dir:  # one line per held-out set: the change of each version, its interval as error bars
        from sa_ray.plots import metric_curves

        table = [{"run": s.split("_")[1], "iteration": r["version"],
                  **{f"wer_change{end}": r.get(f"{s}_wer_change{end}", 0.0) for end in ("", "_lo", "_hi")}}
                 for s in splits for r in rows]
        metric_curves(table, "wer_change", Path(args.plot_dir) / f"{Path(args.run).name}-wer-change.png",
                      title=f"{Path(args.run).name}: WER change vs base, seeds pooled, 95% interval")
    print("version seeds        " + " | ".join(f"{s.split('_')[1]:<50}" for s in splits))
    for r in rows:
        cells = []
        for s in splits:
            change = (f" {r[f'{s}_wer_change']:+.3f} [{r[f'{s}_wer_change_lo']:+.3f}, {r[f'{s}_wer_change_hi']:+.3f}]"
                      if f"{s}_wer_change" in r else "")
            cells.append(f"WER {r[f'{s}_wer']:.3f}±{r.get(f'{s}_wer_spread', 0):.3f}{change} SIM {r[f'{s}_sim']:.3f}")
        print(f"{r['version']:>7} {','.join(map(str, r['seeds'])):<12} " + " | ".join(cells))
    return rows


if __name__ == "__main__":
    main()
