"""--device auto against a real autoscaler: Ray's fake multi-node provider (a real StandardAutoscaler whose
nodes are local raylets with the resources their node type states), with GPU workers that scale from zero
as in cluster/. The head is started as the cluster launcher starts it (`ray start --head
--autoscaling-config=~/ray_bootstrap_config.yaml`, the config in the head's home), and stopped by its PID.
Nothing here publishes Ray's internal state: what the job reads is what the launcher and the autoscaler
leave."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
GPU_TYPE = "gpu-worker"


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_config(gcs: str) -> dict:
    # the fields of Ray's fake_multi_node/example.yaml (absent from the 2.60 wheel), with cluster/'s shape:
    # a head with no CPUs and a GPU node type at min 0
    return {
        "cluster_name": "vgg-ray-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "auth": {"ssh_user": "ray"}, "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            GPU_TYPE: {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    """The head, and the environment a job submitted to it has (RAY_ADDRESS, the token): the jobs and
    checks below run in processes of their own with it, as `ray job submit` runs a job's driver."""
    home = tmp_path_factory.mktemp("head_home")  # the head's ~, where the launcher leaves its config
    port = _port()
    # `ray start` maps 127.0.0.1 to this machine's address (services.resolve_ip_for_localhost): use that
    gcs = f"{ray._private.services.get_node_ip_address()}:{port}"
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(launcher_config(gcs)))
    job_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
               "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": gcs, "PYTHONPATH": str(ROOT)}
    env = {**job_env, "HOME": str(home), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS")
    log = home / "head.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
                                 "--include-dashboard=false",
                                 f"--autoscaling-config={home / 'ray_bootstrap_config.yaml'}"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=home)
    recorded = Path("/tmp/ray/ray_current_cluster")
    try:
        up = drive(job_env, "answer(len(ray.nodes()))", timeout=300)
        assert up == 1, log.read_text()[-3000:]
        yield job_env
    finally:
        # the head's processes and the fake nodes' raylets (children of its autoscaler) share its group
        group = [p for p in psutil.process_iter() if _in_group(p, proc.pid)]
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for p in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if recorded.is_file() and recorded.read_text().strip().endswith(f":{port}"):
            recorded.unlink()


def drive(env: dict, code: str, timeout: float = 600):
    """Run `code` in a driver of its own joined to the head (RAY_ADDRESS); returns what it passes to
    `answer` (the autoscaler's events reach the driver's stdout too)."""
    script = ("import json, ray\nfrom vgg_ray.distributed import session\nsession.connect()\n"
              "def answer(x):\n    print('ANSWER ' + json.dumps(x), flush=True)\n" + code)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("ANSWER "))[len("ANSWER "):])


def _in_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False


def test_auto_asks_for_the_gpus_the_autoscaler_can_add(autoscaling_head):
    got = drive(autoscaling_head, """
cap = session.capacity()
answer({"gpus_up": ray.cluster_resources().get("GPU", 0), "cap": [cap.gpus, cap.nodes, cap.known],
                  "source": cap.source, "auto": session.use_gpus("auto", cap)})""")
    assert got["gpus_up"] == 0  # no GPU node is up
    assert got["cap"] == [2, 3, True] and "ray_bootstrap_config.yaml" in got["source"]
    assert got["auto"]


def test_local_paths_are_refused_before_the_gpu_nodes_are_up(autoscaling_head, demo_shards, tmp_path):
    # one node is up, but the job's workers will land on nodes the autoscaler adds
    (tmp_path / "x" / "A").mkdir(parents=True)
    out = subprocess.run([sys.executable, "jobs/train.py", "--arch", "A", "--preset", "smoke", "--data", demo_shards,
                          "--storage", str(tmp_path), "--name", "x", "--fresh"], env=autoscaling_head, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"--storage {tmp_path} is a local path, and this cluster has 3 nodes" in out.stderr
    assert f"error: --data {demo_shards} is a local path" in out.stderr  # every problem at once
    assert (tmp_path / "x" / "A").is_dir()  # --fresh deleted nothing: a check had failed


def test_the_jobs_gpu_request_makes_the_autoscaler_add_a_gpu_node(autoscaling_head):
    # The request a training job's worker group makes (trainer.worker_scaling, with the GPUs `auto`
    # chose), as the placement group Ray Train makes of it; the fake node's GPU has no CUDA behind it, so
    # the train loop itself cannot run here. The autoscaler reads the request and launches the GPU type.
    got = drive(autoscaling_head, """
from ray.util.placement_group import placement_group, remove_placement_group
from vgg_ray.config import TrainConfig
from vgg_ray.distributed.trainer import worker_scaling
cfg = TrainConfig.from_preset("smoke", workers=1, cpus_per_worker=1)
scaling = worker_scaling(cfg, session.use_gpus("auto", session.capacity()))
bundle = scaling._resources_per_worker_not_none
pg = placement_group([bundle] * scaling.num_workers)
ready = ray.get(pg.ready(), timeout=240)
nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
remove_placement_group(pg)
answer({"bundle": bundle, "nodes": nodes, "gpus": session.capacity().gpus})""")
    assert got["bundle"] == {"CPU": 1, "GPU": 1}
    assert sum(1 for n in got["nodes"] if n.get("GPU") == 1) == 1 and got["gpus"] == 2, got
