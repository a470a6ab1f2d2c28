"""Where a role runs, and on which device: its Ray options from `resources.<role>`, and the device Ray gave it.

A role's actor (or Ray Train worker) asks the scheduler for what its `RoleResources` say; inside, the role puts
its models on the GPU Ray assigned it. Ray exports the assigned GPU ids as CUDA_VISIBLE_DEVICES, so the first
visible device is the role's own. A role that asked for a GPU and finds no CUDA (a logical GPU on a test cluster,
a CPU build of torch) runs on the CPU and says so once, naming itself.
"""

from __future__ import annotations

import logging
import typing
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors import failpoints
from sa_ray.config import RoleResources

if typing.TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Idle engines must not spin on cores: OpenMP's default wait policy busy-waits, and a zero-CPU role shares them.
ROLE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def actor_options(resources: RoleResources, **extra) -> dict:
    """`ray.remote(cls).options(**...)` for a long-lived role: its resources, restarted once if it dies."""
    return {
        **resources.ray_options(),
        "max_restarts": 1,
        "max_task_retries": 1,
        "runtime_env": {"env_vars": {**ROLE_ENV, **failpoints.environment()}},
        **extra,
    }


def role_device(role: str, asked_gpus: float) -> torch.device:
    """The device of this process's role: its Ray-assigned GPU when CUDA can use it, else the CPU."""
    import torch  # here, not at the top: Ray Data's task workers import this module (actor_options) and never torch

    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", []) if ray.is_initialized() else []
    if gpus and torch.cuda.is_available():
        return torch.device("cuda", 0)  # CUDA_VISIBLE_DEVICES holds exactly the assigned ids
    if asked_gpus > 0:
        log.warning(
            "%s asked for %g GPU(s) (resources.%s.num_gpus); Ray assigned %s but CUDA is not available here: "
            "running on the CPU",
            role,
            asked_gpus,
            role,
            gpus or "none",
        )
    return torch.device("cpu")


class RunDirNotShared(FileNotFoundError):
    """A node of the cluster cannot see the run directory (a FileNotFoundError: jobs report it without a trace)."""


def _sees(path: str, token: str) -> bool:
    try:
        return open(path).read() == token
    except OSError:
        return False


def check_shared(run_dir: str | Path) -> int:
    """On a multi-node cluster every alive node must see `run_dir` (data, pair sets, checkpoints and adapters are
    read where the roles run): a marker written here is read back on each node. Returns the nodes checked."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    run_dir = Path(run_dir)
    if not run_dir.is_absolute():
        raise RunDirNotShared(
            f"run_dir={run_dir} is relative: on a multi-node cluster it must be an absolute path of storage "
            "every node mounts at the same place"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = run_dir / f".shared-check-{token}"
    marker.write_text(token)
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        checks = {
            n["NodeManagerAddress"] + " " + n["NodeID"][:8]: sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker), token)
            for n in nodes
        }
        blind = [node for node, ok in zip(checks, ray.get(list(checks.values()))) if not ok]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise RunDirNotShared(
            f"run_dir={run_dir} is not visible from node(s) {', '.join(blind)}: on a multi-node cluster run_dir "
            "must be shared storage mounted at the same path on every node (README: Running on a GPU cluster)"
        )
    return len(nodes)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_backend(resources: RoleResources) -> str:
    """The torch.distributed backend of Ray Train workers asking `resources`: NCCL where their GPUs have CUDA,
    gloo otherwise. Asked of a probe placed as a worker would be (the driver may sit on a GPU-less head), so
    logical GPUs on a test cluster, or a CPU build of torch, train over gloo instead of failing to start NCCL."""
    if not resources.num_gpus:
        return "gloo"
    return "nccl" if ray.get(ray.remote(_cuda).options(**resources.ray_options()).remote()) else "gloo"
