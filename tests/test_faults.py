"""Faults a cluster has, injected into a real align run and compared with a fault-free run of the same seeds: the
rollout engine's and the reference scorer's processes dying in the middle of a call (their work unreturned: Ray
restarts the actor and retries the call), a learner worker dying after its first checkpoint (Ray Train restores
it, align.max_failures), and a committed pair file damaged on disk. None loses or doubles a pair, and the adapter
is the fault-free one. The deaths are actors/failpoints.py's: `os._exit` at a named point, once per job."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import copy_prepared, mlflow_store

pytestmark = pytest.mark.slow

ALIGN = [
    "align.backend=torch",
    "align.iterations=1",
    "align.prompts_per_iteration=6",
    "align.steps=4",
    "align.batch_size=4",
    "align.warmup_steps=1",
    "align.checkpoint_every=2",
    "align.lora_rank=8",
    "align.lora_alpha=16",
    "align.lr=1e-3",
    "eval.utterances=2",
    "eval.gap_utterances=0",
]


def _argv(prepared_tiny, tiny_base, tmp_path, name):
    cfg, argv, _ = prepared_tiny
    run_dir = copy_prepared(cfg.run_dir, tmp_path / name)
    db = tmp_path / name / "mlflow.db"
    return [
        *argv,
        f"run_dir={run_dir}",
        f"align.base_model={tiny_base}",
        f"tracking.uri={mlflow_store(db)}",
        *ALIGN,
    ], run_dir


def _keys(run_dir):
    rows = pq.read_table(run_dir / "align" / "pairs" / "iter_0", columns=["iteration", "utt_id", "sample_idx"])
    return sorted(tuple(r.values()) for r in rows.to_pylist())


def _adapter(run_dir):
    return load_file(run_dir / "align" / "adapters" / "v1" / "adapter_model.safetensors")


def test_killed_roles_a_killed_learner_worker_and_a_damaged_pair_file_change_nothing(
    prepared_tiny, tiny_base, tmp_path, ray_local, monkeypatch, caplog
):
    """A run whose rollout engine, reference scorer and learner worker each die once, mid-work; then one byte of
    its committed pair file flipped and the job resumed before its learner, without faults: the damage is
    detected, the pair set rolled out again and the adapter learnt again, a fault-free computation of both that
    the faulty run must equal."""
    from jobs import align
    from sa_ray.preference import damaged_files, read_manifest

    argv, run_dir = _argv(prepared_tiny, tiny_base, tmp_path, "faulty")
    points = ["rollout.after_generate", "reference.after_score", "learner.after_checkpoint"]
    markers = tmp_path / "failpoints"
    markers.mkdir()
    monkeypatch.setenv("SA_RAY_FAILPOINTS", ",".join(points))
    monkeypatch.setenv("SA_RAY_FAILPOINT_DIR", str(markers))
    align.main(argv)
    assert sorted(p.name for p in markers.iterdir()) == sorted(points)  # each process died once, mid-work
    keys, faulty = _keys(run_dir), _adapter(run_dir)
    assert len(keys) == len(set(keys)) == 6

    monkeypatch.delenv("SA_RAY_FAILPOINTS")
    pairs = run_dir / "align" / "pairs" / "iter_0"
    committed = read_manifest(pairs)
    part = sorted(pairs.glob("*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # what a disk or a stray write does
    part.write_bytes(bytes(data))
    (run_dir / "align" / "records" / "iter_1.json").unlink()
    for done in ("adapters/v1", "learner/iter_0"):
        shutil.rmtree(run_dir / "align" / done)
    caplog.clear()
    again = align.main(argv)
    assert f"{part.name} changed since it was committed; rolling it out again" in caplog.text
    remade = read_manifest(pairs)
    assert remade["keys_sha256"] == committed["keys_sha256"] and not damaged_files(pairs, remade)
    assert again["records"][1]["pairs"] == 6 and _keys(run_dir) == keys  # none lost, none doubled
    clean = _adapter(run_dir)
    assert clean.keys() == faulty.keys()
    for name in clean:  # the restored learner replays the same steps: equal up to float32 summation order
        torch.testing.assert_close(faulty[name], clean[name], rtol=0, atol=1e-6)
