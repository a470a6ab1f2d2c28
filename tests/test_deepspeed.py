"""DeepSpeed ZeRO in the codec-LM pretrainer, on CPU (gloo): it trains like plain AdamW, resumes exactly
from a safetensors checkpoint of its partitioned optimiser state, and runs as a Ray Train job."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from sa_ray.config import ModelConfig, PretrainConfig
from sa_ray.data.examples import PromptBank, build_vocab
from sa_ray.pretrain import CodecLMTrainer, warmup_cosine

pytest.importorskip("deepspeed")


def _trainer(rows, zero: int | None, steps: int = 20, bf16: bool = False) -> CodecLMTrainer:
    """tests/test_pretrain.py's tiny trainer, with or without ZeRO."""
    model_cfg = ModelConfig(hidden=64, layers=2, heads=2, intermediate=128, nar_hidden=64, nar_layers=1, nar_heads=2)
    train_cfg = PretrainConfig(steps=steps, batch_size=4, warmup_steps=2, lr=3e-3, seed=0, bf16=bf16, deepspeed=zero)
    return CodecLMTrainer(
        model_cfg, train_cfg, build_vocab(rows, 32), 2, 43.066, rows, PromptBank.from_rows(rows, 20, 2)
    )


@pytest.fixture(scope="module")
def train_rows(prepared_in_process):
    cfg, _, _ = prepared_in_process
    return pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist()


@pytest.fixture(scope="module", autouse=True)
def one_thread_one_group(zero_process_group):
    torch.set_num_threads(1)


def _losses(trainer: CodecLMTrainer, n: int) -> list[float]:
    return [trainer.train_step()["ar_loss"] for _ in range(n)]


def test_zero_trains_like_plain_adamw(train_rows, monkeypatch):
    t0 = time.perf_counter()
    zero2 = _trainer(train_rows, 2)
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    assert isinstance(zero2.stepper.engine.optimizer, DeepSpeedZeroOptimizer)
    assert zero2.stepper.engine.zero_optimization_stage() == 2
    init_s = time.perf_counter() - t0
    steps = [zero2.train_step() for _ in range(20)]
    z = [m["ar_loss"] for m in steps]
    p = _losses(_trainer(train_rows, None), 20)
    z1 = _losses(_trainer(train_rows, 1), 3)
    print(
        f"\nZeRO-2 init {init_s:.1f} s; ar_loss ZeRO-2 {z[0]:.4f} -> {z[-1]:.4f}, plain {p[0]:.4f} -> {p[-1]:.4f}; "
        f"max relative gap {max(abs(a - b) / b for a, b in zip(z, p)):.2e}"
    )
    # step 1 sees the same weights, batch and dropout: the same loss. Afterwards only rounding differs
    # (ZeRO sums the gradient norm in float64 and scales by 1 / (norm / clip) instead of clip / norm).
    # Measured here: at most 7e-8 relative over 20 steps.
    assert z[0] == p[0]
    np.testing.assert_allclose(z, p, rtol=1e-5)
    assert z1 == z[:3]  # stage 1 on one rank: the same arithmetic as stage 2
    assert np.mean(z[-5:]) < 0.9 * np.mean(z[:5])  # training lowers the loss (here 4.22 -> 3.52)
    assert all(np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in steps)
    schedule = warmup_cosine(2, 20)  # each step reports the lr of the next one
    assert [m["lr"] for m in steps] == pytest.approx([3e-3 * schedule(i + 1) for i in range(20)])
    # the job's default, bfloat16 autocast around the engine's forward (fp32 weights), works the same way
    # (forced on: a CPU without bf16 matmuls would otherwise train these in fp32 and test nothing new)
    monkeypatch.setattr("sa_ray.pretrain.native_bf16", lambda device: True)
    zb, pb = _losses(_trainer(train_rows, 2, bf16=True), 3), _losses(_trainer(train_rows, None, bf16=True), 3)
    assert zb[0] == pb[0]
    np.testing.assert_allclose(zb, pb, rtol=1e-3)


def test_zero_resumes_bit_for_bit_from_safetensors(train_rows, tmp_path):
    straight = _losses(_trainer(train_rows, 2), 10)

    first = _trainer(train_rows, 2)
    _losses(first, 6)
    first.save(tmp_path / "zero")
    del first
    resumed = _trainer(train_rows, 2)  # a fresh engine: its AdamW state is created by the load
    resumed.load(tmp_path / "zero")
    assert resumed.step_count == 6
    again = _losses(resumed, 4)
    assert again == straight[6:]  # bit for bit: weights, fp32 master, moments, schedule, RNG, data position

    # the checkpoint has the plain path's layout (per-parameter AdamW moments, safetensors + JSON) ...
    plain = _trainer(train_rows, None)
    _losses(plain, 6)
    plain.save(tmp_path / "plain")
    names = sorted(p.name for p in (tmp_path / "zero").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "plain").iterdir())
    zero_opt, plain_opt = (load_file(tmp_path / d / "optim_model.safetensors") for d in ("zero", "plain"))
    assert {k: v.shape for k, v in zero_opt.items()} == {k: v.shape for k, v in plain_opt.items()}
    assert zero_opt["0.step"].item() == 6.0
    zero_meta, plain_meta = (json.loads((tmp_path / d / "state.json").read_text()) for d in ("zero", "plain"))
    assert zero_meta["optimizers"]["model"]["param_groups"] == plain_meta["optimizers"]["model"]["param_groups"]
    # ... so it also resumes without ZeRO: the same next loss, then the same rounding-level drift as above
    unzeroed = _trainer(train_rows, None)
    unzeroed.load(tmp_path / "zero")
    cont = _losses(unzeroed, 4)
    assert cont[0] == again[0]
    np.testing.assert_allclose(cont, again, rtol=1e-5)


def _toy(zero: int | None):
    """A model whose parameters straddle ZeRO's partition boundaries (174 weights over 2 ranks)."""
    from sa_ray.engines.deepspeed_engine import make_stepper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5))
    return model, make_stepper(
        model,
        model.parameters(),
        lr=1e-2,
        betas=(0.9, 0.98),
        weight_decay=0.01,
        schedule=warmup_cosine(2, 10),
        grad_clip=0.5,
        zero_stage=zero,
    )


def test_a_released_process_group_leaves_no_group_behind_for_the_next_engine():
    """A process that trains under ZeRO, releases its group and trains again (a test session, a notebook) gets a
    working engine: DeepSpeed's clone of the first world goes with it (torch's teardown alone left it cached)."""
    import torch.distributed as dist

    from sa_ray.engines.deepspeed_engine import release_process_group

    for _ in range(2):
        _, stepper = _toy(1)
        assert dist.is_initialized() and stepper.module is not None
        release_process_group()
        assert not dist.is_initialized()
    release_process_group()  # nothing to release: no error


def _toy_steps(stepper, rank: int, start: int, n: int) -> list[float]:
    out = []
    for step in range(start, start + n):
        g = torch.Generator().manual_seed(1000 * rank + step)
        x, y = torch.randn(16, 7, generator=g), torch.randn(16, 5, generator=g)
        loss = ((stepper.module(x) - y) ** 2).mean()
        stepper.backward(loss)
        stepper.step()
        out.append(loss.item())
    return out


def _toy_rank(rank: int, world: int, port: int, directory: str) -> None:
    """One of `world` ranks: train, save the gathered state (rank 0 writes), train on; a fresh engine
    loads the checkpoint and must repeat the continuation exactly."""
    import torch.distributed as dist

    from sa_ray.checkpoint import load_state, save_state

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, stepper = _toy(2)
    _toy_steps(stepper, rank, 0, 3)
    if rank == 0:  # save_state calls state_dict(), a collective: the other ranks join with their own call
        save_state(directory, {"model": model}, {"opt": stepper.optimizer}, {"opt": stepper.scheduler}, {})
    else:
        stepper.optimizer.state_dict()
    state = stepper.optimizer.state_dict()  # what each rank gathers
    straight = _toy_steps(stepper, rank, 3, 3)
    model, stepper = _toy(2)
    load_state(directory, {"model": model}, {"opt": stepper.optimizer}, {"opt": stepper.scheduler})
    again = _toy_steps(stepper, rank, 3, 3)
    Path(directory, f"rank{rank}.json").write_text(
        json.dumps({"straight": straight, "again": again, "state0": state["state"][0]["exp_avg"].tolist()})
    )
    dist.destroy_process_group()


def test_zero2_checkpoint_across_two_ranks_gathers_and_resumes(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file as load

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_toy_rank, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["again"] == r["straight"]  # each rank reloaded its own slices of the gathered moments
    assert ranks[0]["state0"] == ranks[1]["state0"]  # every rank gathered the same full tensors
    saved = load(tmp_path / "optim_opt.safetensors")
    model, _ = _toy(None)
    assert {k: v.shape for k, v in saved.items() if not k.endswith("step")} == {
        f"{i}.{key}": p.shape for i, p in enumerate(model.parameters()) for key in ("exp_avg", "exp_avg_sq")
    }
    assert (saved["0.exp_avg"] == torch.tensor(ranks[0]["state0"])).all()
    # a different world size (this process: one rank) loads the two-rank checkpoint and gathers it back
    from sa_ray.checkpoint import load_state

    model, stepper = _toy(2)
    load_state(tmp_path, {"model": model}, {"opt": stepper.optimizer}, {"opt": stepper.scheduler})
    back = stepper.optimizer.state_dict()["state"]
    assert all(torch.equal(back[int(k.split(".")[0])][k.split(".")[1]], v) for k, v in saved.items())


@pytest.mark.slow
def test_pretrain_job_with_zero2_on_ray_train(prepared_tiny, tmp_path):
    """One Ray Train worker (gloo group of one set up by TorchTrainer), ZeRO-2, a checkpoint and an export."""
    from jobs import pretrain
    from jobs._cli import parse
    from sa_ray.data.prepare import read_summary
    from sa_ray.models.ar import load_ar
    from tests.test_pretrain import TINY_MODEL

    cfg0, argv, _ = prepared_tiny
    run_dir = tmp_path / "run"  # its own run dir: a shared one would hand this run's checkpoint to other tests
    shutil.copytree(Path(cfg0.run_dir) / "data", run_dir / "data")
    shutil.copytree(Path(cfg0.run_dir) / "codec", run_dir / "codec")
    cfg = parse(
        [
            *argv,
            f"run_dir={run_dir}",
            *TINY_MODEL,
            "pretrain.deepspeed=2",
            "pretrain.steps=12",
            "pretrain.batch_size=4",
            "pretrain.checkpoint_every=6",
            "pretrain.eval_every=12",
            "pretrain.warmup_steps=2",
            "pretrain.lr=3e-3",
            "pretrain.bf16=false",
        ],
        "test",
    )[0]
    assert cfg.pretrain.deepspeed == 2
    t0 = time.perf_counter()
    model_dir = pretrain.train(cfg, run_dir, read_summary(run_dir / "data"), run_id=None)
    print(f"\nRay Train + ZeRO-2, 12 steps: {time.perf_counter() - t0:.0f} s")
    ar, vocab = load_ar(model_dir / "ar")
    assert ar.config.vocab_size == vocab.size
    ckpts = {
        json.loads((d / "state.json").read_text())["extra"]["step"]: d
        for d in (run_dir / "pretrain" / "ray").glob("checkpoint_*")
        if d.is_dir()
    }
    assert sorted(ckpts) == [6, 12]  # every checkpoint_every steps and the last, num_to_keep=2
    assert load_file(ckpts[12] / "optim_model.safetensors")["0.step"].item() == 12.0  # gathered ZeRO moments
