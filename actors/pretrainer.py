"""Ray Train role: the per-worker loop that trains the AR + NAR models (`TorchTrainer`).

Every worker reads the whole (small, tokenised) training set from its Ray Data shard and keeps the
rows whose id hashes to its rank: the split is deterministic, so a resumed run sees the same data.
"""

from __future__ import annotations

import tempfile
import zlib
from functools import partial

import ray.train
import torch
from ray.train.torch import prepare_model

from actors.placement import role_device
from sa_ray.config import ModelConfig, PretrainConfig
from sa_ray.data.examples import PromptBank
from sa_ray.models.vocab import Vocab
from sa_ray.pretrain import CodecLMTrainer
from sa_ray.tracking import RunLogger


def _rows(name: str) -> list[dict]:
    return list(ray.train.get_dataset_shard(name).iter_rows())


def train_loop(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    model_cfg, train_cfg = ModelConfig(**config["model"]), PretrainConfig(**config["pretrain"])
    vocab: Vocab = config["vocab"]
    all_rows = _rows("train")
    mine = [r for r in all_rows if zlib.crc32(r["utt_id"].encode()) % world == rank]
    bank = PromptBank.from_rows(all_rows, config["prompt_frames"], config["n_codebooks"])
    # prepare_model for the plain path: onto the worker's device (its GPU, resources.pretrain.num_gpus), DDP when
    # world > 1. With pretrain.deepspeed the trainer builds a ZeRO engine on the process group Ray Train set up
    # (gloo on CPU, also for one worker), which places the model and reduces gradients itself.
    device = role_device("pretrain", config["num_gpus"])
    trainer = CodecLMTrainer(
        model_cfg,
        train_cfg,
        vocab,
        config["n_codebooks"],
        config["frame_rate"],
        mine,
        bank,
        rank=rank,
        wrap=(lambda m: m) if train_cfg.deepspeed else partial(prepare_model, move_to_device=device),
    )
    heldout = _rows("heldout") if rank == 0 else []
    heldout_bank = PromptBank.from_rows(heldout, config["prompt_frames"], config["n_codebooks"]) if heldout else None
    logger = RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 and config.get("run_id") else None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.load(d)
    elif train_cfg.warm_start:
        trainer.warm_start(train_cfg.warm_start, train_cfg.warm_start_step)
        if logger and heldout_bank is not None:  # where the curve starts: the saved model on this run's held-out set
            logger.log(trainer.evaluate(heldout, heldout_bank), trainer.step_count)

    log_every, end = 25, train_cfg.stop_after or train_cfg.steps
    while trainer.step_count < end:
        metrics = trainer.train_step()
        step = trainer.step_count
        last = step == end
        if heldout_bank is not None and (step % train_cfg.eval_every == 0 or last):
            metrics.update(trainer.evaluate(heldout, heldout_bank))
        metrics["step"], metrics["epoch"] = step, trainer.epoch
        if logger and (step % log_every == 0 or last or "heldout_ar_loss" in metrics):
            logger.log(metrics, step)
        if step % train_cfg.checkpoint_every == 0 or last:
            with tempfile.TemporaryDirectory() as d:
                trainer.save(d)  # every rank (ZeRO gathers the optimiser state collectively); rank 0 writes
                if rank == 0:
                    trainer.export(f"{d}/model")
                # only with a checkpoint: the metrics are in MLflow already, and Ray Train logs each report
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
