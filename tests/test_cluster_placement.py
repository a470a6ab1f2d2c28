"""Roles placed by `resources.<role>` on a multi-node Ray cluster made on this machine (`ray.cluster_utils.Cluster`):
a head with no work resources, two nodes declaring logical GPUs and the `gpu_node` type resource, and a CPU node
(`cpu_node`), as ray_cluster.yaml's node types. An align iteration asks GPUs for its rollout engine, reference and
learner and the CPU node for its evaluator; there is no CUDA here, so the roles say so and run on the CPU. Midway
through the learner, the node its worker runs on is removed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from jobs._cli import free_port
from tests.conftest import REPO, align_command, copy_prepared

pytestmark = pytest.mark.slow

ROLES = [
    "resources.rollout={num_cpus: 0, num_gpus: 1, resources: {gpu_node: 0.01}}",
    "resources.reference={num_cpus: 0, num_gpus: 0.5, resources: {gpu_node: 0.01}}",
    "resources.learner={num_cpus: 1, num_gpus: 0.5, resources: {gpu_node: 0.01}}",
    "resources.evaluator={num_cpus: 1, num_gpus: 0, resources: {cpu_node: 0.01}}",
]


@pytest.fixture(scope="module")
def four_nodes():
    """A head without resources, two nodes with 2 logical GPUs and gpu_node each, one CPU node (cpu_node): one
    cluster for the module (the refusal test runs first: the placement test removes a node)."""
    from ray.cluster_utils import Cluster

    monkeypatch = pytest.MonkeyPatch()
    dashboard = free_port()
    # Ray Train asks the State API whether its controller lives: the workers must ask THIS cluster's dashboard,
    # not the machine's newest Ray instance (jobs._cli.start_local_ray says why)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "gcs_server_port": free_port(),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
        },
    )
    nodes = {"head": cluster.head_node}
    for name in ("gpu", "gpu2"):
        nodes[name] = cluster.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 1})
    nodes["cpu"] = cluster.add_node(num_cpus=1, resources={"cpu_node": 1})
    try:
        yield cluster, nodes
    finally:
        cluster.shutdown()
        monkeypatch.undo()


def _placed(cluster, node_ids: dict[str, str]) -> dict[str, set[str]]:
    """Actor class -> names of the nodes its actors ran on (alive or dead), from the GCS's actor table."""
    placed: dict[str, set[str]] = {}
    for actor in cluster.global_state.actor_table(None).values():
        placed.setdefault(actor["ActorClassName"], set()).add(actor["Address"]["NodeID"])
    return {cls: {n for n, i in node_ids.items() if i in ids} for cls, ids in placed.items()}


def test_a_relative_run_dir_is_refused_on_a_multi_node_cluster(
    four_nodes, prepared_in_process, base_in_process, tmp_path
):
    """Nodes read run_dir where the roles run: a path relative to one process's working directory is refused at
    start-up, naming the rule (an absolute path is then checked from every node: the test above)."""
    cluster, _ = four_nodes
    cfg, argv, _ = prepared_in_process
    copy_prepared(cfg.run_dir, tmp_path)  # tmp_path/run
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.align",
            *argv,
            "run_dir=run",
            f"align.base_model={base_in_process}",
            f"ray.address={cluster.address}",
        ],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 2, job.stderr[-3000:]
    assert "error: run_dir=run is relative: on a multi-node cluster it must be an absolute path" in job.stderr
    assert "Traceback" not in job.stderr


def test_each_role_runs_where_its_resources_say_and_the_learner_survives_losing_its_node(
    four_nodes, prepared_in_process, base_in_process, tmp_path
):
    cluster, nodes = four_nodes
    node_ids = {name: node.node_id for name, node in nodes.items()}
    cfg, argv, _ = prepared_in_process
    run_dir = copy_prepared(cfg.run_dir, tmp_path)
    job = subprocess.Popen(
        align_command(
            argv,
            run_dir,
            base_in_process,
            tmp_path,
            cluster.address,
            "align.steps=40",  # long enough to lose a node between two checkpoints
            "align.checkpoint_every=2",
            *ROLES,
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the node a learner worker runs on goes (Cluster.remove_node: its raylet and every process on it die)
        # after the worker's first checkpoint: Ray Train restores it on the other GPU node (align.max_failures)
        deadline, learner = time.time() + 900, run_dir / "align" / "learner" / "iter_0"
        while not any(learner.glob("checkpoint_*")):
            assert job.poll() is None and time.time() < deadline, "the job ended before its learner checkpointed"
            time.sleep(0.2)
        (worker_node,) = [
            a["Address"]["NodeID"]
            for a in cluster.global_state.actor_table(None).values()
            if "TrainWorker" in a["ActorClassName"] and a["State"] == "ALIVE"
        ]
        lost = next(name for name, node_id in node_ids.items() if node_id == worker_node)
        cluster.remove_node(nodes[lost])
        said, _ = job.communicate(timeout=1200)
    finally:
        job.kill()
    assert job.returncode == 0, said[-6000:]
    assert (run_dir / "align" / "adapters" / "v1" / "adapter_model.safetensors").is_file()

    where = _placed(cluster, node_ids)
    gpu = {"gpu", "gpu2"}
    assert where["RolloutEngine"] <= gpu and where["ReferenceScorer"] <= gpu, where
    assert where["Evaluator"] == {"cpu"}, where
    learners = [cls for cls in where if "TrainWorker" in cls]
    assert learners and set().union(*(where[cls] for cls in learners)) == gpu, (lost, where)  # before and after
    # every actor that holds resources is off the head (which has none): Ray's own coordinators alone may sit there
    roles = {"RolloutEngine", "ReferenceScorer", "Evaluator", *learners}
    assert all("head" not in where[cls] for cls in roles), where

    # no CUDA here: each GPU role says once, by name, that it runs on the CPU
    for role in ("rollout", "reference"):
        assert f"{role} asked for" in said and "running on the CPU" in said, said[-4000:]
    assert "evaluator asked for" not in said
