"""The cluster definitions, checked by their consumers' own rules without a cloud or a Kubernetes cluster.

- ray_cluster.yaml: Ray's launcher schema (prepare_config + validate_config).
- clusters/kuberay/*.yaml: every RayCluster, RayJob and RayService against the OpenAPI schema of KubeRay's own CRDs
  (v1.7.0, vendored in tests/data/kuberay), strictly: a field the CRD does not know fails, as kubectl's strict field
  validation refuses it (the API server would otherwise drop it silently). RayClusters also go through Ray's
  KubeRay autoscaler, which derives its node types from them. Core objects (Namespace, Secret, PVC, Deployment,
  Service) get a structural check, and every Secret, key, claim, Service and RayCluster a manifest names exists.
- The node-type convention: every custom resource a shipped config asks for is declared by a worker node type of
  ray_cluster.yaml and of the KubeRay RayCluster, each role fits one node of a type that declares what it pins to
  (GPUs included), and each stage's roles together fit the cluster's largest size.
- rayVersion is the installed Ray's.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import ray
import yaml

from sa_ray.config import Config, RoleResources, load_config

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "clusters" / "kuberay"
# KubeRay's CRDs are third-party files, not committed here: put KubeRay v1.7.0's ray-operator/config/crd/bases/
# ray.io_{rayclusters,rayjobs,rayservices}.yaml (plain or gzipped) in this directory (tests/data/kuberay/README.md)
CRD_DIR = Path(os.environ.get("SA_RAY_KUBERAY_CRDS") or Path(__file__).parent / "data" / "kuberay")
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
NAMESPACE = "sa-ray"

# kind -> (vendored CRD, git blob id of the uncompressed upstream file at KubeRay v1.7.0; README there)
KUBERAY_CRDS = {
    "RayCluster": ("ray.io_rayclusters.yaml.gz", "ff0be58ada3bd457605eff1f258c16df21e61e21"),
    "RayJob": ("ray.io_rayjobs.yaml.gz", "c7d3f081af8cf08c256a8c33a0c3b6ea28b816a0"),
    "RayService": ("ray.io_rayservices.yaml.gz", "7ee63d6ddd11237a5649e04b3a8db3c52074c867"),
}
CORE = {"Namespace": "v1", "Secret": "v1", "PersistentVolumeClaim": "v1", "Service": "v1", "Deployment": "apps/v1"}
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


# ------------------------------------------------------------------------------------------------ loading


def manifests() -> list[tuple[str, dict]]:
    """(file name, object) for every object of every YAML file in clusters/kuberay except the kustomization."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return out


def objects(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def launcher() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _k8s_schema(node: dict) -> dict:
    """A CRD's structural OpenAPI v3 schema as JSON Schema: x-kubernetes-int-or-string is integer or string,
    `nullable` admits null, and an object with `properties` admits no other field unless the schema says
    x-kubernetes-preserve-unknown-fields (the API server's pruning, turned into an error)."""
    s = dict(node)
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("anyOf", None)
        s["type"] = ["integer", "string"]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    if s.pop("nullable", False) and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    for key in [k for k in s if k.startswith("x-kubernetes-")]:
        del s[key]
    if "properties" in s:
        s["properties"] = {name: _k8s_schema(sub) for name, sub in s["properties"].items()}
        if not preserve and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _k8s_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _k8s_schema(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [_k8s_schema(sub) for sub in s[key]]
    return s


@cache
def crd(kind: str) -> dict:
    name, blob = KUBERAY_CRDS[kind]
    path = next((p for p in (CRD_DIR / name, CRD_DIR / name.removesuffix(".gz")) if p.is_file()), None)
    if path is None:
        pytest.skip(
            f"KubeRay's {name.removesuffix('.gz')} is not in {CRD_DIR} (third-party files are not committed; "
            "tests/data/kuberay/README.md says where to get them, or set SA_RAY_KUBERAY_CRDS)"
        )
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert _blob_id(data) == blob, f"tests/data/kuberay/{name} is not KubeRay v1.7.0's file (README there)"
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 3.4 MB: libyaml when there


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    doc = crd(kind)
    assert doc["spec"]["names"]["kind"] == kind
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    return jsonschema.Draft7Validator(_k8s_schema(version["schema"]["openAPIV3Schema"]))


def schema_errors(obj: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator(obj["kind"]).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _cel_paths(schema: dict, path: tuple = ()) -> list[tuple]:
    """Where a CRD has x-kubernetes-validations (CEL rules, which jsonschema cannot evaluate): field paths."""
    found = [path] if "x-kubernetes-validations" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += _cel_paths(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        found += _cel_paths(schema["items"], (*path, "[]"))
    return found


def _has_path(obj, path: tuple) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(obj, list) and any(_has_path(item, rest) for item in obj)
    return isinstance(obj, dict) and head in obj and _has_path(obj[head], rest)


# ------------------------------------------------------------------------------------------------ launcher


def test_ray_cluster_yaml_passes_rays_launcher_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(launcher())
    validate_config(cfg)  # raises on schema errors
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}  # no work on the head
    assert types["gpu_worker"]["resources"]["gpu_node"] == 1 and types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["cpu_worker"]["resources"]["cpu_node"] == 1 and not types["cpu_worker"]["resources"].get("GPU")
    for name in ("gpu_worker", "cpu_worker"):
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] > 0, f"{name} scales from zero"
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"])
    # the token reaches every node at Ray's default path (head and workers share file_mounts)
    assert cfg["file_mounts"].get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"


def test_mlflow_servers_answer_the_tracking_uri_the_gpu_config_uses():
    """MLflow 3 refuses Host headers it does not allow: both servers allow the host the config's tracking.uri sends,
    and keep their store on the shared mount."""
    host = urlparse(load_config(REPO / "configs" / "librispeech-encodec.yaml").tracking.uri).netloc
    assert host == "mlflow.sa-ray.svc:5000"
    (deployment,) = objects("Deployment")
    commands = {
        "ray_cluster.yaml": " ".join(launcher()["head_start_ray_commands"]),
        "mlflow.yaml": " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"]),
    }
    for where, command in commands.items():
        assert "mlflow server" in command, where
        allowed = command.split("--allowed-hosts", 1)[1].split()[0].strip("'\"").split(",")
        assert host in allowed, f"{where}: --allowed-hosts {allowed} refuses {host}"
        assert "sqlite:////mnt/shared/mlflow/mlflow.db" in command and "/mnt/shared/mlflow/artifacts" in command
    worker_hosts = " ".join(launcher()["worker_setup_commands"])
    assert "$RAY_HEAD_IP mlflow.sa-ray.svc" in worker_hosts  # ray up's workers resolve the name to the head


# ------------------------------------------------------------------------------------------------ KubeRay


def test_vendored_crds_are_kuberays_and_carry_their_schemas():
    for kind in KUBERAY_CRDS:
        doc = crd(kind)  # checks the blob id
        assert doc["kind"] == "CustomResourceDefinition" and doc["spec"]["group"] == "ray.io"
        assert validator(kind).schema["properties"]["spec"]["properties"]


@pytest.mark.parametrize("kind", sorted(KUBERAY_CRDS))
def test_kuberay_manifests_match_kuberays_crd_schemas(kind):
    docs = objects(kind)
    assert docs, f"clusters/kuberay has no {kind}"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", doc["metadata"]
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NAMESPACE
        errors = schema_errors(doc)
        assert not errors, f"{kind} {doc['metadata']['name']}:\n" + "\n".join(errors)
        # CEL rules (x-kubernetes-validations) are not evaluated here: none may sit on a field we set
        cel = crd(kind)["spec"]["versions"]
        (schema,) = [v["schema"]["openAPIV3Schema"] for v in cel if v["name"] == "v1"]
        used = [".".join(p) for p in _cel_paths(schema) if _has_path(doc, p)]
        assert not used, f"{kind} {doc['metadata']['name']} sets fields guarded by unchecked CEL rules: {used}"


def test_the_crd_check_refuses_what_kubernetes_would():
    """The validator has teeth: a misspelt field, a wrong type, a bad quantity and an unknown enum value fail."""
    (cluster,) = objects("RayCluster")
    good = copy.deepcopy(cluster)
    assert not schema_errors(good)
    misspelt = copy.deepcopy(cluster)
    misspelt["spec"]["workerGroupSpec"] = misspelt["spec"].pop("workerGroupSpecs")
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["minReplicas"] = "0"
    bad_quantity = copy.deepcopy(cluster)
    bad_quantity["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"
    ] = "340 GB"
    bad_mode = copy.deepcopy(cluster)
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    container_typo = copy.deepcopy(cluster)
    container_typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["workdir"] = "/app"
    for broken in (misspelt, wrong_type, bad_quantity, bad_mode, container_typo):
        assert schema_errors(broken), broken["spec"]


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    """(name, RayCluster spec) of every Ray cluster the manifests define (RayClusters, RayService clusters)."""
    specs = [(d["metadata"]["name"], d["spec"]) for d in objects("RayCluster")]
    specs += [(d["metadata"]["name"], d["spec"]["rayClusterConfig"]) for d in objects("RayService")]
    specs += [(d["metadata"]["name"], d["spec"]["rayClusterSpec"]) for d in objects("RayJob") if "rayClusterSpec" in d]
    return specs


def kuberay_node_types(name: str, spec: dict) -> dict:
    """The node types Ray's KubeRay autoscaler derives from a Ray cluster spec (what it scales), head included."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name, "namespace": NAMESPACE}}
    return _derive_autoscaling_config_from_ray_cr({**cr, "spec": spec})["available_node_types"]


def test_kuberay_clusters_autoscale_with_the_node_type_convention_and_token_auth():
    for name, spec in _ray_cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["authOptions"] == {"mode": "token", "secretName": "sa-ray-auth"}, name
        types = kuberay_node_types(name, spec)
        assert types["headgroup"]["resources"].get("CPU") == 0, f"{name}: the head takes no work"
        for group in spec["workerGroupSpecs"]:
            res = types[group["groupName"]]["resources"]
            assert group["minReplicas"] == 0 or name == "sa-ray-voice", f"{name}/{group['groupName']}"
            if res.get("GPU"):
                assert res.get("gpu_node") == 1 and "cpu_node" not in res, f"{name}/{group['groupName']}: {res}"
            else:
                assert res.get("cpu_node") == 1 and "gpu_node" not in res, f"{name}/{group['groupName']}: {res}"
        for container in [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
            g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]
        ]:
            assert container["workingDir"] == "/app", name  # where a job's configs/... is read
            assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"], name


def test_kuberay_ray_version_matches_the_installed_ray():
    for name, spec in _ray_cluster_specs():
        assert spec["rayVersion"] == ray.__version__, name


def test_rayjobs_and_rayservice_run_the_repositorys_entry_points():
    clusters = {d["metadata"]["name"] for d in objects("RayCluster")}
    jobs = {d["metadata"]["name"]: d for d in objects("RayJob")}
    assert {"sa-ray-align", "sa-ray-pretrain"} <= set(jobs)
    for name, job in jobs.items():
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] in clusters, name
        stage = name.removeprefix("sa-ray-")
        assert job["spec"]["entrypoint"] == f"python -m jobs.{stage} --config configs/librispeech-encodec.yaml"
        assert (REPO / "jobs" / f"{stage}.py").is_file()
    (service,) = objects("RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)  # Ray Serve's own schema (types; it lets unknown keys pass)
    assert set(serve_config) <= set(ServeDeploySchema.model_fields)
    assert set(serve_config["http_options"]) <= set(HTTPOptionsSchema.model_fields)
    assert all(set(a) <= set(ServeApplicationSchema.model_fields) for a in serve_config["applications"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file(), app["import_path"]
    assert f"def {attr}(" in (REPO / Path(*module.split("."))).with_suffix(".py").read_text(), app["import_path"]
    config_path = Path(app["args"]["config"])
    assert config_path.is_absolute() and config_path.parts[:2] == ("/", "app"), config_path
    load_config(REPO.joinpath(*config_path.parts[2:]), app["args"]["overrides"])


def _secret_keys() -> dict[str, set[str]]:
    return {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in objects("Secret")}


def _walk(obj, key: str):
    """Every value under `key` anywhere in obj (dicts and lists)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk(item, key)


def test_core_objects_are_well_formed_and_every_reference_resolves():
    for file, doc in manifests():
        kind = doc["kind"]
        assert kind in CORE or kind in KUBERAY_CRDS, f"{file}: unexpected kind {kind}"
        if kind in CORE:
            assert doc["apiVersion"] == CORE[kind], f"{file}: {kind} is {CORE[kind]}"
        assert doc["metadata"]["name"], file
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{file}: {kind} {doc['metadata']['name']}"
    assert [n["metadata"]["name"] for n in objects("Namespace")] == [NAMESPACE]
    secrets, claims = _secret_keys(), {c["metadata"]["name"] for c in objects("PersistentVolumeClaim")}
    assert secrets == {"sa-ray-auth": {"auth_token"}, "sa-ray-serve": {"token"}}  # auth_token: the key KubeRay reads
    assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in objects("PersistentVolumeClaim"))
    for file, doc in manifests():
        for ref in _walk(doc, "secretKeyRef"):
            assert ref["key"] in secrets.get(ref["name"], set()), f"{file}: no Secret {ref['name']} with {ref['key']}"
        for name in _walk(doc, "secretName"):
            assert name in secrets, f"{file}: no Secret {name}"
        for name in _walk(doc, "claimName"):
            assert name in claims, f"{file}: no PersistentVolumeClaim {name}"
    (deployment,) = objects("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {
        p["name"]: p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    services = {s["metadata"]["name"]: s for s in objects("Service")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values(), port
    # every http://<service>.<namespace>.svc:<port> a config or manifest uses is a Service here
    uris = [load_config(p).tracking.uri for p in CONFIGS] + list(_walk([d for _, d in manifests()], "value"))
    for uri in [u for u in uris if isinstance(u, str) and ".svc" in u]:
        host = urlparse(uri)
        service, namespace = host.hostname.split(".")[:2]
        assert namespace == NAMESPACE and service in services, uri
        assert host.port in [p["port"] for p in services[service]["spec"]["ports"]], uri


def test_kustomization_lists_the_always_on_objects():
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    assert all((KUBERAY / f).is_file() for f in listed)
    assert {"namespace.yaml", "shared-pvc.yaml", "mlflow.yaml", "raycluster.yaml"} <= set(listed)
    # secrets are created with kubectl (real values), stages and the endpoint are applied when wanted
    assert not {"secrets.yaml", "rayservice.yaml"} & set(listed) and not [f for f in listed if f.startswith("rayjob")]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_them_unchanged():
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBERAY)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    listed = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())["resources"]
    expected = [d for f, d in manifests() if f in listed]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted(expected, key=key)


# ------------------------------------------------------------------------------------------------ configs x clusters


def cluster_node_types() -> dict[str, dict[str, dict]]:
    """cluster -> worker node type -> its resources (what one node offers), for every cluster definition."""
    out = {
        "ray_cluster.yaml": {
            name: t["resources"]
            for name, t in launcher()["available_node_types"].items()
            if name != launcher()["head_node_type"]
        }
    }
    for name, spec in _ray_cluster_specs():
        out[f"KubeRay {name}"] = {
            group: t["resources"] for group, t in kuberay_node_types(name, spec).items() if group != "headgroup"
        }
    return out


def cluster_max_workers(cluster: str) -> dict[str, int]:
    if cluster == "ray_cluster.yaml":
        return {n: t.get("max_workers", 0) for n, t in launcher()["available_node_types"].items()}
    name = cluster.removeprefix("KubeRay ")
    spec = dict(_ray_cluster_specs())[name]
    return {g["groupName"]: g["maxReplicas"] for g in spec["workerGroupSpecs"]}


def _fits(role: RoleResources, node: dict) -> bool:
    return (
        node.get("CPU", 0) >= role.num_cpus
        and node.get("GPU", 0) >= role.num_gpus
        and all(node.get(name, 0) >= amount for name, amount in role.resources.items())
    )


def _roles(cfg: Config, cluster: str) -> dict[str, RoleResources]:
    roles = {f.name: getattr(cfg.resources, f.name) for f in dataclasses.fields(cfg.resources)}
    return {"serve": roles["serve"]} if cluster == "KubeRay sa-ray-voice" else roles  # a serving-only cluster


def _stages(cfg: Config) -> dict[str, list[tuple[RoleResources, int]]]:
    """What each job holds at once: (role, how many of it)."""
    r = cfg.resources
    reward = cfg.align.reward_workers if "scorers" in cfg.align.reward_roles else 0
    return {
        "prepare": [(r.tokenizer, cfg.prepare.encoders)],
        "pretrain": [(r.pretrain, cfg.pretrain.workers)],
        "align": [
            (r.rollout, cfg.align.rollout_engines),
            (r.reference, 1),
            (r.reward, reward),
            (r.evaluator, cfg.eval.workers),
            (r.learner, cfg.align.workers),
        ],
        "serve": [(r.serve, cfg.serve.replicas)],
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_custom_resource_a_config_asks_is_declared_by_both_clusters(config):
    names = load_config(config).resources.names()
    declared = {
        cluster: set().union(*(set(res) - BUILTIN for res in types.values()))
        for cluster, types in cluster_node_types().items()
        if cluster in ("ray_cluster.yaml", "KubeRay sa-ray")
    }
    for cluster, have in declared.items():
        assert names <= have, (
            f"{config.name} asks {sorted(names - have)}, which no worker node type of {cluster} declares"
        )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_role_fits_a_node_of_the_type_it_pins_and_each_stage_fits_the_cluster(config):
    cfg = load_config(config)
    for cluster, types in cluster_node_types().items():
        for role_name, role in _roles(cfg, cluster).items():
            hosts = [n for n, res in types.items() if _fits(role, res)]
            assert hosts, f"{config.name}: resources.{role_name} {role.ray_options()} fits no node type of {cluster}"
            if role.num_gpus:
                assert all(types[n].get("GPU") for n in hosts), f"{role_name} asks GPUs"
        if cluster == "KubeRay sa-ray-voice":
            continue
        max_workers = cluster_max_workers(cluster)
        for stage, held in _stages(cfg).items():
            for pin in {name for role, n in held if n for name in role.resources}:
                pinned = [(role, n) for role, n in held if pin in role.resources]
                capacity = {
                    what: sum(res.get(what, 0) * max_workers[t] for t, res in types.items() if pin in res)
                    for what in ("CPU", "GPU")
                }
                need = {
                    "CPU": sum(role.num_cpus * n for role, n in pinned),
                    "GPU": sum(role.num_gpus * n for role, n in pinned),
                }
                assert all(need[w] <= capacity[w] for w in need), f"{config.name} {stage} on {pin}: {need} > {capacity}"
