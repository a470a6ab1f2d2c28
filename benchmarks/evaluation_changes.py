"""`jobs.evaluate --out` files side by side: each one's held-out WER, SIM and phone error rate, and its WER
change against the first file's with the 95% paired bootstrap interval (the same utterances, prompts and
seeds: evaluate each version with the same overrides).

    python -m jobs.evaluate --base checkpoints/base --out runs/f/base.json eval.forced_phones=true ...
    python -m jobs.evaluate --base checkpoints/base --adapter runs/p/align/adapters/v1 --out runs/f/v1.json eval.forced_phones=true ...
    python -m benchmarks.evaluation_changes runs/f/base.json runs/f/v1.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sa_ray.metrics.stats import record_wer_changes

SPLITS = ("heldout_sentences", "heldout_voices")


def changes(files: list[str]) -> list[dict]:
    evaluations = [json.loads(Path(f).read_text()) for f in files]
    base = evaluations[0]
    for f, e in zip(files, evaluations):
        if e.get("protocol") != base.get("protocol"):  # e.g. forced phones against free sampling
            raise SystemExit(f"error: {f}: evaluated with eval settings {e.get('protocol')}, {files[0]} with "
                             f"{base.get('protocol')}: not comparable")
        if any(len(e.get(f"{s}_utt_errors", [])) != len(base.get(f"{s}_utt_errors", [])) for s in SPLITS):
            raise SystemExit(f"error: {f}: not the same held-out samples as {files[0]} (evaluate both with the "
                             "same align.eval_utterances, align.eval_seeds and align.seed)")
    return [{"file": f, **{k: e[k] for s in SPLITS for k in (f"{s}_wer", f"{s}_sim", f"{s}_phone_error_rate") if k in e},
             **record_wer_changes(base, e)} for f, e in zip(files, evaluations)]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="jobs.evaluate --out files; the first is the baseline")
    rows = changes(ap.parse_args(argv).files)
    for r in rows:
        cells = []
        for s, name in zip(SPLITS, ("sentences", "voice")):
            cell = f"{name}: WER {r[f'{s}_wer']:.3f} SIM {r[f'{s}_sim']:.3f} PER {r.get(f'{s}_phone_error_rate', float('nan')):.3f}"
            if r is not rows[0] and f"{s}_wer_change" in r:
                cell += f" (change {r[f'{s}_wer_change']:+.3f} [{r[f'{s}_wer_change_lo']:+.3f}, {r[f'{s}_wer_change_hi']:+.3f}])"
            cells.append(cell)
        print(f"{r['file']}:  " + ";  ".join(cells))
    return rows


if __name__ == "__main__":
    main()
