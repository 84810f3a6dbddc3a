"""vgg_ray/distributed/session.py: which Ray a job joins, and GPUs decided from what the cluster can have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vgg_ray.config import TrainConfig, UsageError
from vgg_ray.distributed import session

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_a_cluster_without_an_autoscaler_has_what_is_up(ray_local):
    cap = session.capacity()  # 8 CPUs, no GPU, no autoscaler config on the head
    assert (cap.gpus, cap.cpus, cap.nodes, cap.known) == (0, 8, 1, True) and cap.cpus_per_gpu == float("inf")
    assert not session.use_gpus("auto", cap) and not session.use_gpus("cpu", cap)
    with pytest.raises(UsageError, match="--device gpu: this cluster has no GPU and can add none"):
        session.use_gpus("gpu", cap)  # Ray Train would wait for it for ever


def test_the_launcher_configs_node_types_give_what_the_cluster_can_have():
    # cluster/aws.yaml and gcp.yaml as the launcher leaves them on the head (~/ray_bootstrap_config.yaml):
    # GPU workers from 0, at most max_workers nodes in all, however many optional (spot) types they list
    for name in ("aws", "gcp"):
        config = yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text())
        most = session.node_type_capacity(config)
        assert most["GPU"] == 8 * config["max_workers"] and most["nodes"] == 1 + config["max_workers"], name
        # 12 CPUs per GPU or more on these node types: --decode auto decodes on the CPUs there
        assert not TrainConfig().decodes_on_device(True, most["CPU"] / most["GPU"]), name
    unknown = {"head_node_type": "h", "available_node_types": {"h": {"resources": {"CPU": 0}},
                                                               "w": {"max_workers": 2, "node_config": {}}}}
    assert session.node_type_capacity(unknown) is None  # a worker type that states no resources


def test_where_the_node_types_are_unknown_auto_asks_which():
    cap = session.Capacity(gpus=0, cpus=0, nodes=2, known=False, source="the nodes up (KubeRay)")
    with pytest.raises(UsageError, match="--device auto: no GPU is up, .* pass --device gpu or --device cpu"):
        session.use_gpus("auto", cap)
    assert session.use_gpus("gpu", cap) and not session.use_gpus("cpu", cap)
    with pytest.raises(UsageError) as e:  # the evaluation must also be told how many GPU actors
        session.check_cluster(cap, "auto", {"--data": "/local/shards"}, False, gpu_workers=0)
    assert len(str(e.value).splitlines()) == 2 and "--data /local/shards is a local path" in str(e.value)
    with pytest.raises(UsageError, match="--workers: no GPU is up"):
        session.check_cluster(cap, "gpu", {"--data": "s3://b/x"}, False, gpu_workers=0)
    assert session.check_cluster(cap, "gpu", {"--data": "s3://b/x"}, False, gpu_workers=8)


def test_a_dashboard_address_is_refused_in_one_line():
    # `export RAY_ADDRESS=http://...` is for `ray job submit`; a script run here with it must say so
    out = subprocess.run([sys.executable, "-c", "from vgg_ray.distributed.session import connect; connect()"],
                         env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard address, for `ray job submit`" in out.stderr
