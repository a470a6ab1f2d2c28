"""The arms of `scripts/arms.sh` side by side: one Markdown row per arm (its version 1 against the shared base).

    python -m analysis.arms_table runs/arms/dev            # every arm under that directory
    python -m analysis.arms_table runs/arms/test --out docs/img/arms-test.md

Each row: the arm's held-out WER, its change against the base with the 95% cluster-bootstrap interval and the
minimum detectable change (`sa_ray.metrics.stats`, the numbers the align job printed), the phone error rate,
the share of samples with any phone error and the duration error, for both held-out sets; and the seconds its
iteration took to roll out and learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = (("heldout_sentences", "sentences"), ("heldout_voices", "unseen voice"))


def arm_rows(root: Path) -> tuple[dict | None, list[tuple[str, dict]]]:
    """(the base's record, [(arm, its version-1 record)]) of every arm directory under `root`."""
    base, arms = None, []
    for arm in sorted(p for p in root.iterdir() if (p / "align" / "records" / "iter_1.json").is_file()):
        records = arm / "align" / "records"
        base = base or json.loads((records / "iter_0.json").read_text())
        arms.append((arm.name, json.loads((records / "iter_1.json").read_text())))
    return base, arms


def change(record: dict, split: str) -> str:
    if f"{split}_wer_change" not in record:
        return "-"
    d, lo, hi, mde = (record.get(f"{split}_wer_change{s}", float("nan")) for s in ("", "_lo", "_hi", "_mde"))
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] (MDE {mde:.3f})"


def table(base: dict, arms: list[tuple[str, dict]]) -> str:
    head = ["arm"]
    for _, name in SETS:
        head += [f"WER {name}", "change vs base", "PER", "samples with phone errors", "duration error"]
    head.append("s / iteration")  # rollout + learner (the evaluation is the protocol's, the same for every arm)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, record in [("base", base), *arms]:
        cells = [arm]
        for split, _ in SETS:
            cells += [
                f"{record[f'{split}_wer']:.3f}",
                change(record, split),
                f"{record.get(f'{split}_phone_error_rate', float('nan')):.3f}",
                f"{record.get(f'{split}_phone_error_samples', float('nan')):.2f}",
                f"{record.get(f'{split}_duration_error', float('nan')):.3f}",
            ]
        seconds = record.get("rollout_seconds", 0) + record.get("learn_seconds", 0)
        cells.append(f"{seconds:.0f}" if seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a directory of arm run_dirs (scripts/arms.sh: runs/arms/<split>)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    base, arms = arm_rows(Path(args.root))
    if base is None:
        raise SystemExit(f"error: no arm under {args.root} has a version 1 yet (align/records/iter_1.json)")
    text = table(base, arms)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
