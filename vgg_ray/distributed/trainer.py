"""Training runs: one Ray Tune trial per configuration, each running a Ray Train TorchTrainer (DDP).

Layout under <storage>/<name>/:
  <arch>/            Ray Train's run: checkpoint_epochNNN/, plus our metrics.csv, curves.png, tensorboard/,
                     config.json, best.pt (the weights with the lowest top-1 error), best.json
  tune/              Ray Tune's experiment state
Running the same command again (same --storage and --name) resumes every configuration from its latest
checkpoint, schedule included; finished configurations return at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from vgg_ray.config import TrainConfig
from vgg_ray.distributed import data as vdata
from vgg_ray.distributed.schedule_board import PlateauCallback, start_board
from vgg_ray.distributed.session import HEAD, capacity, check_cluster, connect
from vgg_ray.distributed.train_loop import train_loop_per_worker
from vgg_ray.imagenet.demo import resolve_data
from vgg_ray.storage import exists, join, publish_dir

DONE = "done.json"  # written into a configuration's run directory once its training has ended


# Ray Train 2.60 routes a worker's print() to its logger and, since ray-project/ray#61075, also to the
# original print whenever sys.stdout is not sys.__stdout__, which in a Ray worker it never is: every line
# a train worker prints reached the job's log twice. Doubled, the progress bars' state messages also
# broke ray.experimental.tqdm_ray (a second "closed" message brings a finished bar back, never closed
# again), and every epoch's bar stayed on screen, redrawn with each new line. Ray Train passes this
# variable from the process that calls fit() to its controller and workers; set it to 1 to have the
# patch (prints then also go to Ray Train's structured log files).
PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def worker_scaling(cfg: TrainConfig, use_gpu: bool) -> ray.train.ScalingConfig:
    """The worker group a configuration asks the cluster for (what the autoscaler sees). --workers
    MIN-MAX: Ray Train's elastic policy starts with what fits (at least MIN), looks for room to grow every
    --resize-check-s, and restarts a smaller group from the last checkpoint on a loss."""
    return ray.train.ScalingConfig(
        num_workers=cfg.workers if cfg.min_workers != cfg.max_workers else cfg.min_workers,
        use_gpu=use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
        elastic_resize_monitor_interval_s=cfg.resize_check_s)


def _trial(config: dict) -> None:
    os.environ.setdefault(PRINT_PATCH, "0")
    cfg = TrainConfig.from_dict(config["cfg"])
    arch_dir = join(config["exp_dir"], cfg.arch)
    on_device = cfg.decodes_on_device(config["use_gpu"], config["cpus_per_gpu"])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config["cfg"], "root": config["root"], "run_dir": arch_dir,
                           "run_key": arch_dir, "board": config["board"], "decode_on_device": on_device},
        scaling_config=worker_scaling(cfg, config["use_gpu"]),
        run_config=ray.train.RunConfig(
            name=cfg.arch, storage_path=config["exp_dir"],
            # a drain for preemption (a spot node reclaimed) is counted apart, with no limit (Ray Train's
            # max_preemption_failures default): it never uses up --max-failures
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # the latest two: the one to resume from, and one more in case the latest is being written
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]),
        **vdata.trainer_inputs(config["root"], cfg.train_scale_px, cfg.crop_size, cfg.seed, on_device, arch_dir),
    )
    trainer.fit()


@dataclass(frozen=True)
class Plan:
    """What a training job decided from the cluster, before any work: where its data is, GPUs or CPUs,
    and how many trials run at once."""

    root: str
    use_gpu: bool
    cpus_per_gpu: float
    concurrent: int


def plan(cfgs: list[TrainConfig]) -> Plan:
    """Connect, and check the configurations against the cluster (UsageError, one line each) before any
    work: a local --storage/--data on several nodes, a device the cluster cannot have."""
    first = cfgs[0]
    if len({c.arch for c in cfgs}) != len(cfgs) or any(
            (c.storage, c.name, c.data, c.workers) != (first.storage, first.name, first.data, first.workers)
            for c in cfgs):
        raise ValueError("one training run takes each arch once, with one --storage, --name, --data, --workers")
    connect()
    cap = capacity()
    use_gpu = check_cluster(cap, first.device, {"--storage": first.storage, "--data": first.data}, first.shared_fs)
    lo, hi = first.workers
    # trials beyond what fits wait in Tune's queue; under an autoscaler that shows no node types, every
    # trial starts and its worker group waits for the GPUs. On CPUs, half of them go to the train workers
    # and half to Ray Data's decoding.
    if use_gpu and not cap.known:
        concurrent = len(cfgs)
    else:
        concurrent = int((max(cap.gpus, lo) if use_gpu else cap.cpus // (2 * first.cpus_per_worker)) // hi)
    return Plan(resolve_data(first.data), use_gpu, cap.cpus_per_gpu, max(1, concurrent))


def train(cfgs: list[TrainConfig], decided: Plan | None = None) -> dict[str, str]:
    """Train each configuration (one Tune trial each, concurrently as resources allow); all share
    --storage, --name and --data. Returns {arch: run directory}."""
    decided = decided or plan(cfgs)
    first = cfgs[0]
    root, use_gpu, per_gpu = decided.root, decided.use_gpu, decided.cpus_per_gpu
    exp_dir = first.experiment_dir
    lo, hi = first.workers
    print(f"training {', '.join(c.arch for c in cfgs)} on {lo if lo == hi else f'{lo} to {hi}'} "
          f"{'GPU' if use_gpu else 'CPU'} worker(s) each, JPEGs decoded on the "
          f"{'GPUs' if first.decodes_on_device(use_gpu, per_gpu) else 'CPUs'}"
          + ("" if not use_gpu or ray.cluster_resources().get("GPU", 0) >= lo
             else "; waiting for the autoscaler to add GPU nodes"), flush=True)
    archs = [c.arch for c in cfgs]
    board_name, board = start_board()  # this call's own: it ends with it
    space = {
        "cfg": tune.grid_search([c.to_dict() for c in cfgs]),
        "root": root, "exp_dir": exp_dir, "use_gpu": use_gpu, "cpus_per_gpu": per_gpu, "board": board_name,
    }
    tuner = tune.Tuner(
        # The trial function only drives a TorchTrainer (whose controller Ray Train starts on the trial's
        # node), and its workers request their own CPUs/GPUs: the trial lives on the head, which takes no
        # tasks but is never a spot node, so a preempted or lost worker node never takes the run's driver.
        tune.with_resources(_trial, {"cpu": 0, HEAD: 0.001}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=decided.concurrent),
        # Should a trial fail all the same, Tune starts it again and its TorchTrainer resumes from the
        # run's last checkpoint, as a resubmission does.
        run_config=tune.RunConfig(name="tune-" + "-".join(archs), storage_path=exp_dir,
                                  failure_config=tune.FailureConfig(max_failures=first.max_failures),
                                  callbacks=[PlateauCallback(board_name, run_key_of_trial=_run_key)], verbose=1),
    )
    try:
        results = tuner.fit()
    finally:
        ray.kill(board)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(archs)} trainings failed; first: {errors[0]}")
    runs = {a: join(exp_dir, a) for a in archs}
    for run_dir in runs.values():  # what jobs/reproduce.py looks for to skip a finished stage
        with publish_dir(run_dir) as out:
            (Path(out) / DONE).write_text("{}\n")
    return runs


def is_done(run_dir: str) -> bool:
    return exists(join(run_dir, DONE))


def _run_key(trial) -> str:
    # a schedule is keyed by its run directory: the same on every submission of the same run
    return join(trial.config["exp_dir"], trial.config["cfg"]["arch"])
