"""MLflow: the one module that talks to its API. Experiment per config name, one parent run per job.

The default store is a local SQLite file (`sqlite:///mlruns/mlflow.db`) whose artifacts sit beside it
in `mlruns/artifacts/`; any tracking URI (an `mlflow server`, a managed service) works unchanged.
"""

from __future__ import annotations

import contextlib
import numbers
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sa_ray.config import Config, save_config

_MAX_PARAM_CHARS = 500


def resolve_uri(uri: str) -> str:
    """Makes a relative SQLite path absolute (and its folder exist) so every process finds one store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None  # a server or managed store decides


# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces: "no data"); these are training
# runs, so it opens on the runs table and their metric charts.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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
    if (exp and exp.tags.get(EXPERIMENT_KIND[0])) != EXPERIMENT_KIND[1]:  # also for stores made before the tag
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
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
    """The scalars of `metrics` (lists, e.g. per-utterance values, stay in the job's own records)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(data: dict, name: str) -> None:
    mlflow.log_dict(data, name)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_wav(wav, sample_rate: int, artifact_file: str) -> None:
    """A waveform as a .wav artifact (MLflow's UI plays it)."""
    from sa_ray.audio import wav_bytes

    log_bytes(wav_bytes(wav, sample_rate), artifact_file)


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Bytes made elsewhere (e.g. a PNG from an actor on another node) as an artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)


def child_run(cfg: Config, parent_run_id: str, name: str) -> str:
    """A nested run under `parent_run_id` (e.g. one per learner), created without touching the active run."""
    c = client(cfg)
    parent = c.get_run(parent_run_id)
    existing = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.mlflow.runName = '{name}'",
    )
    if existing:  # a resumed job continues its child run
        return existing[0].info.run_id
    return c.create_run(
        parent.info.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_run_id}
    ).info.run_id


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


# ---- Model registry: versions of artifact directories (base models, LoRA adapters) under a name ----

_LATEST = "latest"  # MLflow reserves this alias: it always means the highest version, never set by hand
KEY_TAG = "sa_ray.key"  # what a registered version IS (run + policy version): registered once


def _registry_client(tracking_uri: str | None) -> MlflowClient:
    uri = resolve_uri(tracking_uri or mlflow.get_tracking_uri())
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_model(
    name: str,
    run_id: str,
    artifact_path: str,
    aliases: list[str] | tuple[str, ...] = (),
    tags: dict | None = None,
    tracking_uri: str | None = None,
    key: str | None = None,
) -> int:
    """Registers the directory already logged at `runs:/<run_id>/<artifact_path>` as a new version of
    registered model `name` (created if missing), points `aliases` at it and returns the version.

    `key` (tag `sa_ray.key`) makes it idempotent: a version already registered under the same key is the one
    returned (a job killed between registering and recording it registers nothing twice on resume).

    The version's source is the run's concrete artifact location (not a `runs:/` URI), so readers need
    only the artifact store. `latest` is MLflow's reserved alias for the highest version: a new version
    always becomes it, so it is accepted here and not set. `tracking_uri` defaults to the current one
    (the job's, inside `job_run`).
    """
    client = _registry_client(tracking_uri)
    artifact_path = artifact_path.strip("/")
    if not client.list_artifacts(run_id, artifact_path):
        raise FileNotFoundError(f"run {run_id} has no artifact directory {artifact_path!r} to register")
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    tags = {**{k: str(v) for k, v in (tags or {}).items()}, **({KEY_TAG: key} if key else {})}
    done = find_versions(name, {KEY_TAG: key}, tracking_uri) if key else []
    version = done[0] if done else int(client.create_model_version(name, source, run_id=run_id, tags=tags).version)
    for alias in aliases:
        if alias.lower() != _LATEST:
            client.set_registered_model_alias(name, alias, version)
    return version


def find_versions(name: str, tags: dict[str, str], tracking_uri: str | None = None) -> list[int]:
    """Versions of registered model `name` carrying all of `tags`, oldest first (none: no such model)."""
    where = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    return sorted(int(v.version) for v in _registry_client(tracking_uri).search_model_versions(where))


def model_versions(name: str, tracking_uri: str | None = None) -> list[dict]:
    """Every version of registered model `name`, oldest first, as {version, aliases, tags, created} (`created`: ms
    since the epoch); `latest` is among the aliases of the newest, as `alias_version` resolves it. [] when there is
    no such model."""
    client = _registry_client(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    aliases: dict[int, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(int(version), []).append(alias)
    if found:
        aliases.setdefault(int(found[-1].version), []).append(_LATEST)
    return [
        {
            "version": int(v.version),
            "aliases": sorted(aliases.get(int(v.version), [])),
            "tags": dict(v.tags),
            "created": v.creation_timestamp,
        }
        for v in found
    ]


def version_tags(name: str, version: int, tracking_uri: str | None = None) -> dict[str, str]:
    return dict(_registry_client(tracking_uri).get_model_version(name, str(version)).tags)


def set_alias(name: str, alias: str, version: int, tracking_uri: str | None = None) -> None:
    _registry_client(tracking_uri).set_registered_model_alias(name, alias, version)


def alias_version(name: str, alias: str, tracking_uri: str) -> int | None:
    """The version that `name@alias` points at, or None (no such model or alias; `latest`: no version)."""
    client = _registry_client(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if alias.lower() == _LATEST:
        versions = client.search_model_versions(f"name = '{name}'")
        return max((int(v.version) for v in versions), default=None)
    version = model.aliases.get(alias)
    return None if version is None else int(version)


def model_ref(uri: str) -> tuple[str, str | None, int | None]:
    """`models:/<name>@<alias>` -> (name, alias, None); `models:/<name>/<version>` -> (name, None, version);
    `models:/` may be left out. ValueError for anything else."""
    ref = uri.removeprefix("models:/").strip("/")
    if "@" in ref and all(ref.split("@", 1)):
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref and ref.rsplit("/", 1)[1].isdigit() and ref.rsplit("/", 1)[0]:
        name, version = ref.rsplit("/", 1)
        return name, None, int(version)
    raise ValueError(f"expected models:/<name>@<alias> or models:/<name>/<version>, got {uri!r}")


def download_model(uri_or_name_alias: str, dst: str | Path, tracking_uri: str) -> Path:
    """Copies a registered version's files into the folder `dst` and returns it (`dst` then holds
    e.g. `adapter_config.json` directly). Accepts what `model_ref` does; FileNotFoundError when the store
    has no such model, alias or version."""
    client = _registry_client(tracking_uri)
    name, alias, version = model_ref(uri_or_name_alias)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise FileNotFoundError(
            f"{uri_or_name_alias}: no such registered model version in {client.tracking_uri}"
        ) from None
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as staging:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=staging, tracking_uri=client.tracking_uri
            )
        )
        if not local.is_dir():
            raise NotADirectoryError(f"{name} version {mv.version} ({mv.source}) is not a directory")
        if dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()
        if dst.exists():
            shutil.copytree(local, dst, dirs_exist_ok=True)
        else:
            local.rename(dst)
    return dst
