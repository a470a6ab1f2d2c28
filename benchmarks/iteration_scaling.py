"""Is an align iteration's time linear in its pairs? One iteration at several sizes, each stage's time per size
and a straight-line fit: the fixed cost of a stage (start-up, scheduling) and its cost per pair.

    python -m benchmarks.iteration_scaling --run-dir runs/tiny --base checkpoints/base    # after make demo
    python -m benchmarks.iteration_scaling --run-dir runs/tiny --sizes 32,64,128 --json scaling.json --keep runs/scaling

Each size is `jobs.align` (one iteration, golden pairs, `align.prompts_per_iteration` = size and one learner
epoch over them: `align.steps` = size / `align.batch_size`) in a fresh run directory beside the prepared data of
--run-dir (its data and codec linked, not copied), in a process of its own. The evaluation is cut to the
least (2 utterances, no gap analysis): it does not depend on the pairs. Read from each run's record:
`rollout_seconds` (sampling, reference scoring, Parquet), `learn_seconds` (Ray Train start-up and the steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import iteration_profile

# the stages that grow with the pairs (the evaluation does not): their wall-time keys in a version's record
STAGES = tuple(iteration_profile.STAGES[stage][0] for stage in ("rollout", "learn"))


def run_size(run_dir: Path, base: str, size: int, batch: int, workdir: Path, overrides: list[str]) -> dict:
    """The record of one iteration with `size` prompts (one pair each), in a run directory of its own."""
    target = workdir / f"pairs-{size}"
    target.mkdir(parents=True)
    for sub in ("data", "codec"):
        (target / sub).symlink_to((run_dir / sub).resolve())
    cmd = [
        sys.executable,
        "-m",
        "jobs.align",
        f"run_dir={target}",
        f"align.base_model={base}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        "align.iterations=1",
        "align.pairs=golden",
        f"align.prompts_per_iteration={size}",
        f"align.batch_size={batch}",
        f"align.steps={max(1, size // batch)}",
        "eval.utterances=2",
        "eval.gap_utterances=0",
        *overrides,
    ]
    print(f"{size} pairs: python {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the align job at {size} pairs failed:\n{proc.stderr[-3000:]}")
    return json.loads((target / "align" / "records" / "iter_1.json").read_text())


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Least squares seconds = fixed + per_pair * pairs: (fixed, per_pair, R^2)."""
    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    per_pair, fixed = np.polyfit(x, y, 1)
    residual = y - (fixed + per_pair * x)
    spread = float(((y - y.mean()) ** 2).sum())
    return float(fixed), float(per_pair), 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/tiny", help="a prepared run (make demo's by default)")
    ap.add_argument("--base", default="checkpoints/base", help="the base model the iterations start from")
    ap.add_argument("--sizes", default="64,128,256", help="comma-separated pair counts (at least three)")
    ap.add_argument("--batch-size", type=int, default=16, help="align.batch_size (steps = pairs / batch size)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="more dotted.key=value overrides for every run")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 3:
        raise SystemExit("--sizes: give at least three sizes (a line through two points says nothing of linearity)")
    run_dir = Path(args.run_dir)
    if not (run_dir / "data").is_dir():
        raise SystemExit(f"no prepared run: {run_dir}/data is missing (make demo)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)  # kept: `benchmarks.iteration_profile --run-dir <keep>/pairs-<n>` reads one
        records = [run_size(run_dir, args.base, n, args.batch_size, workdir, args.overrides) for n in sizes]
    rows = [{"pairs": n, **{s: r[s] for s in STAGES}} for n, r in zip(sizes, records)]
    fits = []
    for stage in STAGES:
        fixed, per_pair, r2 = fit(sizes, [r[stage] for r in rows])
        fits.append({"stage": stage.removesuffix("_seconds"), "seconds": fixed, "per_pair_seconds": per_pair, "r2": r2})
    print("| pairs | rollout s | learn s |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pairs']} | {r['rollout_seconds']:.1f} | {r['learn_seconds']:.1f} |")
    print("\n| stage | fixed s | s per pair | R^2 of the line |\n|---|---:|---:|---:|")
    for f in fits:
        print(f"| {f['stage']} | {f['seconds']:.1f} | {f['per_pair_seconds']:.3f} | {f['r2']:.3f} |")
    out = rows + fits
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
