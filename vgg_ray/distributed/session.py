"""Connecting a job to Ray: the cluster it is pointed at, else a local instance of its own."""

from __future__ import annotations

import os

import ray

# Logical CPUs of a local instance: more than the train workers (2 in the demo), so that Ray Data's
# decode tasks and the evaluation actors are never starved (2 physical cores on a laptop-sized machine).
LOCAL_CPUS = 8


def connect(num_cpus: int = LOCAL_CPUS) -> None:
    """Join the cluster when this process is pointed at one (a job submitted with `ray job submit`, or
    RAY_ADDRESS set to a GCS address); else start a Ray of its own here with at least `num_cpus`
    logical CPUs.

    Never a bare ray.init(): it joins whatever /tmp/ray/ray_current_cluster names, and when that head
    has died (stopped by PID, a reboot) it waits on GCS time-outs for minutes instead of starting.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        raise SystemExit(f"RAY_ADDRESS={address} is a dashboard address, for `ray job submit`: submit this "
                         "script with `ray job submit -- python ...`, or unset RAY_ADDRESS to run it here")
    if address:
        ray.init(address=address)
        return
    ray.init(address="local", num_cpus=max(num_cpus, os.cpu_count() or 1))


def node_count() -> int:
    """Nodes a job's work may land on: those alive now, or more under an autoscaler (its node types)."""
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    config = ray._private.state.state.get_cluster_config()
    return max(alive, 2) if config is not None and config.node_group_configs else alive


def _capacity(resource: str) -> float:
    """How much of `resource` the cluster has or can have: what is up now, or, under an autoscaler, the
    most its node types can add (what Ray Train checks a request against)."""
    up = ray.cluster_resources().get(resource, 0)
    limits = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    return max(up, min(limits.get(resource, 0), 2**31))


def cpu_capacity() -> float:
    """CPUs the cluster has or can have (_capacity); 0 when this process is not connected to Ray."""
    return _capacity("CPU") if ray.is_initialized() else 0.0


def gpu_capacity() -> int:
    """GPUs the cluster has or can have (_capacity). 0 on a cluster without GPUs."""
    return int(_capacity("GPU"))


def cpus_per_gpu() -> float:
    """The cluster's CPUs per GPU, both counted as _capacity counts them (inf without GPUs): how many
    cores Ray Data has to decode for each training GPU."""
    gpus = gpu_capacity()
    return _capacity("CPU") / gpus if gpus else float("inf")


def use_gpus(device: str) -> bool:
    """--device auto|gpu|cpu: whether to ask for GPUs. `auto` goes by what the cluster can have, not by
    what is up: autoscaled GPU nodes appear only once a job asks for them."""
    if device != "auto":
        return device == "gpu"
    return gpu_capacity() > 0
