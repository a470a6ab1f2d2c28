"""Shared fixtures: ONE local Ray cluster per test session, a small synthetic corpus, a prepared slice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at test time: every model comes from a local path
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_MININTERVAL", "5")

from sa_ray.config import Config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# A small but real slice: 3 MBROLA voices (one held out), 48 sentences (6 held out).
TINY_OVERRIDES = [
    "corpus.n_sentences=48", "corpus.heldout_sentences=6", "corpus.align_sentences=8",
    "corpus.voices=[mbrola-us1, mbrola-us2, mbrola-en1]", "corpus.heldout_voices=[mbrola-en1]",
    "codec.path=null", "codec.n_codebooks=2", "codec.codebook_size=32", "codec.fit_utterances=40",
    "prepare.encoders=1", "prepare.batch_size=16",
]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        from jobs._cli import start_local_ray

        start_local_ray(num_cpus=2, env={"HF_HUB_OFFLINE": "1"}, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """Synthesised audio shared by every test of the session (built once, like the real cache)."""
    return tmp_path_factory.mktemp("corpus-cache")


def tiny_argv(tmp: Path, corpus_cache: Path, *extra: str) -> list[str]:
    """Job arguments for the tiny slice, writing under `tmp`."""
    return ["--config", str(REPO / "configs" / "tiny.yaml"), f"run_dir={tmp / 'run'}",
            f"corpus.cache_dir={corpus_cache}", f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
            *TINY_OVERRIDES, *extra]


def config_of(argv: list[str]) -> Config:
    from jobs._cli import parse

    return parse(argv, "test")[0]


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory, corpus_cache, ray_local):
    """`jobs.prepare` run once on the tiny slice: (config, argv, summary)."""
    from jobs import prepare

    argv = tiny_argv(tmp_path_factory.mktemp("prepared"), corpus_cache)
    return config_of(argv), argv, prepare.main(argv)


def tiny_trainer(rows: list[dict], steps: int, batch_size: int, seed: int = 0, wrap=lambda m: m, **pretrain):
    """The tiny codec LM recipe of the tests (AR hidden 64 x 2 layers, NAR 64 x 1) on rows of the tiny slice;
    `pretrain` sets other PretrainConfig fields, `wrap` is the trainer's (what Ray Train's prepare_model does)."""
    from sa_ray.config import ModelConfig, PretrainConfig
    from sa_ray.data.examples import PromptBank, build_vocab
    from sa_ray.pretrain import CodecLMTrainer

    codebook_size, n_codebooks = 32, 2  # TINY_OVERRIDES' codec
    model_cfg = ModelConfig(hidden=64, layers=2, heads=2, intermediate=128, nar_hidden=64, nar_layers=1, nar_heads=2)
    train_cfg = PretrainConfig(**{"steps": steps, "batch_size": batch_size, "warmup_steps": 2, "lr": 3e-3, "seed": seed,
                                  "bf16": False, **pretrain})
    return CodecLMTrainer(model_cfg, train_cfg, build_vocab(rows, codebook_size), n_codebooks, 43.066, rows,
                          PromptBank.from_rows(rows, 20, n_codebooks), wrap=wrap)


@pytest.fixture(scope="session")
def tiny_base(prepared_tiny, tmp_path_factory) -> Path:
    """A tiny base model (AR + NAR) trained for a few steps on the prepared slice, so its samples are not noise."""
    import pyarrow.parquet as pq
    import torch

    cfg, _, _ = prepared_tiny
    rows = pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist()
    torch.set_num_threads(1)
    trainer = tiny_trainer(rows, steps=30, batch_size=8)
    for _ in range(30):
        trainer.train_step()
    out = tmp_path_factory.mktemp("base")
    trainer.export(out)
    return out


def copy_prepared(prepared_run_dir: str | Path, tmp: Path) -> Path:
    """A fresh run directory holding the prepared data and codec of another run (jobs write beside them)."""
    import shutil

    run_dir = tmp / "run"
    for sub in ("data", "codec"):
        shutil.copytree(Path(prepared_run_dir) / sub, run_dir / sub)
    return run_dir
