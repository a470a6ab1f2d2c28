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
    "corpus.n_sentences=48", "corpus.heldout_sentences=6",
    "corpus.voices=[mbrola-us1, mbrola-us2, mbrola-en1]", "corpus.heldout_voices=[mbrola-en1]",
    "codec.n_codebooks=2", "codec.codebook_size=32", "codec.fit_utterances=40",
    "prepare.encoders=1", "prepare.batch_size=16",
]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
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
