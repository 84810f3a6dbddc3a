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
