"""evaluate: held-out metrics of a base model + adapter (a directory or an MLflow model URI), logged to MLflow.

    python -m jobs.evaluate --adapter runs/tiny/align/adapters/v3
    python -m jobs.evaluate --adapter models:/tiny-policy@best eval.utterances=80 eval.seeds=2
    python -m jobs.evaluate                      # the base model alone

Runs the Evaluator role (codec, NAR, offline ASR and speaker encoder loaded once) on both held-out sets
and, unless `eval.gap_utterances=0`, the distribution-gap analysis; every WER names its ASR backend.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from jobs import _cli
from sa_ray import lineage, tracking
from sa_ray.config import Config, load_config
from sa_ray.data.prepare import check_heldout_audio
from sa_ray.models import base_model_dir
from sa_ray.models.vocab import Vocab


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument("--adapter", default=None, help="LoRA adapter directory or models:/<name>@<alias>; none = base")
    ap.add_argument(
        "--base", default=None, help="base model directory (default: align.base_model or <run_dir>/pretrain/model)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="also write the metrics, per-utterance word errors included, "
        "to this JSON file (to pool with an align run's own evaluation: analysis.wer_changes --run)",
    )
    ap.add_argument("--no-ceiling", action="store_true", help="skip the golden-token ceiling (ASR of the golden codes)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.run_dir)
    base_dir = base_model_dir(cfg, args.base, "pass --base")
    cfg.eval.check_model(Vocab.load(base_dir / "ar").aligned)
    check_heldout_audio(run_dir / "data")

    _cli.init_ray(cfg)
    import ray

    from actors.evaluator import evaluate_version, start_evaluators

    with tempfile.TemporaryDirectory() as tmp, tracking.job_run(cfg, "evaluate") as run:
        adapter = resolve_adapter(cfg, args.adapter, base_dir, Path(tmp))
        evaluators = start_evaluators(cfg, base_dir)
        backends = ray.get(evaluators[0].backends.remote())
        tracking.set_tags({**backends, "sa_ray.adapter": args.adapter or "none", "sa_ray.base": str(base_dir)})
        title = f"golden vs synthetic: {args.adapter or 'base'}" if cfg.eval.gap_utterances else None
        metrics, png, _ = evaluate_version(evaluators, adapter, ceiling=not args.no_ceiling, gap_title=title)
        if png:
            tracking.log_bytes(png, "gap.png")
        tracking.log_metrics(metrics)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "adapter": args.adapter,
                    "base": str(base_dir),
                    "seed": cfg.eval.seed,
                    "eval_seeds": cfg.eval.seeds,
                    "protocol": cfg.eval.protocol(),
                    **metrics,
                }
            )
        )
    print(
        f"\n{args.adapter or 'base model'} on {base_dir} (ASR: {backends['sa_ray.asr_backend']}, "
        f"SIM: {backends['sa_ray.sim_backend']})"
    )
    for key in sorted(k for k, v in metrics.items() if isinstance(v, (int, float))):
        print(f"  {key:<40} {metrics[key]:.4f}")
    return {"run_id": run.info.run_id, "metrics": metrics}


def resolve_adapter(cfg: Config, spec: str | None, base_dir: Path, tmp: Path) -> str | None:
    """`--adapter` (a directory or models:/<name>@<alias>, downloaded into `tmp`) as a local directory, checked
    to have been trained on `base_dir` (sa_ray.lineage); None: the base alone."""
    if not spec:
        return None
    adapter = spec
    if adapter.startswith("models:/"):
        adapter = str(tracking.download_model(adapter, tmp / "adapter", tracking.resolve_uri(cfg.tracking.uri)))
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} is not a LoRA adapter directory (adapter_config.json)")
    codec_dir = Path(cfg.run_dir) / "codec"
    lineage.check(adapter, lineage.fingerprint(base_dir, codec_dir, cfg.codec.kind), base_dir, spec)
    return adapter


if __name__ == "__main__":
    _cli.run(main)
