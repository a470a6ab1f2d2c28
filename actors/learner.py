"""Learner role: the Ray Train per-worker loop of the LoRA preference learner (`TorchTrainer`).

Every worker reads the iteration's whole pair set (small: token ids and two reference logprobs per pair) and
takes its block of each step's pairs (`DPOLearner`): `align.batch_size` pairs per step for any number of
workers, DDP (or ZeRO with `align.deepspeed`) averaging their gradients. Checkpoints go through
`ray.train.report` every `align.checkpoint_every` steps; the last one also holds the exported adapter
(PEFT layout + probe.json), which becomes the next policy version.
"""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from pathlib import Path

import ray
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from actors import failpoints
from actors.placement import role_device, train_backend
from actors.usage import peak_rss_mb
from sa_ray import tracking
from sa_ray.config import AlignConfig
from sa_ray.preference import replayed_row
from sa_ray.tracking import RunLogger


def learner_class(method: str) -> type:
    """The learner of `method`; imported here, on the Ray Train worker, so the job's driver (which only starts
    the run) never imports transformers and peft (seconds of CPU a process)."""
    if method == "grpo":
        from sa_ray.grpo import GRPOLearner as learner
    elif method == "ppo":
        from sa_ray.ppo import PPOLearner as learner
    elif method == "coh":
        from sa_ray.coh import CoHLearner as learner
    else:  # every other method: the preference learner
        from sa_ray.dpo import DPOLearner as learner
    return learner


def learn_loop(config: dict) -> None:
    os.environ.update(config["failpoints"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    cfg = AlignConfig(**config["align"])
    pairs = list(ray.train.get_dataset_shard("pairs").iter_rows())
    # prepare_model for the plain path: onto the worker's device (its GPU with resources.learner.num_gpus), DDP
    # when world > 1. With align.deepspeed the learner builds a ZeRO engine on the process group Ray Train set up
    # (gloo on CPU, also for one worker), which places the model and reduces gradients itself.
    learner = learner_class(cfg.method)(
        config["base_dir"],
        config["adapter_dir"],
        cfg,
        pairs,
        rank=rank,
        world=world,
        wrap=(lambda m: m)
        if cfg.deepspeed
        else partial(ray.train.torch.prepare_model, move_to_device=role_device("learner", config["num_gpus"])),
    )
    logger = RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 and config.get("run_id") else None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            learner.load(d)
    busy = 0.0  # this attempt's seconds of model work (steps, checkpoints): the iteration profile's learner row
    while learner.step_count < cfg.steps:
        start = time.perf_counter()
        metrics = learner.train_step()
        busy += time.perf_counter() - start
        step = learner.step_count
        metrics["step"] = step
        if logger:
            logger.log(metrics, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            with tempfile.TemporaryDirectory() as d:
                start = time.perf_counter()
                learner.save(d)  # every rank (ZeRO gathers the optimiser state collectively); rank 0 writes
                if rank == 0 and step == cfg.steps:
                    learner.export(f"{d}/adapter", config["probe"])
                busy += time.perf_counter() - start
                metrics.update(busy_learner_seconds=busy, peak_rss_learner_mb=peak_rss_mb())
                # only with a checkpoint: every step's metrics are in MLflow already, and Ray Train logs each report
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
            failpoints.hit("learner.after_checkpoint")  # tests: a worker dies; Ray Train restores the checkpoint


def fit_learner(cfg, run, i: int, base_dir: Path, probe: dict, parent_run_id: str) -> dict:
    """Iteration i's learner on Ray Train: adapter v_i -> v_{i+1} (resumes from its own checkpoints); commits
    v_{i+1} with the learner's final metrics and returns them."""
    a = cfg.align
    child = tracking.child_run(cfg, parent_run_id, f"learner-iter{i}")
    adapter = run.adapter(i) if a.adapter == "continue" else None
    pairs = ray.data.read_parquet(str(run.pairs(i)), file_extensions=["parquet"])
    if a.replay and i:  # earlier iterations' pairs beside the new ones, a reproducible share of each
        earlier = ray.data.read_parquet([str(run.pairs(j)) for j in range(i)], file_extensions=["parquet"])
        keep = partial(replayed_row, fraction=a.replay, seed=a.seed)
        pairs = pairs.union(earlier.filter(keep).select_columns(pairs.columns()))
    # The workers read the pairs with this dataset's own DataContext (a copy), not their current one: a progress
    # bar there repeats in the job's log for as long as the worker lives.
    pairs.context.enable_progress_bars = False
    res = cfg.resources.learner
    trainer = TorchTrainer(
        learn_loop,
        train_loop_config={
            "align": a.__dict__,
            "base_dir": str(base_dir / "ar"),
            "probe": probe,
            "adapter_dir": str(adapter) if adapter else None,
            "run_id": child,
            "tracking_uri": tracking.resolve_uri(cfg.tracking.uri),
            "threads": max(1, int(ray.available_resources().get("CPU", 1)) // a.workers),
            "num_gpus": res.num_gpus,
            "failpoints": failpoints.environment(),
        },
        scaling_config=ScalingConfig(
            num_workers=a.workers, use_gpu=res.num_gpus > 0, resources_per_worker=res.per_worker()
        ),
        torch_config=TorchConfig(backend=train_backend(res)),
        run_config=RunConfig(
            name=f"iter_{i}",
            storage_path=str(run.learner_storage()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=a.max_failures),
        ),
        datasets={"pairs": pairs},
        dataset_config=DataConfig(datasets_to_split=[]),  # every worker reads all pairs: a step's batch is global
    )
    result = trainer.fit()
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and k != "step"}
    with result.checkpoint.as_directory() as d:
        run.commit_adapter(Path(d) / "adapter", i + 1, metrics)
    return metrics
