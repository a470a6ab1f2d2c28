"""The cluster definitions are checked by Ray's own schema (launcher) and for the fields KubeRay needs."""

from pathlib import Path

import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_passes_rays_launcher_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))
    validate_config(cfg)  # raises on schema errors
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] > 0  # scales from zero
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"])


def test_kuberay_manifest_autoscales_and_matches_the_ray_version():
    doc = yaml.safe_load((REPO / "clusters" / "kuberay" / "raycluster.yaml").read_text())
    assert doc["kind"] == "RayCluster" and doc["spec"]["enableInTreeAutoscaling"] is True
    assert doc["spec"]["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1 and groups["gpu"]["minReplicas"] == 0
