"""Autoscaling tried for real, on one machine: Ray's fake multi-node provider with ray_cluster.yaml's node types.

clusters/fake-autoscaler.yaml is the single source of the node types used here; a fast test checks that they
mirror ray_cluster.yaml's (names, custom resources, GPU or not, scaling from zero). The slow test starts its own
head (free ports, its own temp dir and token, `--autoscaling-config` = that file) and asks for what the GPU roles
of configs/librispeech-encodec.yaml ask for: an actor with {num_gpus: 1, resources: {gpu_node: 0.01}} makes the
autoscaler add a gpu_worker from zero, and once the actor is gone that node is removed after the idle timeout.

Ray 2.60's `ray.cluster_utils.AutoscalingCluster` is not used: its constructor reads
ray/autoscaler/_private/fake_multi_node/example.yaml, which the 2.60 wheel does not ship (FileNotFoundError), and
its start()/shutdown() run `ray stop --force`, which would stop every other Ray instance on the machine. The head is
started the way it starts one (RAY_FAKE_CLUSTER=1, AUTOSCALER_UPDATE_INTERVAL_S=1, autoscaler v1), and stopped the
way tests/ray_head.py stops its heads: that one process, then what survives of it, by pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .ray_head import RayHead, start_head, stop_head

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "clusters" / "fake-autoscaler.yaml"
LAUNCHER = REPO / "ray_cluster.yaml"
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def _custom(resources: dict) -> set[str]:
    return set(resources) - BUILTIN


def test_fake_autoscaler_node_types_mirror_ray_cluster_yaml():
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
    from ray.autoscaler._private.util import validate_config

    fake, real = yaml.safe_load(FAKE.read_text()), yaml.safe_load(LAUNCHER.read_text())
    validate_config(fake)  # Ray's own cluster schema
    assert fake["provider"]["type"] == "fake_multinode"
    # the fake provider tags its head with this type name; under another the autoscaler keeps adding "heads"
    assert fake["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert fake["head_node_type"] == real["head_node_type"]
    fake_types, real_types = fake["available_node_types"], real["available_node_types"]
    assert set(fake_types) == set(real_types)
    for name, real_type in real_types.items():
        f, r = fake_types[name]["resources"], real_type["resources"]
        assert _custom(f) == _custom(r), f"{name}: custom resources {_custom(f)} vs ray_cluster.yaml's {_custom(r)}"
        assert bool(f.get("GPU")) == bool(r.get("GPU")), f"{name}: GPU in one file and not the other"
        if name == real["head_node_type"]:
            assert f.get("CPU") == r.get("CPU") == 0, "the head takes no work"
        else:
            assert fake_types[name]["min_workers"] == real_type["min_workers"] == 0, f"{name} scales from zero"


# The driver runs in its own process: this test process may hold another Ray cluster (the session's ray_local).
DRIVER = r"""
import json, sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False)
TIMEOUT = float(sys.argv[2])

def alive():
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}

def workers():
    return {i: n for i, n in alive().items() if "node:__internal_head__" not in n["Resources"]}

@ray.remote
class Probe:
    def where(self):
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_accelerator_ids().get("GPU", [])

def kinds_of(node):
    res = node["Resources"]
    return "gpu_worker" if "gpu_node" in res else "cpu_worker" if "cpu_node" in res else "?"

out = {"workers_before": len(workers())}
seen = {}  # every worker node that was alive at some point: node id -> kind
t0 = time.monotonic()
probe = Probe.options(num_cpus=1, num_gpus=1, resources={"gpu_node": 0.01}).remote()
where = probe.where.remote()
while not ray.wait([where], timeout=1)[0] and time.monotonic() - t0 < TIMEOUT:
    seen.update({i: kinds_of(n) for i, n in workers().items()})
node_id, gpu_ids = ray.get(where, timeout=1)
out["scale_up_s"] = round(time.monotonic() - t0, 1)
out["node_resources"] = alive()[node_id]["Resources"]
seen[node_id] = kinds_of(alive()[node_id])
out["gpu_ids"] = gpu_ids
ray.kill(probe)
t1 = time.monotonic()
while (workers() or node_id in alive()) and time.monotonic() - t1 < TIMEOUT:
    seen.update({i: kinds_of(n) for i, n in workers().items()})
    time.sleep(1)
out["node_removed"] = node_id not in alive()
out["scale_down_s"] = round(time.monotonic() - t1, 1)
out["workers_after"] = len(workers())
out["launched"] = sorted(seen.values())
print("RESULT " + json.dumps(out), flush=True)
"""


def _start_fake_head() -> tuple[RayHead, str]:
    """A head whose autoscaler adds and removes FAKE's node types; returns (head, its GCS address)."""
    head = start_head(num_cpus=0, autoscaling=yaml.safe_load(FAKE.read_text()))
    return head, f"127.0.0.1:{head.gcs_port}"


def _monitor_log(head: RayHead, n: int = 40, name: str = "monitor.*") -> str:
    """The autoscaler's log (monitor.log, monitor.out, monitor.err): its last n lines."""
    logs = sorted(head.temp_dir.glob(f"session_*/logs/{name}"))
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]) for p in logs if p.is_file()
    )


@pytest.mark.slow
def test_a_gpu_actor_adds_a_gpu_worker_from_zero_and_the_idle_node_goes():
    timeout = 240
    head, address = _start_fake_head()
    try:
        r = subprocess.run(
            [sys.executable, "-c", DRIVER, address, str(timeout)],
            env={**head.client_env(), "RAY_USAGE_STATS_ENABLED": "0"},
            cwd=head.temp_dir,
            capture_output=True,
            text=True,
            timeout=3 * timeout,
        )
        lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        assert r.returncode == 0 and lines, f"driver failed:\n{r.stdout}\n{r.stderr}\n{_monitor_log(head)}"
        out = json.loads(lines[-1].removeprefix("RESULT "))
        launches = [line for line in _monitor_log(head, n=10**6, name="monitor.log").splitlines() if "Adding" in line]
        print(json.dumps(out), *launches, sep="\n")
        assert out["workers_before"] == 0, out  # from zero
        res = out["node_resources"]
        assert res.get("gpu_node") == 1 and res.get("GPU") == 1 and "cpu_node" not in res, out  # a gpu_worker
        # one node, of the type the actor needs (a head type not named ray.head.default made it add "head" nodes)
        assert out["launched"] == ["gpu_worker"], f"{out}\n" + "\n".join(launches)
        assert len(out["gpu_ids"]) == 1, out  # Ray assigned it the (logical) GPU
        assert out["node_removed"] and out["workers_after"] == 0, f"{out}\n{_monitor_log(head)}"
    finally:
        stop_head(head)


# What the align job's roles ask on the fake node types (a fraction of gpu_worker's one logical GPU each).
ALIGN_ROLES = [
    "resources.rollout={num_cpus: 0, num_gpus: 0.5, resources: {gpu_node: 0.01}}",
    "resources.reference={num_cpus: 0, num_gpus: 0.25, resources: {gpu_node: 0.01}}",
    "resources.learner={num_cpus: 1, num_gpus: 0.25, resources: {gpu_node: 0.01}}",
    "resources.evaluator={num_cpus: 1, num_gpus: 0, resources: {cpu_node: 0.01}}",
]
WAIT_IDLE = r"""
import sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    if not [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]:
        print("RESULT idle", flush=True)
        break
    time.sleep(1)
"""


@pytest.mark.slow
def test_the_align_job_scales_gpu_and_cpu_workers_up_from_zero_and_they_go_when_it_ends(
    prepared_in_process, base_in_process, tmp_path
):
    from .conftest import align_command, copy_prepared

    cfg, argv, _ = prepared_in_process
    run_dir = copy_prepared(cfg.run_dir, tmp_path)
    head, address = _start_fake_head()
    try:
        env = {**head.client_env(), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        job = subprocess.run(
            align_command(argv, run_dir, base_in_process, tmp_path, address, *ALIGN_ROLES),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-4000:] + _monitor_log(head)
        launched = [line for line in _monitor_log(head, n=10**6, name="monitor.log").splitlines() if "Adding" in line]
        assert any("gpu_worker" in line for line in launched), "\n".join(launched)  # the GPU roles' node type
        assert any("cpu_worker" in line for line in launched), "\n".join(launched)  # the evaluator's
        idle = subprocess.run(
            [sys.executable, "-c", WAIT_IDLE, address, "180"], env=env, capture_output=True, text=True, timeout=300
        )
        assert "RESULT idle" in idle.stdout, idle.stderr[-2000:] + _monitor_log(head)  # all went after the job
    finally:
        stop_head(head)
