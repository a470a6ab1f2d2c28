"""MLflow: the one module that talks to its API. Experiment per config name, one parent run per job.

The default store is a local SQLite file (`sqlite:///mlruns/mlflow.db`) whose artifacts sit beside it
in `mlruns/artifacts/`; any tracking URI (an `mlflow server`, a managed service) works unchanged.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sa_ray.config import Config, save_config

_MAX_PARAM_CHARS = 500


def resolve_uri(uri: str) -> str:
    """Makes a relative SQLite path absolute (and its folder exist) so every process finds one store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None  # a server or managed store decides


def setup(cfg: Config) -> str:
    """Points MLflow at the configured store and experiment; returns the experiment id."""
    uri = resolve_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        exp_id = client.create_experiment(cfg.experiment, artifact_location=_artifact_root(uri))
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def job_run(cfg: Config, job: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The job's parent run (resumed when `run_id` is given), with the resolved config logged."""
    setup(cfg)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{job}-{cfg.name}") as run:
        mlflow.set_tags({"sa_ray.job": job, "sa_ray.config": cfg.name})
        if run_id is None:
            params = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in cfg.flat().items()}
            mlflow.log_params(params)
            with tempfile.TemporaryDirectory() as tmp:
                save_config(cfg, Path(tmp) / "config.yaml")
                mlflow.log_artifact(str(Path(tmp) / "config.yaml"))
        yield run


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(data: dict, name: str) -> None:
    mlflow.log_dict(data, name)


def client(cfg: Config) -> MlflowClient:
    return MlflowClient(resolve_uri(cfg.tracking.uri))


class RunLogger:
    """Logs into an existing run from any process (e.g. a Ray Train worker), without a global active run."""

    def __init__(self, uri: str, run_id: str):
        self._client, self.run_id = MlflowClient(resolve_uri(uri)), run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._client.log_batch(self.run_id, metrics=batch)
