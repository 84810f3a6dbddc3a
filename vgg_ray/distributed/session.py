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
