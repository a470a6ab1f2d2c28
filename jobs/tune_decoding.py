"""tune_decoding: a version's best decoding (temperature, top-k, top-p, guidance), chosen on the dev half of the held-out set.

    python -m jobs.tune_decoding --base checkpoints/base --temperature 0.6,0.8,1.0 --top-p 1.0,0.9
    python -m jobs.tune_decoding --adapter runs/tiny/align/adapters/v1 --out runs/tiny/decoding-v1.json

Every combination of the given values is evaluated on `eval.split=dev` (the test half is refused: a setting
chosen on test would be confirmed on the data that chose it); the one with the lowest held-out sentences WER is
printed as the overrides to evaluate it with, on test, once:

    python -m jobs.evaluate --base checkpoints/base eval.split=test eval.temperature=0.8 eval.top_p=0.9 ...

Comparing a method with the base at the base's best decoding, and each at its own, is the protocol of
docs/evaluation.md; the evaluator (ASR, speaker encoder, NAR) loads once for the whole search.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
from pathlib import Path

from jobs import _cli
from jobs.evaluate import resolve_adapter
from sa_ray import tracking
from sa_ray.config import ConfigError, load_config
from sa_ray.data.prepare import check_heldout_audio
from sa_ray.models import base_model_dir
from sa_ray.models.vocab import Vocab
from sa_ray.sampling import SamplingConfig

SPLITS = ("heldout_sentences", "heldout_voices")


def values(kind):
    return lambda text: [kind(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument("--adapter", default=None, help="LoRA adapter directory or models:/<name>@<alias>; none = base")
    ap.add_argument("--base", default=None, help="base model directory (default: align.base_model or the run's)")
    ap.add_argument("--temperature", type=values(float), default=[0.6, 0.8, 1.0], help="comma-separated")
    ap.add_argument("--top-k", type=values(int), default=[0], help="comma-separated; 0 = off")
    ap.add_argument("--top-p", type=values(float), default=[1.0], help="comma-separated; 1 = off")
    ap.add_argument(
        "--cfg-scale",
        type=values(float),
        default=None,
        help="comma-separated guidance scales (default: eval.cfg_scale)",
    )
    ap.add_argument("--out", default=None, help="also write every decoding's figures to this JSON file")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.eval.split == "test":
        raise ConfigError("eval.split=test: decoding is chosen on dev (the default); test confirms the choice once")
    scales = args.cfg_scale or [cfg.eval.cfg_scale]
    try:  # a bad value is refused here, before any work
        grid = [
            SamplingConfig(temperature=t, top_k=k, top_p=p, cfg_scale=s)
            for t, k, p, s in itertools.product(args.temperature, args.top_k, args.top_p, scales)
        ]
    except ValueError as exc:
        raise ConfigError(f"--temperature, --top-k, --top-p, --cfg-scale: {exc}") from None
    base_dir = base_model_dir(cfg, args.base, "pass --base")
    cfg.eval.check_model(Vocab.load(base_dir / "ar").aligned)
    check_heldout_audio(Path(cfg.run_dir) / "data")

    _cli.init_ray(cfg)
    import ray

    from actors.evaluator import evaluate_version, start_evaluators

    rows = []
    with tempfile.TemporaryDirectory() as tmp, tracking.job_run(cfg, "tune_decoding"):
        adapter = resolve_adapter(cfg, args.adapter, base_dir, Path(tmp))
        evaluators = start_evaluators(cfg, base_dir)
        tracking.set_tags({**ray.get(evaluators[0].backends.remote()), "sa_ray.adapter": args.adapter or "none"})
        for step, sampling in enumerate(grid):
            metrics, _, _ = evaluate_version(evaluators, adapter, sampling=sampling)
            flat = {k: v for k, v in metrics.items() if not isinstance(v, list)}
            rows.append({**decoding(sampling), **flat})
            tracking.log_metrics({f"{s}_wer": metrics[f"{s}_wer"] for s in SPLITS if f"{s}_wer" in metrics}, step)
        best = min(rows, key=lambda r: r["heldout_sentences_wer"])
        tracking.set_tags({"sa_ray.best_decoding": overrides(best)})
    print(f"\n{args.adapter or 'base model'} on {base_dir}, eval.split={cfg.eval.split}, seeds {cfg.eval.seeds}:")
    print(
        f"  {'temperature':>11} {'top_k':>5} {'top_p':>5} {'cfg':>4} {'WER sentences':>13} {'WER voice':>9} {'PER':>6}"
    )
    for r in sorted(rows, key=lambda r: r["heldout_sentences_wer"]):
        print(
            f"  {r['temperature']:>11.2f} {r['top_k']:>5} {r['top_p']:>5.2f} {r['cfg_scale']:>4.1f} "
            f"{r['heldout_sentences_wer']:>13.3f} "
            f"{r.get('heldout_voices_wer', float('nan')):>9.3f} {r.get('heldout_sentences_phone_error_rate', 0):>6.3f}"
        )
    print(f"best on {cfg.eval.split}: {overrides(best)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"adapter": args.adapter, "best": overrides(best), "decodings": rows}))
    return {"best": best, "decodings": rows}


# What a decoding is: every field of SamplingConfig but batch_size (how many requests share a batch, not how each
# is decoded), each of which is an eval.* setting of the same name.
DECODING = tuple(f.name for f in dataclasses.fields(SamplingConfig) if f.name != "batch_size")


def decoding(sampling: SamplingConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(sampling).items() if k in DECODING}


def overrides(row: dict) -> str:
    """The eval.* overrides that evaluate a decoding row as the protocol's."""
    return " ".join(f"eval.{k}={row[k]}" for k in DECODING)


if __name__ == "__main__":
    _cli.run(main)
