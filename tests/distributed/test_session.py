"""vgg_ray/distributed/session.py: which Ray a job joins, and GPUs decided from what the cluster can have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import ray._raylet
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

from vgg_ray.config import TrainConfig
from vgg_ray.distributed import session

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_device_follows_what_the_cluster_can_have(ray_local):
    assert not session.use_gpus("auto") and session.gpu_capacity() == 0  # 8 CPUs, no GPU, no autoscaler
    assert session.cpus_per_gpu() == float("inf")
    assert session.use_gpus("gpu") and not session.use_gpus("cpu")
    # What an autoscaler publishes for a cluster whose GPU nodes scale up from zero (as cluster/aws.yaml):
    # no GPU is up, yet `auto` must ask for GPUs and let the autoscaler add them.
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu-8x", max_count=4, min_count=0)
    group.resources.update({"CPU": 96, "GPU": 8})
    key, ns = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    _internal_kv_put(key, config.SerializeToString(), namespace=ns)
    try:
        assert ray.cluster_resources().get("GPU", 0) == 0
        assert session.use_gpus("auto") and session.gpu_capacity() == 32
        # 96 CPUs per 8 GPUs, as the node types of cluster/aws.yaml: --decode auto decodes on the CPUs there
        assert session.cpus_per_gpu() == 12 and not TrainConfig().decodes_on_device(True, session.cpus_per_gpu())
    finally:
        _internal_kv_del(key, namespace=ns)
    assert not session.use_gpus("auto")


def test_a_dashboard_address_is_refused_in_one_line():
    # `export RAY_ADDRESS=http://...` is for `ray job submit`; a script run here with it must say so
    out = subprocess.run([sys.executable, "-c", "from vgg_ray.distributed.session import connect; connect()"],
                         env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard address, for `ray job submit`" in out.stderr
