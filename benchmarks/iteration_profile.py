"""Where an align iteration's time and memory go: each stage's wall time against its roles' own work, and each
role's peak memory, read from an align run's records (every version `jobs.align` makes records them).

    python -m benchmarks.iteration_profile --run-dir runs/tiny [--json iteration_profile.json]   # after make demo

Per version and stage: the stage's wall time (the driver's clock around it), the seconds its roles spent in their
own calls (`actors/usage.py`: the engine's sampling, the reward scorers, the reference's scoring, the learner's
steps and checkpoints, the critic, the evaluator's metrics, gap and samples) and the rest, `other`: Ray scheduling,
(de)serialisation, Parquet I/O, model loading, Ray Train's start-up and idle waits. The rollout stage streams
batches through engine, scorers and reference side by side, and the evaluate stage spreads its work over
`eval.workers` evaluators, so a stage's roles' seconds can add up to more than its wall time; `other` is then a lower
bound (0 at the least). Version 0's only stage is the base's evaluation.
Then each role's peak resident memory over the run (the learner's: its Ray Train worker's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# stage -> (the record's wall-time key, the roles whose busy seconds belong to it)
STAGES = {
    "rollout": ("rollout_seconds", ("rollout", "scorers", "reward_model", "reference")),
    "learn": ("learn_seconds", ("learner", "critic")),
    "evaluate": ("eval_seconds", ("evaluator",)),
}


def profile(records: list[dict]) -> list[dict]:
    """One row per (version, stage) the records time: wall, the roles' busy seconds, the rest and its share."""
    rows = []
    for r in records:
        for stage, (wall_key, roles) in STAGES.items():
            if wall_key not in r:
                continue
            busy = {role: r[f"busy_{role}_seconds"] for role in roles if f"busy_{role}_seconds" in r}
            if not busy:  # a version made before the roles reported their usage
                continue
            wall, work = r[wall_key], sum(busy.values())
            rows.append(
                {
                    "version": r["iteration"],
                    "stage": stage,
                    "seconds": wall,
                    "busy_seconds": work,
                    "other_seconds": max(0.0, wall - work),
                    "other_share": max(0.0, wall - work) / wall if wall > 0 else 0.0,
                    "roles": " ".join(f"{role} {s:.1f}" for role, s in busy.items()),
                }
            )
    return rows


def memory(records: list[dict]) -> list[dict]:
    """Each role's peak resident memory over the run (its largest over the versions)."""
    peaks: dict[str, float] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("peak_rss_") and key.endswith("_mb"):
                role = key[len("peak_rss_") : -len("_mb")]
                peaks[role] = max(peaks.get(role, 0.0), float(value))
    return [{"role": role, "peak_rss_mb": mb} for role, mb in sorted(peaks.items())]


def read_records(run_dir: Path) -> list[dict]:
    folder = run_dir / "align" / "records"
    files = sorted(folder.glob("iter_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise SystemExit(f"no align records in {folder}: run `make demo` (or python -m jobs.align) first")
    return [json.loads(p.read_text()) for p in files]


def markdown(stages: list[dict], peaks: list[dict]) -> str:
    lines = [
        "| version | stage | wall s | roles' own work s | other s | other share | by role (s) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['version']} | {r['stage']} | {r['seconds']:.1f} | {r['busy_seconds']:.1f} | {r['other_seconds']:.1f} "
        f"| {r['other_share']:.0%} | {r['roles']} |"
        for r in stages
    ]
    lines += ["", "| role | peak RSS MiB |", "|---|---:|"]
    lines += [f"| {p['role']} | {p['peak_rss_mb']:.0f} |" for p in peaks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/tiny", help="an align run's run_dir (default runs/tiny, make demo's)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    records = read_records(Path(args.run_dir))
    stages, peaks = profile(records), memory(records)
    if not stages:
        raise SystemExit(f"the records in {args.run_dir} hold no role usage (made before it was recorded)")
    print(markdown(stages, peaks))
    rows = stages + peaks
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
