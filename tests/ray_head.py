"""A real Ray head with token authentication, started by a test and stopped by it, for `ray job submit`.

    from .ray_head import running_head, submit

    @pytest.fixture(scope="module")
    def head():
        with running_head() as h:
            yield h

    def test_my_job(head):
        rc, logs = submit(head, ["python", "-m", "jobs.align", "--config", "configs/tiny.yaml", ...])
        assert rc == 0, logs

The head is `ray start --head --block` with its own short temp dir (/tmp/rjs-XXXX: Unix socket paths
are limited to 107 bytes), its own ports and its own token file (RAY_AUTH_TOKEN_PATH; ~/.ray/auth_token
is left alone). It is stopped by terminating that one `--block` process, which drains and stops exactly
its cluster; whatever of its process tree survives is killed by pid. `ray stop` is never used: it stops
every Ray cluster on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from jobs._cli import local_ray_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, and the `python` a submitted job runs
RAY = str(BIN / "ray")

# Never uploaded with --working-dir (Ray 2.60 also honours .gitignore, unless
# RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1, and always skips .git, .venv, venv, __pycache__).
EXCLUDES = [
    "/.venv/",
    "/data/",
    "/runs/",
    "/mlruns/",
    "/logs/",
    "/.git/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    "__pycache__/",
    "*.staging/",
]


@dataclass
class RayHead:
    proc: subprocess.Popen
    temp_dir: Path
    token_path: Path
    dashboard_port: int
    agent_port: int
    gcs_port: int
    log: Path
    pids: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        """What `ray job submit --address` takes (the dashboard's job API)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def client_env(self, token: bool = True) -> dict[str, str]:
        """The environment of a user's shell: with the token (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH)
        or without any (no auth variables, and a HOME without ~/.ray/auth_token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        else:
            home = self.temp_dir / "empty-home"
            home.mkdir(exist_ok=True)
            env["HOME"] = str(home)
        return env

    def get(self, path: str, token: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(self.address + path)
        if token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def job_status(self, submission_id: str) -> str | None:
        """SUCCEEDED / FAILED / ... of a submitted job, None when the cluster has no such job."""
        code, body = self.get(f"/api/jobs/{submission_id}")
        if code == 404:
            return None
        assert code == 200, (code, body)
        return json.loads(body)["status"]

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Runs argv[1:] with PR_SET_PDEATHSIG=SIGTERM (kept across exec): when the test process dies, however it
# dies, the head gets SIGTERM and stops its cluster. (A preexec_fn would do the same, unsafely in threads.)
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\nexcept OSError:\n    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_head(num_cpus: int = 2, timeout: float = 240, autoscaling: dict | None = None) -> RayHead:
    """A head with token auth on free ports. `autoscaling`: a cluster launcher config of Ray's fake multi-node
    provider (clusters/fake-autoscaler.yaml), whose nodes then join this head (its GCS) as the autoscaler adds them;
    started as Ray's own AutoscalingCluster starts one (RAY_FAKE_CLUSTER=1, a 1 s autoscaler update)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))
    token_path = temp_dir / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    gcs, dashboard, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5",  # else a detached actor (Ray Data's) holds it 30 s
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        **local_ray_env(),  # Ray Train polls as on a job's local Ray
    )  # a job's `python` is this venv's
    extra = []
    if autoscaling is not None:
        config = {**autoscaling, "provider": {**autoscaling["provider"], "gcs_address": f"127.0.0.1:{gcs}"}}
        (temp_dir / "autoscaler.yaml").write_text(yaml.safe_dump(config))
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        extra = [f"--autoscaling-config={temp_dir / 'autoscaler.yaml'}"]
    cmd = [
        sys.executable,
        "-c",
        _DIE_WITH_PARENT,
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        *extra,
    ]
    log = temp_dir / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=temp_dir
        )
    head = RayHead(proc, temp_dir, token_path, dashboard, agent, gcs, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {proc.returncode}:\n{head.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray head not ready within {timeout:.0f} s:\n{head.log_tail()}")
            try:
                ready = head.get("/api/jobs/")[0] == 200 and _port_open(agent)
            except OSError:
                ready = False
            if ready:
                return head
            time.sleep(1)
    except BaseException:
        stop_head(head)
        raise


def _ours(temp_dir: Path) -> list[psutil.Process]:
    """Processes whose command line or environment names our temp dir (ours alone: it is unique)."""
    mark, found = str(temp_dir), []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if any(mark in a for a in p.cmdline()) or any(mark in v for v in p.environ().values()):
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def stop_head(head: RayHead, grace: float = 60) -> None:
    """Terminates the `ray start --block` process (it drains and stops its cluster), then kills by pid
    what survives of its process tree and of processes naming its temp dir. Never `ray stop`."""
    try:
        tree = psutil.Process(head.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    head.proc.terminate()
    try:
        head.proc.wait(grace)
    except subprocess.TimeoutExpired:
        head.proc.kill()
        head.proc.wait(10)
    _, alive = psutil.wait_procs(tree, timeout=10)
    leftovers = {p.pid: p for p in [*alive, *_ours(head.temp_dir)]}
    for p in leftovers.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(leftovers.values()), timeout=10)
    head.pids = {p.pid for p in tree}
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def running_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A started head, stopped on the way out (also when the block raises)."""
    head = start_head(num_cpus)
    try:
        yield head
    finally:
        stop_head(head)


def submit(
    head: RayHead,
    argv: list[str],
    *,
    runtime_env: dict | None = None,
    env: dict | None = None,
    submission_id: str | None = None,
    working_dir: Path = REPO,
    timeout: float = 1200,
) -> tuple[int, str]:
    """`ray job submit --address <head> --working-dir <repo> --runtime-env-json <excludes> -- <argv>` as a
    user would run it (token from the environment, see `RayHead.client_env`): (exit status, output).
    The exit status is 0 only when the job SUCCEEDED; the output holds the job's own logs."""
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1"}, **(runtime_env or {})}
    submission_id = submission_id or f"test-{uuid.uuid4().hex[:12]}"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        head.address,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(working_dir),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        *argv,
    ]
    try:
        r = subprocess.run(
            cmd,
            env=head.client_env() if env is None else env,
            cwd=working_dir,
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        subprocess.run(
            [RAY, "job", "stop", "--address", head.address, submission_id],
            env=head.client_env(),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
        raise AssertionError(f"{shlex.join(argv)} did not finish in {timeout:.0f} s:\n{e.output}") from e
    return r.returncode, r.stdout
