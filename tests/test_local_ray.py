"""A job's local Ray instance answers State API questions about itself, also beside another Ray instance.

Ray Train's placement-group cleaner asks the State API every second whether a run's controller is alive. With
no State API of its own it logs a warning a second, and left to find one it can take another instance's and
remove the placement group of a healthy run (`jobs._cli.start_local_ray` says more). So: from inside a job's
instance, while another instance with a dashboard runs on the machine, an actor of the job is found alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs._cli import LOCAL_RAY_ENV, local_ray_env

REPO = Path(__file__).resolve().parents[1]

_JOB = """
import ray
from jobs._cli import start_local_ray

start_local_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Alive:
    def ping(self):
        return 1

@ray.remote(num_cpus=0)
def state_of(actor_id):  # runs in a worker, where Ray Train's cleaner runs
    from ray.util.state import get_actor
    found = get_actor(actor_id, timeout=10)
    return None if found is None else found.state

@ray.remote(num_cpus=0)
def reader_v2():
    import ray.data
    return ray.data.DataContext.get_current().use_datasource_v2

actor = Alive.remote()
ray.get(actor.ping.remote())
print("STATE", ray.get(state_of.remote(actor._actor_id.hex())))
print("PARQUET V2", ray.data.DataContext.get_current().use_datasource_v2, ray.get(reader_v2.remote()))
"""

_OTHER = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=True)
print("READY", flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_a_local_ray_takes_the_users_exported_settings_over_its_own(monkeypatch):
    for name, value in LOCAL_RAY_ENV.items():
        monkeypatch.delenv(name, raising=False)
        assert local_ray_env()[name] == value
        monkeypatch.setenv(name, "2")
        assert local_ray_env()[name] == "2"


@pytest.mark.slow
def test_the_state_api_of_a_jobs_ray_is_its_own(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "READY"
        job = subprocess.run(
            [sys.executable, "-c", _JOB], cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300
        )
    finally:
        other.stdin.close()
        other.wait(timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "STATE ALIVE" in job.stdout, job.stdout[-2000:]
    # reads are planned by Ray Data's first Parquet reader, in the driver and in the workers (jobs._cli.LOCAL_RAY_ENV)
    assert "PARQUET V2 False False" in job.stdout, job.stdout[-2000:]
