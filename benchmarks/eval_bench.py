"""Where an evaluation's time goes: seconds per held-out utterance, whole and by stage, at each thread count.

    python -m benchmarks.eval_bench run_dir=runs/tiny                  # after `make demo`: the base, 16 + 16 utterances
    python -m benchmarks.eval_bench --threads 1,2 --n 40 --json eval_bench.json run_dir=runs/tiny
    python -m benchmarks.eval_bench --threads 2 --workers 2 run_dir=runs/tiny   # + spread over 2 processes (Ray)

Runs the Evaluator role's own `evaluate` (in this process, no Ray) on the base model: the AR model samples each
batch of 16, then per utterance the NAR model writes the other codec layers, the vocoder renders them, the
recogniser transcribes and the speaker encoder embeds. Stages are timed around those calls (AR = the batched
sampling); "other" is the rest (prompts, bookkeeping, WER). `--workers N`: then the same evaluation spread over N
evaluator processes on a local Ray, the node's cores shared among them (`eval.workers`, what the jobs do), timed
whole (its processes started and ready before the clock starts), its WERs beside the single process's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from jobs._cli import DEFAULT_CONFIG
from sa_ray.config import load_config
from sa_ray.models import base_model_dir

STAGES = ("ar", "nar", "vocoder", "asr", "sim")


def timed(obj, name: str, totals: dict, stage: str) -> None:
    """`obj.name` replaced on this instance by the same call, its seconds added to `totals[stage]`."""
    call = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            totals[stage] += time.perf_counter() - start

    setattr(obj, name, wrapper)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--base", default=None, help="base model directory (default: align.base_model)")
    ap.add_argument("--n", type=int, default=16, help="utterances per held-out set")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    ap.add_argument("--workers", default="", help="evaluator process counts to compare on a local Ray, e.g. 2")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, f"eval.utterances={args.n}", "eval.seeds=1"])
    from actors.evaluator import Evaluator

    base_dir = base_model_dir(cfg, args.base, "pass --base")
    evaluator = Evaluator(cfg, str(base_dir))
    tts, totals = evaluator._tts(None), defaultdict(float)
    for obj, name, stage in (
        (tts, "generate", "ar"),
        (tts.nar, "generate", "nar"),
        (tts.codec, "decode", "vocoder"),
        (evaluator.asr, "transcribe", "asr"),
        (evaluator.sim, "embed", "sim"),
    ):
        timed(obj, name, totals, stage)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        evaluator.sim.forget_files()  # each run embeds the real utterances afresh, as a new evaluator
        totals.clear()
        start = time.perf_counter()
        metrics = evaluator.evaluate(None)
        seconds = time.perf_counter() - start
        n = int(sum(v for k, v in metrics.items() if k.endswith("_n")))
        stages = {s: totals[s] / n for s in STAGES}
        rows.append(
            {
                "workers": 1,
                "threads": threads,
                "utterances": n,
                "seconds": seconds,
                "s_per_utt": seconds / n,
                "stages": stages,
            }
        )
        print(
            f"threads {threads}: {n} utterances in {seconds:.1f} s, {seconds / n:.2f} s each "
            f"({wers(metrics)}): "
            + ", ".join(f"{s} {v:.3f}" for s, v in stages.items())
            + f", other {seconds / n - sum(stages.values()):.3f}",
            flush=True,
        )
    for workers in (int(w) for w in args.workers.split(",") if w):
        rows.append(spread(cfg, base_dir, workers))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def wers(metrics: dict) -> dict:
    """Each set's WER, rounded: what the runs print beside their times (the same work gives the same WERs)."""
    return {k: round(v, 4) for k, v in metrics.items() if k.endswith("_wer")}


def spread(cfg, base_dir: Path, workers: int) -> dict:
    """The same evaluation on `workers` evaluator actors (`actors.evaluator.evaluate_version`), timed whole."""
    import dataclasses

    import ray

    from actors.evaluator import evaluate_version, start_evaluators
    from jobs._cli import init_ray

    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, workers=workers))
    init_ray(cfg)
    evaluators = start_evaluators(cfg, base_dir)
    threads = ray.get([e.threads.remote() for e in evaluators])  # every one started and loaded
    start = time.perf_counter()
    metrics, _, _ = evaluate_version(evaluators, None)
    seconds = time.perf_counter() - start
    for e in evaluators:
        ray.kill(e)
    n = int(sum(v for k, v in metrics.items() if k.endswith("_n")))
    print(
        f"{workers} workers x {threads[0]} threads: {n} utterances in {seconds:.1f} s, {seconds / n:.2f} s each; "
        f"{wers(metrics)}"
    )
    return {"workers": workers, "threads": threads[0], "utterances": n, "seconds": seconds, "s_per_utt": seconds / n}


if __name__ == "__main__":
    main()
