"""The cluster definitions in cluster/ are ones a user could launch.

The launcher YAMLs go through the checks `ray up` makes before it talks to a cloud (Ray's JSON schema,
then Ray's own prepare/validate steps); the KubeRay manifests carry the fields the operator needs; the
image (cluster/Dockerfile), pyproject.toml's pins and the four cluster files stay in step.
Pure: no Ray instance, no cloud, no Kubernetes, no Docker.
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
from ray.autoscaler._private.aws.config import _configure_subnets_and_groups_from_network_interfaces
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
# The driver each CUDA toolkit shipped with: the least a torch build for it (and the base image's
# NVIDIA_REQUIRE_CUDA) runs on.
MIN_DRIVER = {"cu126": 560, "cu128": 570, "cu129": 575, "cu130": 580}

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


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _image() -> str:
    """The one image of every node: the project's version as its tag, under the placeholder registry
    that cluster/README.md's build commands replace."""
    return f"YOUR-REGISTRY/vgg-ray:{_pyproject()['project']['version']}"


def _dockerfile() -> dict:
    """What cluster/Dockerfile pins: its base image, the torch wheel index's CUDA, the torch and
    torchvision versions, the minimum driver it states, and the editable install of the project."""
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M)
    index = re.search(r"download\.pytorch\.org/whl/(cu\d+)", text)
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", text))
    driver = re.search(r"Minimum NVIDIA driver[^:\n]*:\s*(\d+)", text)
    editable = re.search(r"pip install [^\n]*-e (/home/ray/vgg_ray)\b", text)
    assert base and index and driver and editable and set(pins) == {"torch", "torchvision"}, \
        "cluster/Dockerfile: expected ARG RAY_IMAGE=..., a download.pytorch.org/whl/cuNNN index, torch== and " \
        "torchvision== pins, a 'Minimum NVIDIA driver ...: NNN' line and pip install -e /home/ray/vgg_ray"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}\s*$", text, re.M), "cluster/Dockerfile must build FROM ${RAY_IMAGE}"
    return {"base": base.group(1), "cuda": index.group(1), "torch": pins["torch"],
            "torchvision": pins["torchvision"], "driver": int(driver.group(1)), "project": editable.group(1),
            "last_user": re.findall(r"^USER (\S+)", text, re.M)[-1]}


def _upper_pin(requirement: str) -> str:
    match = re.search(r"<=\s*([\w.]+)", requirement)
    assert match, f"pyproject.toml: {requirement!r} has no upper bound for the image to pin"
    return match.group(1)


def _pip_installs(command: str) -> list[str]:
    """The words after each `pip install` in a shell command (options included)."""
    words = shlex.split(command.replace(";", " ; ").replace("&&", " ; ").replace("|", " ; "))
    out, i = [], 0
    while i < len(words) - 1:
        if words[i] in ("pip", "pip3") and words[i + 1] == "install" or words[i:i + 3] == ["-m", "pip", "install"]:
            j = i + (2 if words[i] != "-m" else 3)
            while j < len(words) and words[j] != ";":
                out.append(words[j])
                j += 1
            i = j
        i += 1
    return out


def _node_commands(config: dict) -> list[str]:
    """Every command a launcher cluster runs on a node, on the host or in the container."""
    commands = [c for key, value in config.items() if key.endswith("commands") for c in value]
    for node_type in config["available_node_types"].values():
        commands += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return commands


def _images(config: dict) -> list[str]:
    docker = config["docker"]
    found = [docker["image"]] + [docker[k] for k in ("head_image", "worker_image") if k in docker]
    return found + [t["docker"]["worker_image"] for t in config["available_node_types"].values()
                    if "worker_image" in t.get("docker", {})]


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
    # After Ray merges setup_commands into the per-node lists, the workers install nothing (the image has
    # it all); the head only its cloud's client for the autoscaler.
    assert not [w for c in prepared["worker_setup_commands"] for w in _pip_installs(c)]
    assert [w for c in prepared["head_setup_commands"] for w in _pip_installs(c) if not w.startswith("-")] in (
        ["boto3>=1.4.8"], ["google-api-python-client==1.7.8"])


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


def test_gpu_worker_types_of_eight_gpus_autoscaled_from_zero(launcher):
    cloud, config = launcher
    workers = _worker_types(config)
    for name, worker in workers.items():
        assert worker["resources"].get("GPU") == 8, name
        machine = worker["node_config"].get("InstanceType") or worker["node_config"].get("machineType")
        assert machine in EIGHT_GPU_TYPES[cloud], name
        assert worker["min_workers"] == 0, name
        assert 0 <= worker["max_workers"] <= config["max_workers"], name
    # One type is on; the optional ones ship off, so which machines a GPU request starts is never a
    # choice the autoscaler makes between equal types.
    on = [name for name, worker in workers.items() if worker["max_workers"] >= 1]
    assert len(on) == 1, f"expected one worker type with max_workers >= 1, got {on}"


def _spot_types(cloud: str, config: dict) -> dict:
    def is_spot(node_config: dict) -> bool:
        if cloud == "aws":
            return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        scheduling = node_config.get("scheduling", {})
        return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True
    return {k: v for k, v in _worker_types(config).items() if is_spot(v["node_config"])}


def test_spot_worker_type_offered_like_the_on_demand_one(launcher):
    cloud, config = launcher
    spot = _spot_types(cloud, config)
    assert len(spot) == 1, f"expected one spot/preemptible worker type, got {sorted(spot)}"
    ((name, worker),) = spot.items()
    (on_demand,) = [w for w in _worker_types(config).values() if w["max_workers"] >= 1]
    # The same machine, disk, image and role, bought as spot capacity.
    differs = {k for k in set(worker["node_config"]) | set(on_demand["node_config"])
               if worker["node_config"].get(k) != on_demand["node_config"].get(k)}
    assert differs == ({"InstanceMarketOptions"} if cloud == "aws" else {"scheduling"}), (name, differs)
    assert worker["resources"] == on_demand["resources"] and worker["min_workers"] == 0
    if cloud == "gcp":  # GCP refuses a Spot VM that restarts itself
        assert worker["node_config"]["scheduling"]["automaticRestart"] is False
        assert worker["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_aws_efa_worker_type_passes_rays_interface_checks():
    config = _load(LAUNCHERS["aws"])
    efa = {k: v for k, v in _worker_types(config).items() if "NetworkInterfaces" in v["node_config"]}
    assert len(efa) == 1, sorted(efa)
    ((name, worker),) = efa.items()
    interfaces = worker["node_config"]["NetworkInterfaces"]
    assert {i["InterfaceType"] for i in interfaces} == {"efa"}
    assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(len(interfaces)))
    # AWS's rule for multi-card instances: device index 0 on card 0 only.
    assert all(i["DeviceIndex"] == (0 if i["NetworkCardIndex"] == 0 else 1) for i in interfaces)
    # What `ray up` does with interfaces before it launches (subnets and groups moved to the node config).
    node_config = _configure_subnets_and_groups_from_network_interfaces(worker["node_config"])
    assert len(node_config["SubnetIds"]) == len(interfaces)
    assert "GroupName" in worker["node_config"].get("Placement", {}), "EFA wants a cluster placement group"
    run_options = worker["docker"]["worker_run_options"]
    assert len([o for o in run_options if o.startswith("--device=/dev/infiniband/uverbs")]) == len(interfaces)
    assert "--env FI_PROVIDER=efa" in run_options
    assert "EFA_INSTALLER_VERSION" in DOCKERFILE.read_text()


def test_gcp_tcpx_worker_type_wires_rxdm_to_nccl():
    config = _load(LAUNCHERS["gcp"])
    tcpx = {k: v for k, v in _worker_types(config).items() if v["node_config"]["machineType"] == "a3-highgpu-8g"}
    assert len(tcpx) == 1, sorted(tcpx)
    ((name, worker),) = tcpx.items()
    nics = worker["node_config"]["networkInterfaces"]
    assert len(nics) == 5 and {n["nicType"] for n in nics} == {"GVNIC"}
    assert len({n["subnetwork"] for n in nics}) == 5, "each GPU NIC on a network of its own"
    rxdm = [c for c in worker["initialization_commands"] if "tcpgpudmarxd" in c]
    plugin = [c for c in worker["initialization_commands"] if "nccl-plugin-gpudirecttcpx" in c]
    assert len(rxdm) == 1 and len(plugin) == 1
    env = dict(o.removeprefix("--env ").split("=", 1) for o in worker["docker"]["worker_run_options"]
               if o.startswith("--env "))
    volumes = [o.removeprefix("--volume ") for o in worker["docker"]["worker_run_options"] if o.startswith("--volume ")]
    # RxDM's socket folder is where NCCL's plugin looks, inside Ray's container too.
    uds = _flag(rxdm[0], "uds_path")
    assert env["NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX"] == uds and f"{uds}:{uds}" in volumes
    assert len(env["NCCL_GPUDIRECTTCPX_SOCKET_IFNAME"].split(",")) == len(nics) - 1
    plugin_dir = next(v.split(":")[1] for v in volumes if v.startswith("/var/lib/tcpx"))
    assert env["LD_LIBRARY_PATH"].split(":")[0] == plugin_dir


def test_head_takes_no_tasks_and_no_gpus(launcher):
    _, config = launcher
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_file_mounts_ship_the_working_copy_over_the_images_install(launcher):
    _, config = launcher
    # `ray up` resolves local paths against its working directory: the README runs it from the repo root.
    assert (REPO / config["file_mounts"]["~/vgg_ray"]).resolve() == REPO
    assert ".gitignore" in config["rsync_filter"], "without it the local .venv would be shipped"
    # The mount lands on the image's editable install (the container's user is ray, HOME /home/ray), so
    # the nodes import the shipped code with the image's dependencies.
    image = _dockerfile()
    assert image["project"] == "/home/ray/vgg_ray" and image["last_user"] == "ray"


def test_no_node_installs_anything_at_start(launcher):
    _, config = launcher
    for command in _node_commands(config):
        installed = [w for w in _pip_installs(command) if not w.startswith("-")]
        assert not [w for w in installed if re.match(r"(torch|torchvision)\b", w)], command
        assert not [w for w in installed if "vgg_ray" in w or w in (".", "-e")], command
        assert set(installed) <= {"boto3>=1.4.8", "google-api-python-client==1.7.8"}, command


def test_launcher_nodes_run_the_projects_image(launcher):
    cloud, config = launcher
    assert set(_images(config)) == {_image()}
    if cloud == "gcp":  # the GPU hosts' image family names its CUDA and driver: enough for the image
        image = _dockerfile()
        for name, worker in _worker_types(config).items():
            (disk,) = [d for d in worker["node_config"]["disks"] if d.get("boot")]
            family = disk["initializeParams"]["sourceImage"]
            driver = re.search(r"-nvidia-(\d+)$", family)
            assert driver and int(driver.group(1)) >= image["driver"], (name, family)


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
        assert 0 <= lo <= replicas <= hi
        ray_container = _containers(group)[0]
        for kind in ("limits", "requests"):
            assert int(ray_container["resources"][kind]["nvidia.com/gpu"]) == 8
    # One group grows; optional ones (spot) ship off, as the launcher's optional node types do.
    assert len([g for g in groups if g["maxReplicas"] >= 1]) == 1, [g["groupName"] for g in groups]

    for group in [head, *groups]:
        for container in _containers(group):
            assert container["image"] == _image(), container["image"]


def test_raycluster_manifest(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["metadata"]["name"]
    _check_cluster_spec(raycluster["spec"])


def test_raycluster_offers_a_spot_group_like_the_on_demand_one(raycluster):
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    spot = [name for name in groups if "spot" in name]
    assert len(spot) == 1, sorted(groups)
    (on_demand,) = [g for g in groups.values() if g["maxReplicas"] >= 1]
    spot_pod, pod = groups[spot[0]]["template"]["spec"], on_demand["template"]["spec"]
    assert spot_pod["containers"] == pod["containers"] and spot_pod["volumes"] == pod["volumes"]
    assert pod["tolerations"][0] in spot_pod["tolerations"] and len(spot_pod["tolerations"]) > 1


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
    # A job cannot see KubeRay's worker groups (Ray 2.60): with no GPU pod up yet, `auto` would stop and ask.
    assert cfg.device == "gpu"
    gpus_per_node = 8
    max_nodes = max(g["maxReplicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.max_workers <= gpus_per_node * max_nodes, "more DDP workers than the GPU group can hold"


def test_rayjob_installs_nothing(rayjob):
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    # Dependencies come from the image: a pip list here would download torch per job and per node.
    assert not {"pip", "uv", "conda"} & set(runtime_env), sorted(runtime_env)


# --- the image, the pins and the cluster files in step -------------------------------------------


def test_dockerfile_pins_what_pyproject_and_ray_pin():
    image, deps = _dockerfile(), _pyproject()["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    assert ray_dep.endswith(f"=={ray.__version__}")
    # Ray's GPU image of the installed Ray, for the Python the clusters run and the CUDA of the wheels.
    assert image["base"] == f"rayproject/ray:{ray.__version__}-py311-{image['cuda']}"
    for name in ("torch", "torchvision"):
        (dep,) = [d for d in deps if re.match(rf"{name}(?![\w-])", d)]
        assert image[name] == _upper_pin(dep), (name, dep)
    assert image["driver"] >= MIN_DRIVER[image["cuda"]], "the driver stated is less than the wheels need"


def test_minimum_driver_stated_everywhere_it_matters():
    driver = _dockerfile()["driver"]
    readme = (CLUSTER / "README.md").read_text()
    assert f"Minimum NVIDIA driver: {driver}" in readme.replace("**", "")
    for path in [*LAUNCHERS.values(), KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"]:
        assert f"driver >= {driver}" in path.read_text(), path.name


def test_helpers_read_pins_and_installs():
    assert _upper_pin("torch>=2.11,<=2.14.1") == "2.14.1"
    with pytest.raises(AssertionError):
        _upper_pin("torch>=2.11")
    assert _pip_installs("pip install -e ~/vgg_ray && ray stop") == ["-e", "~/vgg_ray"]
    assert _pip_installs("python -m pip install 'torch==2.14.1' x; echo") == ["torch==2.14.1", "x"]
    assert _pip_installs("ray stop") == []


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


# --- the guides run in order ------------------------------------------------------------------------


def _job_commands(path: Path, script: str) -> list[list[str]]:
    """The words of each command in a Markdown guide that runs jobs/<script> (code lines, continuation
    lines joined, and table cells in backticks), from `python` on, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    commands = []
    for line in text.splitlines():
        spans = re.findall(r"`([^`]*)`", line) if "|" in line else [line.split(" #")[0]]
        for span in spans:
            words = span.split()
            if f"jobs/{script}" in words and "python" in words:
                commands.append(words[words.index("python"):])
    return commands


def _option(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


@pytest.mark.parametrize("guide", ["README.md", "cluster/README.md"])
def test_guides_training_chain_names_what_the_next_step_reads(guide):
    # Each `--init from:<storage>/X` must be a run (or the folder of one call) that an earlier command of
    # the same guide wrote, as <storage>/<name>/<arch>.
    written, checked = set(), 0
    for words in _job_commands(REPO / guide, "train.py"):
        storage, name = _option(words, "--storage"), _option(words, "--name")
        init = _option(words, "--init") or ""
        if init.startswith("from:") and storage and init[5:].startswith(storage + "/"):
            source = init[5 + len(storage) + 1:]
            assert source in written, f"{guide}: --init {init} reads a run no earlier command wrote ({sorted(written)})"
            checked += 1
        if storage and name:
            written.add(name)
            written.update(f"{name}/{arch}" for arch in _option(words, "--arch").split(","))
    assert checked or guide != "README.md", "README.md's training chain has no --init from: step to check"


def test_cluster_guide_gives_every_training_job_its_workers_and_name():
    commands = _job_commands(CLUSTER / "README.md", "train.py") + _job_commands(CLUSTER / "README.md", "reproduce.py")
    assert len(commands) >= 4
    for words in commands:
        assert "--workers" in words and "--name" in words, " ".join(words)


def test_readme_names_the_default_run_names():
    # README.md says what a call without --name is called; TrainConfig decides it.
    config = pytest.importorskip("vgg_ray.config")
    readme = (REPO / "README.md").read_text()
    for scale in ("256", "384", "256-512"):
        assert f"`{config.TrainConfig(arch='A', train_scale=scale).name}`" in readme, scale
