"""What an align run's pair sets hold, per iteration: the pairs, the mean reward of the chosen and rejected
samples (ranked pairs), their lengths, and for aligned models how many phones each side wrote against the
prompt's (negative: phones skipped), its frames per phone written, each side's phone error rate and how often it agrees with the ranking -
the numbers behind README's phone-error section.

    python -m analysis.pair_stats --run runs/phones --model checkpoints/base
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sa_ray.align_run import AlignRun
from sa_ray.metrics.phones import phone_error_rate, written_phones
from sa_ray.models.vocab import Vocab


def pair_stats(pairs: list[dict], vocab: Vocab) -> dict[str, float]:
    chosen = np.array([len(p["chosen_ids"]) for p in pairs])
    rejected = np.array([len(p["rejected_ids"]) for p in pairs])
    out = {
        "pairs": len(pairs),
        "chosen_tokens": float(chosen.mean()),
        "rejected_tokens": float(rejected.mean()),
        "rejected_shorter": float((rejected < chosen).mean()),
    }
    per = {}
    asked = [vocab.prompt_text_ids(p["prompt_ids"]) for p in pairs] if vocab.aligned else []
    for side in ("chosen", "rejected"):
        if f"{side}_reward" in pairs[0]:
            out[f"{side}_reward"] = float(np.mean([p[f"{side}_reward"] for p in pairs]))
        if vocab.aligned:
            written = [written_phones(p[f"{side}_ids"], vocab) for p in pairs]
            out[f"{side}_extra_phones"] = float(np.mean([len(w) - len(t) for w, t in zip(written, asked)]))
            ids = np.concatenate([np.asarray(p[f"{side}_ids"], dtype=np.int64) for p in pairs])
            out[f"{side}_frames_per_phone"] = float(vocab.is_code(ids).sum() / max(1, sum(len(w) for w in written)))
            per[side] = np.array([phone_error_rate(p[f"{side}_ids"], text, vocab) for p, text in zip(pairs, asked)])
            out[f"{side}_phone_error_rate"] = float(per[side].mean())
    if per:  # does the phone count agree with the pairs' ranking (whatever reward made it)?
        out["phones_agree"] = float((per["chosen"] < per["rejected"]).mean())
        out["phones_tie"] = float((per["chosen"] == per["rejected"]).mean())
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an align run's run_dir")
    ap.add_argument("--model", required=True, help="the base model directory (its ar/vocab.json reads the tokens)")
    args = ap.parse_args(argv)
    run, vocab = AlignRun(args.run), Vocab.load(Path(args.model) / "ar")
    rows, i = [], 0
    while run.pairs_done(i) is not None:
        stats = {"iteration": i, **pair_stats(pq.read_table(run.pairs(i)).to_pylist(), vocab)}
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        rows.append(stats)
        i += 1
    if not rows:
        raise SystemExit(f"error: {args.run}: no committed pair sets (align/pairs/iter_*/_manifest.json)")
    return rows


if __name__ == "__main__":
    main()
