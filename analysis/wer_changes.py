"""Held-out WER of policy versions and each one's change against the base, with the 95% paired bootstrap
interval over the samples both were evaluated on (the same utterances, voice prompts and sampling seeds; all
samples of a sentence drawn together where the evaluations record `<split>_utt_sentences`) and its minimum
detectable change (MDE: the change the comparison detects 80% of the time at alpha 0.05).

Files side by side: `jobs.evaluate --out` files, each one's WER, SIM and phone error rate and its WER change
against the first file's (evaluate each version with the same overrides):

    python -m jobs.evaluate --base checkpoints/base --out runs/f/base.json eval.forced_phones=true ...
    python -m jobs.evaluate --base checkpoints/base --adapter runs/p/align/adapters/v1 --out runs/f/v1.json eval.forced_phones=true ...
    python -m analysis.wer_changes runs/f/base.json runs/f/v1.json

An align run's versions pooled over sampling seeds (`--run`): the run's own evaluation (seed `eval.seed`,
given as `--run-seed`) plus `--extra` evaluate files of the same versions at other seeds, matched to versions
by their `adapter` (none = the base, v0); each version is compared with the base pooled over the same seeds.
Pooling two seeds is what `eval.seeds=2` does inside a run; this adds seeds to a finished run without
re-running it:

    python -m jobs.evaluate --base checkpoints/base --out runs/e/v0.json eval.seed=1000 ...
    python -m jobs.evaluate --base checkpoints/base --adapter runs/tiny/align/adapters/v1 --out runs/e/v1.json eval.seed=1000 ...
    python -m analysis.wer_changes --run runs/tiny --extra runs/e/v0.json runs/e/v1.json ...
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sa_ray.align_run import AlignRun
from sa_ray.metrics.stats import pool_seeds, record_wer_changes

SPLITS = ("heldout_sentences", "heldout_voices")


def paired_row(evaluations: list[dict], base_evaluations: list[dict] | None) -> dict:
    """One policy's evaluations (one per sampling seed) pooled into its figures and, given the base's evaluations
    at the same seeds in the same order, its WER change against the base pooled alike (the bootstrap then
    resamples sentences, each with all its seeds; utterance-seed pairs for evaluations without sentences)."""
    policy = pool_seeds(evaluations)
    row = {key: value for key, value in policy.items() if not isinstance(value, list)}
    if base_evaluations is not None:
        row.update(record_wer_changes(pool_seeds(base_evaluations), policy))
    return row


def same_samples(evaluation: dict, base: dict) -> bool:
    """Whether the two hold as many samples of each split; a split either holds no per-utterance errors of
    (records of older runs) is not compared, and gets no WER change."""
    keys = [f"{s}_utt_errors" for s in SPLITS]
    return all(len(evaluation[k]) == len(base[k]) for k in keys if k in evaluation and k in base)


# what a comparison may differ in: the decoding is compared (each version at its own best, the protocol says), not
# the measurement; any other eval setting (forced phones, the recogniser, the utterances) makes numbers incomparable
DECODING = ("temperature", "top_k", "top_p", "cfg_scale")


def measured_by(evaluation: dict) -> dict | None:
    protocol = evaluation.get("protocol")
    return None if protocol is None else {k: v for k, v in protocol.items() if k not in DECODING}


def side_by_side(files: list[str]) -> list[dict]:
    """Each `jobs.evaluate --out` file's figures and its WER change against the first file's (the same samples,
    prompts and seeds; the decodings may differ)."""
    evaluations = [json.loads(Path(f).read_text()) for f in files]
    base = evaluations[0]
    for f, e in zip(files, evaluations):
        if measured_by(e) != measured_by(base):  # e.g. forced phones against free sampling
            raise ValueError(
                f"{f}: evaluated with eval settings {e.get('protocol')}, {files[0]} with "
                f"{base.get('protocol')}: not comparable"
            )
        if not same_samples(e, base):
            raise ValueError(
                f"{f}: not the same held-out samples as {files[0]} (evaluate both with the "
                "same eval.utterances, eval.seeds and eval.seed)"
            )
    return [{"file": f, **paired_row([e], [base] if i else None)} for i, (f, e) in enumerate(zip(files, evaluations))]


def version_of(evaluation: dict) -> int:
    match = re.search(r"v(\d+)/?$", evaluation.get("adapter") or "v0")
    if match is None:
        raise ValueError(f"adapter {evaluation['adapter']!r}: expected an align run's adapters/v<k> directory")
    return int(match.group(1))


def pooled(run_dir: str | Path, extra: list[str | Path], run_seed: int = 0) -> list[dict]:
    """Each version of an align run pooled over the seeds it was evaluated at (the run's own evaluation and the
    `extra` files), with its WER change against the base pooled over the same seeds."""
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
            raise ValueError(f"{path}: evaluations of one seed each (eval.seeds=1) can be paired here")
        evals.setdefault(version_of(evaluation), {})[evaluation["seed"]] = evaluation
    base = evals.get(0, {})
    rows = []
    for k in sorted(evals):
        seeds = sorted(evals[k])
        if not set(seeds) <= set(base):
            raise ValueError(f"version {k} was evaluated at seeds {seeds}, the base only at {sorted(base)}")
        for s in seeds:
            if not same_samples(evals[k][s], base[s]):
                raise ValueError(
                    f"version {k} at seed {s}: not the same held-out samples as the base (evaluate "
                    "both with the same eval.utterances)"
                )
        row = paired_row([evals[k][s] for s in seeds], [base[s] for s in seeds] if k else None)
        rows.append({"version": k, "seeds": seeds, **row})
    return rows


def change(row: dict, split: str) -> str:
    """`+0.012 [-0.020, +0.044] MDE 0.045`: a split's WER change, its interval and minimum detectable change."""
    d, lo, hi, mde = (row[f"{split}_wer_change{end}"] for end in ("", "_lo", "_hi", "_mde"))
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] MDE {mde:.3f}"


def print_side_by_side(rows: list[dict]) -> None:
    for r in rows:
        cells = []
        for s, name in zip(SPLITS, ("sentences", "voice")):
            cell = f"{name}: WER {r[f'{s}_wer']:.3f} SIM {r[f'{s}_sim']:.3f} PER {r.get(f'{s}_phone_error_rate', float('nan')):.3f}"
            if f"{s}_wer_change" in r:
                cell += f" (change {change(r, s)})"
            cells.append(cell)
        print(f"{r['file']}:  " + ";  ".join(cells))


def print_pooled(rows: list[dict], splits: list[str]) -> None:
    print("version seeds        " + " | ".join(f"{s.split('_')[1]:<50}" for s in splits))
    for r in rows:
        cells = []
        for s in splits:
            delta = f" {change(r, s)}" if f"{s}_wer_change" in r else ""
            cells.append(f"WER {r[f'{s}_wer']:.3f}±{r.get(f'{s}_wer_spread', 0):.3f}{delta} SIM {r[f'{s}_sim']:.3f}")
        print(f"{r['version']:>7} {','.join(map(str, r['seeds'])):<12} " + " | ".join(cells))


def plot_pooled(rows: list[dict], splits: list[str], run_dir: str, plot_dir: str) -> None:
    """One line per held-out set: the change of each version, its interval as error bars."""
    from sa_ray.plots import metric_curves

    table = [
        {
            "run": s.split("_")[1],
            "iteration": r["version"],
            **{f"wer_change{end}": r.get(f"{s}_wer_change{end}", 0.0) for end in ("", "_lo", "_hi")},
        }
        for s in splits
        for r in rows
    ]
    metric_curves(
        table,
        "wer_change",
        Path(plot_dir) / f"{Path(run_dir).name}-wer-change.png",
        title=f"{Path(run_dir).name}: WER change vs base, seeds pooled, 95% interval",
    )


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="jobs.evaluate --out files side by side; the first is the baseline")
    ap.add_argument("--run", default=None, help="instead of files: an align run's run_dir, versions pooled over seeds")
    ap.add_argument(
        "--extra", nargs="*", default=[], help="with --run: jobs.evaluate --out files of its versions at other seeds"
    )
    ap.add_argument("--run-seed", type=int, default=0, help="with --run: the align run's eval.seed")
    ap.add_argument(
        "--plot-dir", default=None, help="with --run: also draw each split's WER change with its interval (PNG)"
    )
    args = ap.parse_args(argv)
    if bool(args.files) == bool(args.run):
        ap.error("give either jobs.evaluate --out files or --run RUN_DIR [--extra FILE ...]")
    if not args.run and (args.extra or args.plot_dir):
        ap.error("--extra and --plot-dir go with --run")
    try:
        rows = pooled(args.run, args.extra, args.run_seed) if args.run else side_by_side(args.files)
    except (ValueError, FileNotFoundError) as e:  # a mismatch of the inputs: said plainly, no traceback
        raise SystemExit(f"error: {e}") from None
    if not args.run:
        print_side_by_side(rows)
        return rows
    splits = [s for s in SPLITS if f"{s}_wer" in rows[0]]
    if args.plot_dir:
        plot_pooled(rows, splits, args.run, args.plot_dir)
    print_pooled(rows, splits)
    return rows


if __name__ == "__main__":
    main()
