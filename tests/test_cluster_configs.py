"""The cluster definitions in cluster/ are ones a user could launch.

The launcher YAMLs go through the checks `ray up` makes before it talks to a cloud (Ray's JSON schema,
then Ray's own prepare/validate steps); the KubeRay manifests carry the fields the operator needs.
Pure: no Ray instance, no cloud, no Kubernetes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = CLUSTER / "kuberay"

# 8-GPU machine types the README names (A100 or H100).
EIGHT_GPU_TYPES = {
    "aws": {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"},
    "gcp": {"a2-highgpu-8g", "a2-ultragpu-8g", "a3-highgpu-8g"},
}
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


@pytest.fixture(params=sorted(LAUNCHERS))
def launcher(request) -> tuple[str, dict]:
    return request.param, _load(LAUNCHERS[request.param])


def _worker_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def _ray_start_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bray start\b", c)]


def _flag(command: str, name: str) -> str | None:
    """Value of `--name=value` or `--name value` in a shell command, None if absent."""
    words = shlex.split(command.replace(";", " ; "))
    for i, w in enumerate(words):
        if w.startswith(f"--{name}="):
            return w.split("=", 1)[1]
        if w == f"--{name}" and i + 1 < len(words):
            return words[i + 1]
    return None


# --- Ray cluster launcher (AWS, GCP) ---------------------------------------------------------------


def test_launcher_validates_against_rays_schema(launcher, ray_schema):
    _, config = launcher
    jsonschema.Draft7Validator(ray_schema).validate(config)


def test_launcher_passes_ray_up_config_checks(launcher):
    # What `ray up` does before it needs cloud credentials: merge with the provider's defaults.yaml,
    # then validate (schema, head type among node types, min_workers within max_workers).
    _, config = launcher
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # After Ray merges setup_commands into the per-node lists, head and workers both install the project.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert "pip install -e ~/vgg_ray" in prepared[key], key


def _typo_key(c: dict) -> None:
    c["max_worker"] = c.pop("max_workers")


def _gpu_count_as_string(c: dict) -> None:
    next(iter(_worker_types(c).values()))["resources"]["GPU"] = "8"


def _node_type_without_node_config(c: dict) -> None:
    del next(iter(_worker_types(c).values()))["node_config"]


def _no_provider(c: dict) -> None:
    del c["provider"]


@pytest.mark.parametrize(
    "breakage", [_typo_key, _gpu_count_as_string, _node_type_without_node_config, _no_provider]
)
def test_schema_rejects_a_broken_copy(launcher, ray_schema, breakage):
    _, config = launcher
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(ray_schema).validate(broken)


def test_ray_up_checks_reject_unknown_head_type(launcher):
    _, config = launcher
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no-such-node-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_one_gpu_worker_type_of_eight_gpus_autoscaled_from_zero(launcher):
    cloud, config = launcher
    workers = _worker_types(config)
    assert len(workers) == 1, f"expected one GPU worker type, got {sorted(workers)}"
    (worker,) = workers.values()
    assert worker["resources"].get("GPU") == 8
    machine = worker["node_config"].get("InstanceType") or worker["node_config"].get("machineType")
    assert machine in EIGHT_GPU_TYPES[cloud]
    assert worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= config["max_workers"]


def test_head_takes_no_tasks_and_no_gpus(launcher):
    _, config = launcher
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_file_mounts_ship_the_working_copy_and_setup_installs_it(launcher):
    _, config = launcher
    # `ray up` resolves local paths against its working directory: the README runs it from the repo root.
    assert (REPO / config["file_mounts"]["~/vgg_ray"]).resolve() == REPO
    assert ".gitignore" in config["rsync_filter"], "without it the local .venv would be shipped"
    assert "pip install -e ~/vgg_ray" in config["setup_commands"]


def test_image_runs_the_installed_ray_version(launcher):
    _, config = launcher
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311-"), image
    assert image.endswith("-gpu")


def test_dashboard_bound_to_loopback_only(launcher):
    _, config = launcher
    (head_start,) = [c for c in _ray_start_commands(config["head_start_ray_commands"]) if "--head" in c]
    assert _flag(head_start, "dashboard-host") == "127.0.0.1"
    commands = [c for key, value in config.items() if key.endswith("commands") for c in value]
    docker_options = config["docker"].get("run_options", [])
    assert not [c for c in commands + docker_options if "0.0.0.0" in c], "something listens on all interfaces"
    assert not [o for o in docker_options if "8265" in o or o.startswith(("-p", "--publish"))]


def test_token_auth_on_every_ray_start_and_token_shipped(launcher):
    _, config = launcher
    starts = _ray_start_commands(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert len(starts) == 2
    for command in starts:
        before_start = command[: command.index("ray start")]
        assert "RAY_AUTH_MODE=token" in before_start, command
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # Every node reads the token from Ray's default path, shipped from the user's machine.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_helpers_see_through_the_commands():
    # The checks above lean on these; a helper that always said "fine" would make them vacuous.
    cmd = "ulimit -n 65536; RAY_AUTH_MODE=token ray start --head --port=6379 --dashboard-host 0.0.0.0"
    assert _flag(cmd, "dashboard-host") == "0.0.0.0"
    assert _flag(cmd, "port") == "6379"
    assert _flag(cmd, "address") is None
    assert _ray_start_commands(["ray stop", cmd]) == [cmd]


# --- KubeRay -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raycluster() -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / "raycluster.yaml").read_text()))
    (doc,) = [d for d in docs if d and d.get("kind") == "RayCluster"]
    return doc


@pytest.fixture(scope="module")
def rayjob() -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / "rayjob.yaml").read_text()))
    (doc,) = [d for d in docs if d and d.get("kind") == "RayJob"]
    return doc


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_cluster_spec(spec: dict) -> None:
    """Fields KubeRay needs, and the project's rules: token auth, no public dashboard, 8-GPU workers."""
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"

    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    # KubeRay's CRD types rayStartParams as map[string]string: a bare 0 is rejected by the API server.
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), head["rayStartParams"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert head.get("serviceType", "ClusterIP") not in EXPOSED_SERVICE_TYPES
    assert not head.get("enableIngress", False)
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") in {"0.0.0.0", "127.0.0.1"}
    head_ports = {p["containerPort"] for p in _containers(head)[0]["ports"]}
    assert {6379, 8265, 10001} <= head_ports

    groups = spec["workerGroupSpecs"]
    assert groups, "no worker group"
    for group in groups:
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        replicas, lo, hi = group["replicas"], group["minReplicas"], group["maxReplicas"]
        assert all(isinstance(n, int) for n in (replicas, lo, hi))
        assert 0 <= lo <= replicas <= hi and hi >= 1
        ray_container = _containers(group)[0]
        for kind in ("limits", "requests"):
            assert int(ray_container["resources"][kind]["nvidia.com/gpu"]) == 8

    for group in [head, *groups]:
        for container in _containers(group):
            assert container["image"].startswith(f"rayproject/ray:{ray.__version__}-"), container["image"]


def test_raycluster_manifest(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["metadata"]["name"]
    _check_cluster_spec(raycluster["spec"])


def test_rayjob_manifest(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"])

    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "jobs/train.py"]
    for flag in ("--arch", "--data", "--storage", "--name"):
        assert flag in words, f"RayJob entrypoint lacks {flag}"


def test_rayjob_entrypoint_is_a_valid_training_command(rayjob):
    # Parsed with the flags jobs/train.py builds from TrainConfig, and validated by TrainConfig itself.
    config = pytest.importorskip("vgg_ray.config")
    words = shlex.split(rayjob["spec"]["entrypoint"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch")
    config.add_arguments(parser, skip=("arch",))
    args = parser.parse_args(words[2:])
    cfg = config.from_args(args, arch=args.arch)
    assert cfg.storage.startswith(("s3://", "gs://")) and cfg.data.startswith(("s3://", "gs://"))
    assert cfg.device == "auto"
    gpus_per_node = 8
    max_nodes = max(g["maxReplicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.max_workers <= gpus_per_node * max_nodes, "more DDP workers than the GPU group can hold"


def test_rayjob_installs_the_projects_dependencies(rayjob):
    tomllib = pytest.importorskip("tomllib")
    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    # Ray comes with the image; everything else pyproject.toml asks for must be installed, as pinned there.
    wanted = sorted(d for d in deps if not d.startswith("ray"))
    assert sorted(runtime_env["pip"]) == wanted


def _public_head_service(spec: dict) -> None:
    spec["headGroupSpec"]["serviceType"] = "LoadBalancer"


def _no_token_auth(spec: dict) -> None:
    del spec["authOptions"]


def _one_gpu_workers(spec: dict) -> None:
    _containers(spec["workerGroupSpecs"][0])[0]["resources"]["limits"]["nvidia.com/gpu"] = 1


def _unquoted_start_param(spec: dict) -> None:
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _min_above_max(spec: dict) -> None:
    spec["workerGroupSpecs"][0]["minReplicas"] = spec["workerGroupSpecs"][0]["maxReplicas"] + 1


@pytest.mark.parametrize(
    "breakage",
    [_public_head_service, _no_token_auth, _one_gpu_workers, _unquoted_start_param, _min_above_max],
)
def test_cluster_spec_check_rejects_a_broken_copy(raycluster, breakage):
    spec = copy.deepcopy(raycluster["spec"])
    breakage(spec)
    with pytest.raises((AssertionError, KeyError)):
        _check_cluster_spec(spec)
