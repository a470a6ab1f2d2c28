"""AR training step (forward + backward) in float32 vs bfloat16 autocast on this CPU.

python -m benchmarks.train_step_bench --threads 1 --batch 16 --length 290 [--repeats 3] [--json train_step_bench.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sa_ray.config import ModelConfig
from sa_ray.models.ar import build_ar_model
from sa_ray.models.vocab import Vocab


def step_seconds(model, ids: torch.Tensor, bf16: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=290)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = Vocab(tuple(f"p{i}" for i in range(47)), 256, aligned=True)
    model = build_ar_model(ModelConfig(), vocab)
    ids = torch.randint(0, vocab.size, (args.batch, args.length))
    fp32 = step_seconds(model, ids, False, args.repeats)
    bf16 = step_seconds(model, ids, True, args.repeats)
    print(
        f"| threads | batch x length | fp32 s/step | bf16 autocast s/step | speed-up |\n|---|---|---|---|---|\n"
        f"| {args.threads} | {args.batch} x {args.length} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.1f}x |"
    )
    shape = {"threads": args.threads, "batch": args.batch, "length": args.length}
    rows = [{"dtype": "fp32", **shape, "s_per_step": fp32}, {"dtype": "bf16 autocast", **shape, "s_per_step": bf16}]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
