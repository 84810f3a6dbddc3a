"""Connecting a job to Ray, and what the cluster it joined has or can have (GPUs, CPUs, nodes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
import yaml

from vgg_ray.config import UsageError, check_shared

# Logical CPUs of a local instance: more than the train workers (2 in the demo), so that Ray Data's
# decode tasks and the evaluation actors are never starved (2 physical cores on a laptop-sized machine).
LOCAL_CPUS = 8

# Where the cluster launcher (`ray up`) leaves the autoscaler's config on the head node, node types and
# their resources included, and starts the head with --autoscaling-config pointing at it (Ray Tune looks
# for the same file: ray/tune/execution/cluster_info.py). Ray 2.60 publishes the node types nowhere a job
# can read them: `get_max_resources_from_cluster_config()` reads a GCS key that nothing in Ray writes.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
HEAD = "node:__internal_head__"  # the resource only the head node has


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


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now or, under an autoscaler whose node types are known, the most it can have
    (what a job's request may wait for). `known` is False under an autoscaler that does not show a job its
    node types (KubeRay): then `gpus`, `cpus` and `nodes` count only what is up."""

    gpus: int
    cpus: float
    nodes: int
    known: bool
    source: str  # where the figures come from, for messages

    @property
    def cpus_per_gpu(self) -> float:
        """How many cores Ray Data has to decode for each training GPU (inf without GPUs)."""
        return self.cpus / self.gpus if self.gpus else float("inf")


def _read_head() -> dict:
    # runs on the head node, where the launcher leaves its config and the autoscaler runs
    path = os.path.expanduser(BOOTSTRAP_CONFIG)
    text = None
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
    return {"config": text, "path": path, "kubernetes": "KUBERNETES_SERVICE_HOST" in os.environ}


def node_type_capacity(config: dict) -> dict | None:
    """{"GPU", "CPU", "nodes"}: the most an autoscaler with this launcher config can run at once (the head
    and, within the cluster's max_workers, as many workers of each type as allowed, the richest types
    first); None when a worker type that may be added does not state its resources."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = float(config.get("max_workers", 2**31))
    head_res = (types.get(head) or {}).get("resources") or {}
    workers = [(t.get("resources"), min(int(t.get("max_workers", 0)), cap))
               for name, t in types.items() if name != head]
    if any(res is None for res, n in workers if n > 0):
        return None
    out = {"nodes": 1 + int(min(cap, sum(n for _, n in workers)))}
    for key in ("GPU", "CPU"):
        left, total = cap, float(head_res.get(key, 0))
        for res, n in sorted(workers, key=lambda w: -float(w[0].get(key, 0)) if w[0] else 0):
            take = min(n, left)
            total += take * float((res or {}).get(key, 0))
            left -= take
        out[key] = total
    return out


def capacity() -> Capacity:
    """The connected cluster's Capacity. A task on the head node reads the launcher's config there,
    wherever this driver runs: call it once per job and pass the answer on."""
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    up = ray.cluster_resources()
    gpus, cpus = int(up.get("GPU", 0)), float(up.get("CPU", 0))
    head = ray.get(ray.remote(_read_head).options(num_cpus=0, resources={HEAD: 0.001}).remote(), timeout=300)
    if head["config"] is not None:
        config = yaml.safe_load(head["config"]) or {}
        most = node_type_capacity(config)
        if most is not None:
            return Capacity(max(gpus, int(most["GPU"])), max(cpus, most["CPU"]), max(alive, most["nodes"]), True,
                            f"the node types of {head['path']} on the head")
        return Capacity(gpus, cpus, max(alive, 2), False,
                        f"{head['path']} on the head (a worker type there states no resources)")
    if head["kubernetes"]:
        return Capacity(gpus, cpus, max(alive, 2), False,
                        "the nodes up (a KubeRay autoscaler shows a job no node groups in Ray 2.60)")
    return Capacity(gpus, cpus, alive, True, "the nodes up (no autoscaler config on the head)")


def use_gpus(device: str, cap: Capacity) -> bool:
    """--device auto|gpu|cpu: whether to ask for GPUs. `auto` goes by what the cluster can have, not by
    what is up: autoscaled GPU nodes appear only once a job asks for them. Raises UsageError where that
    cannot be known, or where --device gpu asks for what the cluster can never have."""
    if device == "cpu":
        return False
    if device == "gpu":
        if cap.known and cap.gpus == 0:
            raise UsageError(f"--device gpu: this cluster has no GPU and can add none (from {cap.source}); "
                             "use --device cpu, or a cluster with GPU node types")
        return True
    if cap.gpus:
        return True
    if not cap.known:
        raise UsageError(f"--device auto: no GPU is up, and whether the autoscaler can add any is unknown "
                         f"(from {cap.source}): pass --device gpu or --device cpu")
    return False


def check_cluster(cap: Capacity, device: str, locations: dict[str, str], shared_fs: bool,
                  gpu_workers: int | None = None) -> bool:
    """Before any work, whether a job fits the cluster: every location in `locations` ({flag: value}) one
    that all nodes see, a device it can have and, where `gpu_workers` is given (the evaluation's
    --workers, 0 for one actor per GPU), a number of GPU actors it can tell. Every problem at once
    (UsageError, one line each). Returns whether to use GPUs."""
    problems, use_gpu = [], False
    try:
        check_shared(locations, cap.nodes, shared_fs)
    except UsageError as e:
        problems.append(str(e))
    try:
        use_gpu = use_gpus(device, cap)
    except UsageError as e:
        problems.append(str(e))
    if use_gpu and gpu_workers == 0 and not cap.gpus:
        problems.append(f"--workers: no GPU is up, and how many the autoscaler can add is unknown (from "
                        f"{cap.source}): give the number of GPU actors, e.g. --workers 8")
    if problems:
        raise UsageError("\n".join(problems))
    return use_gpu
