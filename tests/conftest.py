"""Shared fixtures: one local Ray instance per test module, tiny ImageNet-layout data, and an S3-compatible
server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    """A one-process gloo group on loopback (torch.distributed's real one), destroyed after the test."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance for this module, with more logical CPUs than train workers so Ray Data's
    tasks never starve the trainers (2 physical cores here). Shut down by its own handle, even on failure."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": always a new instance of our own, never a Ray head found running on the machine
    ctx = ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    try:
        yield ctx
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> str:
    """A tiny demo source tree in the ImageNet layout (flat val/ + LOC_val_solution.csv): 10 classes,
    20 train images each plus 4 quirk files (one of them truncated), 6 val images each."""
    from vgg_ray.imagenet import demo

    root = tmp_path_factory.mktemp("demo_src")
    demo.make_tree(root, train_per_class=20, val_per_class=6, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def demo_shards(demo_tree, tmp_path_factory) -> str:
    """`demo_tree` converted without Ray (the converter's pure path): the shards root, as str. 203 train
    rows in 8 shards, 60 val rows in 2, 10 classes; images 48-160 px a side. About 1 s."""
    from vgg_ray.imagenet import convert

    out = tmp_path_factory.mktemp("demo_shards")
    convert.convert(demo_tree, str(out), shard_mb=0.2, stats_sample=100)
    return str(out)


@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory):
    """s3://vgg on moto's standalone S3 server, listening on 127.0.0.1 only, for this module. The AWS
    variables point this process, and the Ray processes started after it, at the server (pyarrow reads
    AWS_ENDPOINT_URL). The server is stopped by its own PID and the variables restored, even on failure."""
    import pyarrow.fs as pafs

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        os.environ.update(env)
        for _ in range(300):  # the server answers within seconds; each try waits up to 0.1 s on the socket
            if proc.poll() is not None:
                pytest.fail(f"moto's S3 server exited: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                try:
                    proc.wait(timeout=0.1)  # a pause that also notices the server's death
                except subprocess.TimeoutExpired:
                    pass
        else:
            pytest.fail(f"moto's S3 server never listened on 127.0.0.1:{port}")
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir("vgg")
        yield "s3://vgg"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
