"""The jobs as a cluster user runs them: `ray job submit` to a real local head with token authentication."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import TINY_OVERRIDES, mlflow_store
from .ray_head import BIN, running_head, submit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    with running_head() as head:
        yield head


_LIST_CWD = "import os, sys; print('JOB', sys.executable, sorted(os.listdir('.')))"


def _prepare_argv(tmp: Path, corpus_cache: Path) -> list[str]:
    """Absolute paths for everything the job writes: it runs in a copy of the working directory."""
    return [
        "python",
        "-m",
        "jobs.prepare",
        "--config",
        "configs/tiny.yaml",
        f"run_dir={tmp / 'run'}",
        f"corpus.cache_dir={corpus_cache}",
        f"tracking.uri={mlflow_store(tmp / 'mlruns' / 'mlflow.db')}",
        *TINY_OVERRIDES,
    ]


def test_head_requires_a_token(ray_head):
    assert json.loads(ray_head.get("/api/authentication_mode", token=False)[1]) == {"authentication_mode": "token"}
    assert ray_head.get("/api/jobs/", token=False)[0] == 401


def test_job_runs_the_venv_python_in_an_uploaded_copy_without_the_big_folders(ray_head):
    env = ray_head.client_env()
    env["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"  # the explicit excludes alone keep the big folders out
    rc, logs = submit(ray_head, ["python", "-c", _LIST_CWD], env=env, submission_id="listing")
    assert rc == 0, logs
    line = next(x for x in logs.splitlines() if x.startswith("JOB "))
    exe, listing = line.split(" ", 2)[1:]
    assert Path(exe).parent == BIN or Path(exe).resolve() == Path(sys.executable).resolve(), line
    top = set(ast.literal_eval(listing))
    assert {"jobs", "sa_ray", "actors", "configs", "pyproject.toml"} <= top
    assert not top & {".venv", "data", "runs", "mlruns", "logs", ".git"}, top
    assert ray_head.job_status("listing") == "SUCCEEDED"


def test_submit_without_the_token_is_refused(ray_head, tmp_path, corpus_cache):
    argv = _prepare_argv(tmp_path, corpus_cache)
    rc, logs = submit(ray_head, argv, env=ray_head.client_env(token=False), submission_id="no-token")
    assert rc != 0 and "Unauthorized: Missing authentication token" in logs, logs

    wrong = ray_head.client_env(token=False) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    rc, logs = submit(ray_head, argv, env=wrong, submission_id="wrong-token")
    assert rc != 0 and "Forbidden: Invalid authentication token" in logs, logs

    # the token without RAY_AUTH_MODE=token on the client: Ray sends no header at all
    no_mode = ray_head.client_env(token=False) | {"RAY_AUTH_TOKEN_PATH": str(ray_head.token_path)}
    rc, logs = submit(ray_head, argv, env=no_mode, submission_id="no-mode")
    assert rc != 0 and "Unauthorized" in logs, logs

    assert all(ray_head.job_status(s) is None for s in ("no-token", "wrong-token", "no-mode"))
    assert not (tmp_path / "run").exists()


def test_align_job_succeeds_is_tracked_and_its_policy_served(ray_head, prepared_tiny, tiny_base, tmp_path):
    """The README's command: `ray job submit --working-dir . -- python -m jobs.align ...` on a tiny slice; then
    `jobs.serve --detach`, submitted the same way, leaves an endpoint on the cluster speaking with its version."""
    from .conftest import copy_prepared
    from .test_align_job import ALIGN

    cfg, _, _ = prepared_tiny
    run_dir = copy_prepared(cfg.run_dir, tmp_path)
    uri = mlflow_store(tmp_path / "mlruns" / "mlflow.db")
    argv = [
        "python",
        "-m",
        "jobs.align",
        "--config",
        "configs/tiny.yaml",
        f"run_dir={run_dir}",
        f"corpus.cache_dir={cfg.corpus.cache_dir}",
        f"tracking.uri={uri}",
        f"align.base_model={tiny_base}",
        *TINY_OVERRIDES,
        *ALIGN,
        "align.iterations=1",
        "eval.gap_utterances=0",  # the gap analysis is test_align_job's: here, what a submitted job is
    ]
    rc, logs = submit(ray_head, argv, submission_id="align")
    assert rc == 0, logs
    assert ray_head.job_status("align") == "SUCCEEDED"
    assert "WER sent" in logs, logs  # the per-iteration table
    assert "registered as version 1 (latest, best" in logs and "champion: " in logs, logs  # and why (not) champion

    client = MlflowClient(uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, filter_string="tags.`sa_ray.job` = 'align'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["run_dir"] == str(run_dir)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "heldout_sentences_wer")) == [0, 1]
    assert client.get_model_version_by_alias("tiny-policy", "best").run_id == run.info.run_id

    from .test_serve import _call, _free_port

    port = _free_port()
    serve_argv = [  # the run's newest version (the default, @champion, moves only for a gain beyond the noise)
        "python",
        "-m",
        "jobs.serve",
        "--detach",
        *argv[3:],
        f"serve.port={port}",
        "serve.model=models:/tiny-policy@latest",
        "serve.backend=torch",  # auto is vllm where installed: an engine start more, for what the torch one shows
    ]
    rc, logs = submit(ray_head, serve_argv, submission_id="serve")
    assert rc == 0 and ray_head.job_status("serve") == "SUCCEEDED", logs
    assert "serving models:/tiny-policy@latest (version 1)" in logs, logs
    status, headers, wav = _call(
        f"http://127.0.0.1:{port}/synthesize", {"text": "The cat sat on the mat.", "speaker": "mbrola-us1"}
    )
    assert status == 200 and headers["x-policy-version"] == "1" and wav[:4] == b"RIFF"
