"""A live cluster's check before a long run (jobs/check_cluster.py): CUDA and its versions on every train
worker, and the bus bandwidth of the all-reduce DDP gets between them, measured through the same Ray Train
worker group and process group (NCCL on GPUs, gloo on CPUs) that training uses."""

from __future__ import annotations

import socket
import subprocess

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.queue import Queue
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from vgg_ray.perf import busbw, time_allreduce


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _versions() -> dict:
    """What one GPU slot (a task holding one GPU, as a train worker does) sees."""
    cuda = torch.cuda.is_available()
    return {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()[:12], "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "driver": _driver_version(),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "visible": ray.get_runtime_context().get_accelerator_ids().get("GPU", [])}


def probe(workers: int, use_gpu: bool) -> list[dict]:
    """_versions() on `workers` slots placed as Ray Train places its workers (PACK), one CPU and, with
    `use_gpu`, one GPU each: waits for the autoscaler to add the nodes, as training would."""
    bundle = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    pg = placement_group([bundle] * workers, strategy="PACK")
    try:
        ray.get(pg.ready())
        task = ray.remote(_versions)
        return ray.get([task.options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                     scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                        for i in range(workers)])
    finally:
        remove_placement_group(pg)


def _check_worker(config: dict) -> None:
    seconds = time_allreduce(config["nbytes"], ray.train.torch.get_device(), config["repeat"])
    # the slowest rank's median (an all-reduce is done when every rank has it), and each rank's node
    slowest = [None] * dist.get_world_size()
    dist.all_gather_object(slowest, (seconds, ray.get_runtime_context().get_node_id()))
    if dist.get_rank() == 0:
        config["answer"].put({"seconds": max(t for t, _ in slowest), "nodes": len({n for _, n in slowest})})


def allreduce(workers: int, use_gpu: bool, nbytes: int, repeat: int, storage: str | None, name: str) -> dict:
    """An all-reduce of `nbytes` (fp32) on `workers` train workers; {"seconds" (the median), "nodes",
    "busbw" (bytes/s, in nccl-tests' sense: 2(n-1)/n of the buffer crosses each link), "bytes",
    "backend"}."""
    answer = Queue(actor_options={"num_cpus": 0})  # rank 0's figures (Ray Train 2.60 keeps metrics only
    trainer = TorchTrainer(                         # with checkpoints, and this run writes none)
        _check_worker, train_loop_config={"nbytes": nbytes, "repeat": repeat, "answer": answer},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage))
    trainer.fit()
    got = answer.get(timeout=60)
    answer.shutdown()
    return {**got, "bytes": nbytes, "busbw": busbw(nbytes, workers, got["seconds"]),
            "backend": "nccl" if use_gpu else "gloo"}
