"""Shared fixtures: one local Ray instance per test module, and tiny ImageNet-layout data."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance for this module, with more logical CPUs than train workers so Ray Data's
    tasks never starve the trainers (2 physical cores here). Shut down by its own handle, even on failure."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}})
    try:
        yield ctx
    finally:
        ray.shutdown()
