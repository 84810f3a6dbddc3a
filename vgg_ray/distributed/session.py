"""Connecting a job to Ray: the cluster when there is one, else a local instance sized for training."""

from __future__ import annotations

import os

import ray

# Logical CPUs of a local instance: more than the train workers (2 in the demo), so that Ray Data's
# decode tasks and the evaluation actors are never starved (2 physical cores on a laptop-sized machine).
LOCAL_CPUS = 8


def connect(num_cpus: int = LOCAL_CPUS) -> None:
    """Join the cluster when there is one (a job submitted with `ray job submit`, or RAY_ADDRESS set);
    else start Ray here with at least `num_cpus` logical CPUs.

    Not ray.init(address="auto") when RAY_ADDRESS is unset: "auto" also joins any Ray instance it finds
    running on the machine, such as another user's test session.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
        return
    try:
        ray.init(num_cpus=max(num_cpus, os.cpu_count() or 1))
    except ValueError:  # "When connecting to an existing cluster, num_cpus ... must not be provided"
        ray.init()
