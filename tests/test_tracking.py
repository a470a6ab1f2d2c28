"""The MLflow model registry helpers, on a real SQLite store with a local artifact folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sa_ray import tracking


def _adapter(folder: Path, seed: int) -> Path:
    """A directory shaped like a PEFT LoRA adapter (a nested file too)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(f'{{"r": 8, "seed": {seed}}}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (seed + 1))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text(f"a\nb\n{seed}\n")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _logged_run(uri: str, exp_id: str, folder: Path, artifact_path: str) -> str:
    client = MlflowClient(uri)
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(folder), artifact_path)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture()
def store(tmp_path):
    uri = tracking.resolve_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp_id = MlflowClient(uri).create_experiment("registry", artifact_location=tracking._artifact_root(uri))
    return uri, exp_id


def test_register_aliases_and_download(tmp_path, store):
    uri, exp_id = store
    a1, a2 = _adapter(tmp_path / "a1", 1), _adapter(tmp_path / "a2", 2)
    run1 = _logged_run(uri, exp_id, a1, "adapter")
    run2 = _logged_run(uri, exp_id, a2, "adapter")

    assert tracking.alias_version("policy", "best", uri) is None  # no such model yet

    v1 = tracking.register_model(
        "policy", run1, "adapter", aliases=["latest", "best"], tags={"round": 1}, tracking_uri=uri
    )
    assert v1 == 1
    assert tracking.alias_version("policy", "latest", uri) == 1
    assert tracking.alias_version("policy", "best", uri) == 1

    v2 = tracking.register_model("policy", run2, "adapter", aliases=["latest"], tracking_uri=uri)
    assert v2 == 2
    assert tracking.alias_version("policy", "latest", uri) == 2  # moved
    assert tracking.alias_version("policy", "best", uri) == 1  # stays where it was set
    assert tracking.alias_version("policy", "nope", uri) is None

    client = MlflowClient(uri, registry_uri=uri)
    mv1 = client.get_model_version("policy", "1")
    assert mv1.run_id == run1 and mv1.tags == {"round": "1"}
    assert mv1.source.startswith("file://") and mv1.source.endswith("/adapter")

    best = tracking.download_model("models:/policy@best", tmp_path / "dl" / "best", uri)
    assert best == tmp_path / "dl" / "best"
    assert _files(best) == _files(a1)  # byte-identical, the files directly in the folder
    latest = tracking.download_model("policy@latest", tmp_path / "dl" / "latest", uri)
    assert _files(latest) == _files(a2)
    by_version = tracking.download_model("models:/policy/1", tmp_path / "dl" / "v1", uri)
    assert _files(by_version) == _files(a1)
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.startswith(".")]  # no staging left

    (tmp_path / "dl" / "best" / "adapter_config.json").write_text("stale")  # re-download over a copy
    assert _files(tracking.download_model("models:/policy@best", tmp_path / "dl" / "best", uri)) == _files(a1)


def test_register_inside_a_job_run_uses_its_store(tmp_path):
    """Without tracking_uri, register_model uses the current store, as a job does inside job_run."""
    from .conftest import config_of

    cfg = config_of(["--config", "configs/tiny.yaml", f"tracking.uri=sqlite:///{tmp_path / 'm' / 'mlflow.db'}"])
    folder = _adapter(tmp_path / "base", 0)
    previous = mlflow.get_tracking_uri()
    try:
        with tracking.job_run(cfg, "test") as run:
            tracking.log_artifact(folder, "base_model")
            version = tracking.register_model("base", run.info.run_id, "base_model", aliases=["best"])
    finally:
        mlflow.set_tracking_uri(previous)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    assert version == 1 and tracking.alias_version("base", "best", uri) == 1
    assert _files(tracking.download_model("models:/base@best", tmp_path / "dl", uri)) == _files(folder)


def test_register_missing_artifact_fails(tmp_path, store):
    uri, exp_id = store
    run = _logged_run(uri, exp_id, _adapter(tmp_path / "a", 0), "adapter")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        tracking.register_model("policy", run, "no_such_dir", tracking_uri=uri)
    with pytest.raises(ValueError, match="models:/"):
        tracking.download_model("policy", tmp_path / "x", uri)


def test_experiments_open_on_their_training_runs(tmp_path):
    """MLflow 3's UI shows an untagged experiment as GenAI (traces); a job's experiment is tagged as model
    development, also one created before the tag existed."""
    from .conftest import config_of

    cfg = config_of(["--config", "configs/tiny.yaml", f"tracking.uri=sqlite:///{tmp_path / 'm' / 'mlflow.db'}"])
    uri = tracking.resolve_uri(cfg.tracking.uri)
    old = MlflowClient(uri).create_experiment(cfg.experiment, artifact_location=tracking._artifact_root(uri))
    previous = mlflow.get_tracking_uri()
    try:
        assert tracking.setup(cfg) == old
    finally:
        mlflow.set_tracking_uri(previous)
    assert MlflowClient(uri).get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
