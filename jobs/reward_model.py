"""reward_model: a Bradley-Terry reward model trained on the run's preference pairs, registered in MLflow.

    python -m jobs.reward_model --config configs/tiny.yaml run_dir=runs/tiny
    python -m jobs.reward_model --pairs runs/tiny/align/pairs/iter_0 reward_model.steps=400

Reads every committed pair set of the run (<run_dir>/align/pairs/iter_<i>/), or those --pairs names, holds out
`reward_model.heldout_fraction` of their sentences, trains on the rest (the RewardModelRole, on
resources.reward_model) and reports its accuracy on the held-out pairs. The checkpoint goes to
<run_dir>/reward_model/, into the job's MLflow run and into the registry as <config name>-reward.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import _cli
from sa_ray import lineage, tracking
from sa_ray.config import load_config
from sa_ray.models import base_model_dir
from sa_ray.reward_model import committed_pair_sets, read_pair_sets


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument(
        "--pairs",
        action="append",
        metavar="DIR",
        help="a committed pair set to train on (repeatable); default: every one of <run_dir>/align/pairs",
    )
    ap.add_argument("--base", default=None, help="base model directory (default: align.base_model or the run's)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)

    # setup: everything checked before Ray starts
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.run_dir)
    base_dir = base_model_dir(cfg, args.base, "pass --base")
    pair_sets = [Path(p).resolve() for p in args.pairs] if args.pairs else committed_pair_sets(run_dir)
    pairs = read_pair_sets(pair_sets)
    made_from = {
        "base_fingerprint": lineage.fingerprint(base_dir, run_dir / "codec", cfg.codec.kind),
        "base_dir": str(base_dir),
        "config": cfg.name,
        "pair_sets": [str(p) for p in pair_sets],
    }
    out_dir = (run_dir / "reward_model").resolve()
    print(f"reward model: {len(pairs)} pairs from {len(pair_sets)} pair set(s), base {base_dir}", flush=True)

    _cli.init_ray(cfg)
    import ray

    from actors.placement import actor_options
    from actors.reward_model import RewardModelRole

    with tracking.job_run(cfg, "reward_model") as run:
        tracking.set_tags({"sa_ray.base": str(base_dir), "sa_ray.base_fingerprint": made_from["base_fingerprint"]})
        tracking.log_dict({"pair_sets": made_from["pair_sets"]}, "pair_sets.json")
        # train
        role = (
            ray.remote(RewardModelRole)
            .options(**actor_options(cfg.resources.reward_model))
            .remote(num_gpus=cfg.resources.reward_model.num_gpus)
        )
        report = ray.get(role.train.remote(str(base_dir), pairs, cfg.reward_model, str(out_dir), made_from))
        for step, metrics in enumerate(report.pop("history")):
            tracking.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)
        tracking.log_metrics(report)
        # save: the checkpoint as an artifact, registered with its lineage and held-out accuracy
        tracking.log_artifact(out_dir, "reward_model")
        tags = {
            **lineage.tags({k: made_from[k] for k in ("base_fingerprint", "base_dir", "config")}),
            **lineage.tags({"run_id": run.info.run_id}),
            "sa_ray.heldout_accuracy": report.get("heldout_accuracy", "none"),
            "sa_ray.pairs": report["pairs"],
        }
        name = f"{cfg.name}-reward"
        version = tracking.register_model(name, run.info.run_id, "reward_model", ["latest"], tags)
    print(summary(report, out_dir, name, version))
    return {"run_id": run.info.run_id, "report": report, "checkpoint": str(out_dir), "version": version}


def summary(report: dict, out_dir: Path, name: str, version: int) -> str:
    trained = f"trained on {report['train_pairs']} pairs of {report['train_sentences']} sentences"
    if "heldout_accuracy" in report:
        held = (
            f"held-out accuracy {report['heldout_accuracy']:.3f} on {report['heldout_pairs']} pairs of "
            f"{report['heldout_sentences']} sentences never trained on (chance 0.5), margin {report['heldout_margin']:.2f}"
        )
    else:
        held = "no held-out pairs (reward_model.heldout_fraction=0): no accuracy to report"
    return f"\nreward model: {trained}; {held}\ncheckpoint: {out_dir}\nregistered as {name} version {version}"


if __name__ == "__main__":
    _cli.run(main)
