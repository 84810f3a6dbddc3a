"""Training runs: one Ray Tune trial per configuration, each running a Ray Train TorchTrainer (DDP).

Layout under <storage>/<name>/:
  <arch>/            Ray Train's run: checkpoint_epochNNN/, plus our metrics.csv, curves.png, tensorboard/,
                     config.json, best.pt (the weights with the lowest top-1 error), best.json
  tune/              Ray Tune's experiment state
Running the same command again (same --storage and --name) resumes every configuration from its latest
checkpoint, schedule included; finished configurations return at once.
"""

from __future__ import annotations

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from vgg_ray import data as vdata
from vgg_ray.config import TrainConfig
from vgg_ray.storage import absolute, join
from vgg_ray.train_loop import train_loop_per_worker
from vgg_ray.tune_schedule import PlateauCallback, board


def connect(num_cpus: int = 8) -> None:
    """Join the cluster when there is one (a submitted job, RAY_ADDRESS, a running head); else start Ray
    locally with more logical CPUs than train workers, so Ray Data's tasks are never starved."""
    if ray.is_initialized():
        return
    try:
        ray.init(address="auto", log_to_driver=True)
    except ConnectionError:
        ray.init(num_cpus=num_cpus)


def _trial(config: dict) -> None:
    cfg = TrainConfig.from_dict(config["cfg"])
    arch_dir = join(config["exp_dir"], cfg.arch)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config["cfg"], "root": config["root"], "run_dir": arch_dir,
                           "key": arch_dir},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=config["use_gpu"]),
        run_config=ray.train.RunConfig(
            name=cfg.arch, storage_path=config["exp_dir"],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # the latest two: the one to resume from, and one more in case the latest is being written
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]),
        datasets={"train": vdata.train_dataset(config["root"], cfg.train_scale_px, cfg.crop_size, cfg.seed)},
    )
    trainer.fit()


def train(cfg: TrainConfig, archs: list[str]) -> dict[str, str]:
    """Train each configuration in `archs` with `cfg`; returns {arch: run directory}."""
    connect()
    root = vdata.resolve_data(cfg.data)
    exp_dir = join(absolute(cfg.storage), cfg.name)
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = bool(gpus) and not cfg.cpu
    if use_gpu and gpus < cfg.workers:
        raise ValueError(f"--workers {cfg.workers}: the cluster has {gpus:g} GPUs (use --cpu to train on CPU)")
    slots = gpus if use_gpu else ray.cluster_resources().get("CPU", 1) // 2  # half the CPUs for Ray Data
    board()  # the driver owns the schedule board; trials and workers find it by name
    space = {
        "cfg": tune.grid_search([cfg.replace(arch=a).to_dict() for a in archs]),
        "root": root, "exp_dir": exp_dir, "use_gpu": use_gpu,
    }
    tuner = tune.Tuner(
        # The trial function only drives a TorchTrainer, whose workers request their own CPUs/GPUs.
        tune.with_resources(_trial, {"cpu": 0}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, int(slots // cfg.workers))),
        run_config=tune.RunConfig(name="tune", storage_path=exp_dir,
                                  callbacks=[PlateauCallback(key_of_trial=_key)], verbose=1),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(archs)} trainings failed; first: {errors[0]}")
    return {a: join(exp_dir, a) for a in archs}


def _key(trial) -> str:
    # a schedule is keyed by its run directory: the same on every submission of the same run
    return join(trial.config["exp_dir"], trial.config["cfg"]["arch"])
