"""The LoRA preference learner scales out: `align.batch_size` pairs per step whatever the number of workers.

Two ranks (gloo, one process each, no Ray) with DDP train the adapter one rank trains on the same global batch;
DeepSpeed ZeRO-1/2 at two ranks trains the DDP adapter; a ZeRO checkpoint resumes without ZeRO and the other way
round. The model is a tiny random AR model and the pairs synthetic: what is checked is the arithmetic of the
step, not what the adapter learns (tests/test_align.py).

Tolerance. Both sides compute the same step in float32, but not in the same order: one rank sums eight pairs'
gradients in one backward, two ranks sum four each and DDP (or ZeRO's reduce-scatter) averages the two;
ZeRO also sums the clipping norm in its own order. The differences start at float32 rounding (~1e-7 relative)
and AdamW carries them on: dividing by the root of the second moment turns a rounding-level difference in a
small gradient entry into a larger one in its update. So we compare what the steps moved,
||a - b|| / ||a - a0|| over all adapter tensors (a0: the adapter before training), against 1e-4. Measured
here over 6 steps: 6e-7 for DDP at 2 ranks against one rank, 2e-8 for ZeRO-1/2 against DDP and for the
resumed runs. A real difference is thousands of times the tolerance: a step on half the batch (each worker its own
batch, as before the batch became global) ends 0.69 away, a resume that loses the AdamW moments 0.32
(the first is checked below, so the tolerance tells the two apart).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa_ray import lora
from sa_ray.config import AlignConfig, ModelConfig
from sa_ray.dpo import DPOLearner, pair_logprobs
from sa_ray.models.ar import build_ar_model, load_ar, save_ar
from sa_ray.models.vocab import EOS, Vocab

pytest.importorskip("deepspeed")

STEPS, RESUME_AT = 6, 3
TOLERANCE = 1e-4  # relative to what the steps moved: see the module docstring


def _cfg(**kw) -> AlignConfig:
    """8 pairs a step out of 20: the run crosses an epoch (and its reshuffle) at step 3."""
    return AlignConfig(
        **{
            "method": "rpo",  # DPO's mean over pairs plus the NLL term's: both must average over the ranks
            "lora_rank": 4,
            "lora_alpha": 8,
            "batch_size": 8,
            "steps": STEPS,
            "warmup_steps": 1,
            "lr": 1e-2,
            "grad_clip": 0.05,  # clipping active: the norm of the averaged gradient is what counts
            "checkpoint_every": RESUME_AT,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def base_and_pairs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random AR model (save_ar's layout) and 20 synthetic pairs of varied lengths, their reference
    logprobs from the base itself (policy == reference at step 0, as in the loop)."""
    out = tmp_path_factory.mktemp("learner-scale")
    vocab = Vocab(tuple("abcdef"), codebook_size=16, aligned=False)
    torch.manual_seed(0)
    model = build_ar_model(ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_positions=128), vocab)
    save_ar(model, vocab, out / "ar")
    rng = random.Random(0)

    def codes(n: int) -> list[int]:
        return [rng.randrange(vocab.codebook_size) for _ in range(n)]

    pairs = []
    for i in range(20):
        text = vocab.text_ids([rng.choice(vocab.text_tokens) for _ in range(rng.randint(3, 8))])
        chosen = vocab.target(codes(rng.randint(6, 20)))
        rejected = vocab.target(codes(rng.randint(4, 24)))
        pairs.append(
            {
                "utt_id": f"u{i:02d}",
                "sample_idx": 0,
                "prompt_ids": vocab.prompt(text, codes(rng.randint(3, 6))),
                "chosen_ids": chosen,
                "rejected_ids": rejected,
            }
        )
    assert all(p["chosen_ids"][-1] == EOS for p in pairs)
    base, _ = load_ar(out / "ar")
    with torch.no_grad():
        ref_c, ref_r, _ = pair_logprobs(base, pairs)
    for p, c, r in zip(pairs, ref_c.tolist(), ref_r.tolist()):
        p.update(ref_chosen_logp=c, ref_rejected_logp=r)
    (out / "pairs.json").write_text(json.dumps(pairs))
    return out / "ar", out / "pairs.json"


def _adapter(learner: DPOLearner) -> dict[str, torch.Tensor]:
    return lora.adapter_tensors(learner.model)


def _moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], a0: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a - a0|| over all adapter tensors: how far apart two runs ended, relative to how far the
    steps moved the adapter."""
    assert a.keys() == b.keys() == a0.keys()
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - a0[k]).double().pow(2).sum()) for k in a) ** 0.5
    assert moved > 0
    return diff / moved


def _rank(rank: int, world: int, port: int, base_dir: str, pairs_path: str, out: str) -> None:
    """One of two ranks, in its own process: every two-rank run of the tests, one after the other on one gloo
    group (a ZeRO engine and a DDP wrapper share it). Rank 0 writes the adapters, checkpoints and metrics."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    pairs, out_dir = json.loads(Path(pairs_path).read_text()), Path(out)
    timings = {}

    def learner(zero: int | None) -> DPOLearner:
        wrap = (lambda m: m) if zero else DistributedDataParallel  # as actors/learner.py: ZeRO reduces itself
        return DPOLearner(base_dir, None, _cfg(deepspeed=zero), pairs, rank=rank, world=world, wrap=wrap)

    def steps(lrn: DPOLearner, until: int) -> list[dict]:
        return [lrn.train_step() for _ in range(until - lrn.step_count)]

    def write(name: str, lrn: DPOLearner, metrics: list[dict] | None = None) -> None:
        if rank == 0:
            save_file(_adapter(lrn), out_dir / f"{name}.safetensors")
            if metrics is not None:
                (out_dir / f"{name}.json").write_text(json.dumps(metrics))

    # uninterrupted DDP and ZeRO-2 runs, each checkpointed at RESUME_AT (save: every rank, rank 0 writes)
    for name, zero in (("ddp", None), ("zero2", 2)):
        t0 = time.perf_counter()
        lrn = learner(zero)
        metrics = steps(lrn, RESUME_AT)
        lrn.save(out_dir / f"{name}-ckpt")
        metrics += steps(lrn, STEPS)
        write(name, lrn, metrics)
        if rank == 0:
            lrn.export(out_dir / f"{name}-export")
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lrn = learner(1)
    write("zero1", lrn, steps(lrn, STEPS))
    timings["zero1"] = time.perf_counter() - t0
    # each checkpoint resumed by the other kind of learner
    for name, ckpt, zero in (("ddp-from-zero2", "zero2-ckpt", None), ("zero2-from-ddp", "ddp-ckpt", 2)):
        lrn = learner(zero)
        lrn.load(out_dir / ckpt)
        assert lrn.step_count == RESUME_AT
        steps(lrn, STEPS)
        write(name, lrn)
    if rank == 0:
        (out_dir / "timings.json").write_text(json.dumps(timings))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(base_and_pairs, tmp_path_factory) -> Path:
    """Every two-rank run at once (one pair of processes: each start imports torch, peft and DeepSpeed)."""
    import torch.multiprocessing as mp

    base_dir, pairs_path = base_and_pairs
    out = tmp_path_factory.mktemp("two-ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    mp.start_processes(_rank, args=(2, port, str(base_dir), str(pairs_path), str(out)), nprocs=2, start_method="spawn")
    print(
        f"\ntwo ranks: {time.perf_counter() - t0:.0f} s in all; per run {json.loads((out / 'timings.json').read_text())}"
    )
    return out


def _one_rank(base_and_pairs, **kw) -> tuple[DPOLearner, dict, list[dict]]:
    base_dir, pairs_path = base_and_pairs
    torch.set_num_threads(1)
    learner = DPOLearner(base_dir, None, _cfg(**kw), json.loads(pairs_path.read_text()))
    start = _adapter(learner)
    return learner, start, [learner.train_step() for _ in range(STEPS)]


def test_a_step_takes_batch_size_pairs_whatever_the_workers(base_and_pairs):
    """Every worker draws the same order; the blocks of the two ranks are the one rank's batch, epoch after epoch."""
    base_dir, pairs_path = base_and_pairs
    pairs = json.loads(pairs_path.read_text())
    one = DPOLearner(base_dir, None, _cfg(), pairs)
    two = [DPOLearner(base_dir, None, _cfg(), pairs, rank=r, world=2) for r in range(2)]
    for _ in range(7):  # 20 pairs, 8 a step: epochs 0, 0, 1, 1, 2, 2, 3
        batch = [p["utt_id"] for p in one.next_batch()]
        blocks = [[p["utt_id"] for p in t.next_batch()] for t in two]
        assert blocks[0] + blocks[1] == batch and len(blocks[0]) == 4
        assert (one.epoch, one.position) == (two[0].epoch, two[0].position) == (two[1].epoch, two[1].position)
    assert one.epoch == 3
    # fewer pairs than a batch: all of them, as many as split evenly
    assert DPOLearner(base_dir, None, _cfg(), pairs[:7], world=2).step_pairs == 6
    with pytest.raises(ValueError, match="multiple of the workers"):
        DPOLearner(base_dir, None, _cfg(), pairs, world=3)


def test_two_ddp_ranks_train_the_one_rank_adapter(base_and_pairs, two_ranks):
    learner, start, metrics = _one_rank(base_and_pairs)
    one = _adapter(learner)
    ddp = load_file(two_ranks / "ddp.safetensors")
    gap = _moved(one, ddp, start)
    print(f"\nDDP 2 x 4 vs 1 x 8 pairs, {STEPS} steps: relative gap {gap:.1e}")
    assert gap < TOLERANCE
    # the metrics are the step's, over both ranks' pairs (rank 0 logs them)
    ddp_metrics = json.loads((two_ranks / "ddp.json").read_text())
    for m1, m2 in zip(metrics, ddp_metrics):
        assert m1.keys() == m2.keys()
        for k in m1:
            assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
    assert metrics[0]["dpo_loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at step 0
    assert metrics[0]["grad_norm"] > _cfg().grad_clip  # clipping took part
    # the tolerance tells a real difference apart: half the batch per step (each worker's own batch, as before)
    half, _, _ = _one_rank(base_and_pairs, batch_size=4)
    assert _moved(one, _adapter(half), start) > 100 * TOLERANCE


def test_zero_at_two_ranks_trains_the_ddp_adapter(base_and_pairs, two_ranks):
    start = _adapter(_fresh(base_and_pairs))
    ddp = load_file(two_ranks / "ddp.safetensors")
    for name in ("zero2", "zero1"):
        gap = _moved(ddp, load_file(two_ranks / f"{name}.safetensors"), start)
        print(f"\n{name} vs DDP at 2 ranks, {STEPS} steps: relative gap {gap:.1e}")
        assert gap < TOLERANCE
    zero2, ddp_metrics = (json.loads((two_ranks / f"{n}.json").read_text()) for n in ("zero2", "ddp"))
    assert [m["lr"] for m in zero2] == pytest.approx([m["lr"] for m in ddp_metrics])
    assert [m["grad_norm"] for m in zero2] == pytest.approx([m["grad_norm"] for m in ddp_metrics], rel=1e-4)
    # the export is the PEFT layout under ZeRO too
    names = sorted(p.name for p in (two_ranks / "zero2-export").iterdir())
    assert names == sorted(p.name for p in (two_ranks / "ddp-export").iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names


def _fresh(base_and_pairs) -> DPOLearner:
    base_dir, pairs_path = base_and_pairs
    return DPOLearner(base_dir, None, _cfg(), json.loads(pairs_path.read_text()))


def test_checkpoints_resume_across_zero_and_plain(base_and_pairs, two_ranks):
    """A ZeRO checkpoint holds what a plain one holds (the adapter, torch AdamW's per-parameter moments): each
    resumes under the other, or on one worker, and ends where the uninterrupted run ends."""
    start = _adapter(_fresh(base_and_pairs))
    zero_ckpt, ddp_ckpt = two_ranks / "zero2-ckpt", two_ranks / "ddp-ckpt"
    assert sorted(p.name for p in zero_ckpt.iterdir()) == sorted(p.name for p in ddp_ckpt.iterdir())
    for name in ("adapter_state", "optim_adapter"):
        z, d = (load_file(c / f"{name}.safetensors") for c in (zero_ckpt, ddp_ckpt))
        assert {k: v.shape for k, v in z.items()} == {k: v.shape for k, v in d.items()}
    assert load_file(zero_ckpt / "optim_adapter.safetensors")["0.step"].item() == RESUME_AT
    for resumed, straight in (("ddp-from-zero2", "zero2"), ("zero2-from-ddp", "ddp")):
        gap = _moved(
            load_file(two_ranks / f"{straight}.safetensors"), load_file(two_ranks / f"{resumed}.safetensors"), start
        )
        print(f"\n{resumed} vs {straight} uninterrupted: relative gap {gap:.1e}")
        assert gap < TOLERANCE
    # and on another number of workers: the data position counts the whole step's pairs
    for ckpt in (zero_ckpt, ddp_ckpt):
        one = _fresh(base_and_pairs)
        one.load(ckpt)
        for _ in range(STEPS - RESUME_AT):
            one.train_step()
        assert _moved(load_file(two_ranks / "ddp.safetensors"), _adapter(one), start) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("zero", [None], ids=["ddp"])  # ZeRO at 2 ranks = DDP: test_zero_at_two_ranks_...
def test_fit_learner_with_two_workers_commits_the_one_worker_adapter(zero, base_and_pairs, ray_local, tmp_path):
    """actors/learner.py on Ray Train: align.workers=2 (DDP, or ZeRO-2: every worker joins the checkpoints' gather)
    reads every pair from Ray Data, trains the one-rank adapter and commits it (PEFT layout) with the metrics of
    the whole batch."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from actors.learner import fit_learner
    from sa_ray.align_run import AlignRun
    from sa_ray.config import Config

    base_dir, pairs_path = base_and_pairs
    pairs = json.loads(pairs_path.read_text())
    cfg = Config(name="learner-scale", run_dir=str(tmp_path / "run"))
    cfg.align = _cfg(workers=2, deepspeed=zero)
    cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # ray_local has 2 CPUs: half a CPU per worker leaves one to the Ray Data tasks that read the pairs
    cfg.resources.learner = dataclasses.replace(cfg.resources.learner, num_cpus=0.5)
    cfg.validate()
    run = AlignRun(cfg.run_dir)
    run.pairs(0).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pairs), run.pairs(0) / "part-0.parquet")
    client = MlflowClient(cfg.tracking.uri)
    parent = client.create_run(client.create_experiment("learner-scale")).info.run_id
    probe = {"prompt": pairs[0]["prompt_ids"], "continuation": pairs[0]["chosen_ids"]}

    t0 = time.perf_counter()
    metrics = fit_learner(cfg, run, 0, base_dir.parent, probe, parent)
    print(f"\nfit_learner, 2 workers x {STEPS} steps, ZeRO {zero}: {time.perf_counter() - t0:.0f} s")
    learner, start, one_metrics = _one_rank(base_and_pairs)
    committed = load_file(run.adapter(1) / "adapter_model.safetensors")
    gap = _moved(_adapter(learner), committed, start)
    print(f"Ray Train 2 x 4 vs 1 x 8 pairs: relative gap {gap:.1e}")
    assert gap < TOLERANCE
    assert metrics["loss"] == pytest.approx(one_metrics[-1]["loss"], rel=1e-4)  # the whole batch's, not a block's
    assert json.loads((run.adapter(1) / "probe.json").read_text())["logprob"] < 0
