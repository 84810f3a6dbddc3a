"""The Ray Train loop run by every DDP worker: §3.1's SGD on the shards streamed by Ray Data.

Per epoch, on every rank: read the rate decided after the previous epoch (the schedule board), train on
this rank's share of the training stream, validate on this rank's exact slice of the validation set,
all-reduce the counts, and report (rank 0 also writes the checkpoint and the run's outputs). The step
itself is vgg_ray.engine's; Ray context calls stay here, at epoch boundaries.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.experimental.tqdm_ray import tqdm as tqdm_ray

from vgg_ray import metrics as vmetrics
from vgg_ray import perf
from vgg_ray.checkpoints import init_from_source, model_record, save_atomic
from vgg_ray.config import TrainConfig
from vgg_ray.device_decode import decode_batch
from vgg_ray.distributed import data as vdata
from vgg_ray.distributed.schedule_board import board
from vgg_ray.engine import TrainStep, build_model, build_optimizer, validation_counts
from vgg_ray.imagenet.shards import load_manifest
from vgg_ray.schedule import PlateauSchedule
from vgg_ray.storage import publish_dir

PROGRESS_S = 30  # seconds between progress lines of an epoch in the job's log
SCHEDULE_TIMEOUT_S = 1800  # the Tune driver decides within seconds; this only turns a lost driver into an error


@dataclass
class Rank:
    """What one training rank (one DDP process of the worker group) holds across epochs."""
    cfg: TrainConfig
    rank: int
    world: int  # this worker group's size: --workers N, or where an elastic run stands now
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    step: TrainStep
    manifest: dict
    run_dir: str
    run_key: str  # the run's key on the schedule board
    board: ray.actor.ActorHandle
    val: ray.data.Dataset  # this rank's exact slice of the val split
    on_device: bool  # --decode gpu: the train stream carries JPEG bytes, decoded here
    history: list[dict]
    start_epoch: int


def train_loop_per_worker(config: dict) -> None:
    me = setup(config)
    for epoch in range(me.start_epoch, me.cfg.max_epochs):
        sched = PlateauSchedule.from_state(ray.get(me.board.after_epoch.remote(me.run_key, epoch - 1),
                                                   timeout=SCHEDULE_TIMEOUT_S))
        record_decision(me, sched, write=sched.stop)
        if sched.stop:
            break
        t0 = time.perf_counter()
        loss_sum, seen, undecodable_train = train_epoch(me, epoch, sched.lr)
        train_s = time.perf_counter() - t0
        c1, c5, n_val, undecodable_val = validate(me)
        loss_sum, seen, undecodable, c1, c5, n_val = all_reduce_sum(
            [loss_sum, seen, undecodable_train + undecodable_val, c1, c5, n_val], me.device)
        if n_val == 0:
            raise RuntimeError(f"{config['root']}: the validation split is empty")
        row = {"epoch": epoch, "lr": sched.lr, "train_loss": loss_sum / max(seen, 1),
               "top1_err": 100 * (1 - c1 / n_val), "top5_err": 100 * (1 - c5 / n_val), "top1_acc": c1 / n_val,
               "images_per_s": seen / train_s, "epoch_s": time.perf_counter() - t0, "n_val": int(n_val),
               "undecodable": int(undecodable), "started_at_epoch": me.start_epoch, "world_size": me.world}
        me.history.append(row)
        checkpoint_and_report(me, epoch, row, sched)
    else:  # ran to --max-epochs: the decision on the last epoch still goes into metrics.csv
        if me.history:
            last = ray.get(me.board.after_epoch.remote(me.run_key, me.history[-1]["epoch"]),
                           timeout=SCHEDULE_TIMEOUT_S)
            record_decision(me, PlateauSchedule.from_state(last), write=True)


def record_decision(me: Rank, sched: PlateauSchedule, write: bool) -> None:
    """The Tune callback's decision on the last epoch (improved, waiting, rate divided, stop) into that
    epoch's row of metrics.csv and, on rank 0, the job's log; the row is written out with the next epoch's,
    or now (`write`) when the run ends."""
    d = sched.decision
    if d is None or not me.history or d["epoch"] != me.history[-1]["epoch"] or "decision" in me.history[-1]:
        return
    me.history[-1]["decision"] = d["why"]
    if me.rank == 0:
        print(f"[{me.cfg.arch}] {sched.describe()}", flush=True)
        if write:
            write_outputs(me.run_dir, me.cfg, me.history, None)


def setup(config: dict) -> Rank:
    """The model (resumed from Ray Train's latest checkpoint, or initialised as §3.1 says), DDP, the
    optimizer, the step, and the schedule the run continues from, seeded on the board."""
    cfg = TrainConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        perf.configure_backends()  # cuDNN autotuning, TF32
    manifest = load_manifest(config["root"])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, manifest["num_classes"])
    resumed = load_checkpoint(model)
    if resumed is not None:
        start_epoch, history, sched, opt_state = resumed
    else:
        start_epoch, history, opt_state = 0, [], None
        n_val = manifest["counts"]["val"]
        sched = PlateauSchedule.from_config(cfg, n_val)
        if rank == 0:
            print(f"[{cfg.arch}] lr {sched.lr:g}; plateau threshold {sched.threshold:.4f} top-1 accuracy ("
                  + ("--plateau-threshold" if cfg.plateau_threshold is not None
                     else f"one standard error of top-1 on {n_val} validation images") + ")", flush=True)
        if cfg.init.startswith("from:"):
            done = init_from_source(model, cfg.init[len("from:"):])
            if rank == 0:
                print(f"[{cfg.arch}] initialised {', '.join(done['copied'])} from {done['source']} (§3.1)"
                      + (f"; drew {', '.join(done['reinitialised'])} as the source's own were: {done['scheme']}"
                         + (f", std {done['std']:g}" if done["scheme"] == "gaussian" else "")
                         if done["reinitialised"] else ""), flush=True)
    # channels_last before DDP is built: DDP records the parameters' memory layout
    model = perf.prepare_for_speed(model, device)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=perf.ddp_kwargs())
    # --grad-allreduce bf16: torch's compression hook on NCCL; nothing on gloo or one worker
    perf.ddp_comm_hook(model, kind="bf16" if cfg.grad_allreduce == "bf16" else "none")
    optimizer = build_optimizer(model, cfg.replace(lr=sched.lr))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    step = TrainStep(model, optimizer, manifest, device, micro=cfg.micro, colour_shift_std=cfg.colour_shift_std,
                     seed=cfg.seed, rank=rank, share_fraction=cfg.share(rank, world) * world / cfg.batch_size)
    schedule_board = board(config["board"])
    ray.get(schedule_board.seed.remote(config["run_key"], sched.state_dict()))
    val = vdata.val_dataset(config["root"], rank, world, cfg.val_scale_px, cfg.crop_size)
    if rank == 0 and cfg.min_workers != cfg.max_workers:
        print(f"[{cfg.arch}] {world} workers (elastic {cfg.min_workers}-{cfg.max_workers}), from epoch "
              f"{start_epoch}: shares of the {cfg.batch_size}-image batch "
              f"{', '.join(str(cfg.share(r, world)) for r in range(world))}", flush=True)
    return Rank(cfg, rank, world, device, model, optimizer, step, manifest, config["run_dir"], config["run_key"],
                  schedule_board, val, config["decode_on_device"], history, start_epoch)


def load_checkpoint(model) -> tuple[int, list[dict], PlateauSchedule, dict] | None:
    """(start epoch, history, schedule, optimizer state) from Ray Train's latest checkpoint, or None."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        weights = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(weights["model"])
    history = [vmetrics.current_names(r) for r in state["history"]]  # a checkpoint from before a rename
    # The checkpoint was written before the Tune driver saw its epoch: replay that decision here.
    sched = PlateauSchedule.from_state(state["schedule"]).observe(history[-1]["epoch"], history[-1]["top1_acc"])
    return history[-1]["epoch"] + 1, history, sched, state["optimizer"]


def train_epoch(me: Rank, epoch: int, lr: float) -> tuple[float, int, int]:
    """One pass over this rank's share of the training stream: (summed loss, images, undecodable images).
    Rank 0 shows the epoch's progress in the job's log (global images, images/s, ETA)."""
    for group in me.optimizer.param_groups:
        group["lr"] = lr
    me.step.start_epoch(epoch)  # this rank's dropout masks and colour shifts for this epoch, restart or not
    me.model.train()
    steps = me.cfg.steps_per_epoch(me.manifest["counts"]["train"], me.world)
    bar = (tqdm_ray(total=steps * me.cfg.batch_size, desc=f"[{me.cfg.arch}] epoch {epoch}", unit="img",
                    flush_interval_s=PROGRESS_S) if me.rank == 0 else None)
    loss_sum = torch.zeros((), device=me.device)  # on the device: no per-step GPU sync
    seen = undecodable = torch.zeros((), dtype=torch.long, device=me.device)
    for i, batch in enumerate(batches(me)):
        if i >= steps:  # a smaller share leaves a few images over: the ranks step together
            continue  # (the stream is read to its end, so the next epoch starts cleanly)
        loss_sum += me.step(batch["image"], batch["label"], batch["decoded"])
        seen = seen + batch["decoded"].sum()
        undecodable = undecodable + (~batch["decoded"]).sum()
        if bar is not None:
            bar.update(me.cfg.batch_size)
    if bar is not None:
        bar.close()
    return loss_sum.item(), int(seen), int(undecodable)


def batches(me: Rank):
    """This rank's training batches as uint8 images, labels and `decoded` on the device: decoded by Ray
    Data's CPU tasks, or (--decode gpu) from JPEG bytes and windows here, on the device
    (vgg_ray.device_decode)."""
    shard = ray.train.get_dataset_shard("train")
    share = me.cfg.share(me.rank, me.world)
    if not me.on_device:
        yield from shard.iter_torch_batches(batch_size=share, drop_last=True, device=me.device)
        return
    for b in shard.iter_batches(batch_size=share, drop_last=True, batch_format="numpy"):
        yield decode_batch(b, me.cfg.crop_size, me.device)


def validate(me: Rank) -> tuple[int, int, int, int]:
    """(top-1 hits, top-5 hits, images, undecodable images) on this rank's slice of the val split."""
    me.model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=me.device)
    undecodable = torch.zeros((), dtype=torch.long, device=me.device)
    for batch in me.val.iter_torch_batches(batch_size=max(me.cfg.micro, 64), device=me.device):
        # fp32 logits (no autocast): the plateau rule decides on top-1 counts that bf16 could tip
        counts += validation_counts(me.model, batch["image"], batch["label"], me.step.mean, batch["decoded"],
                                    amp=False)
        undecodable += (~batch["decoded"]).sum()
    c1, c5, n = counts.tolist()
    return int(c1), int(c5), int(n), int(undecodable)


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def checkpoint_and_report(me: Rank, epoch: int, row: dict, sched: PlateauSchedule) -> None:
    """Rank 0 writes the checkpoint (weights, optimizer, schedule, history) and the run's outputs; every
    rank reports (ray.train.report is a barrier)."""
    checkpoint, tmp = None, None
    if me.rank == 0:
        tmp = tempfile.mkdtemp(prefix="vgg_ray_ckpt_")
        net = me.model.module if hasattr(me.model, "module") else me.model
        record = model_record(net, me.cfg.to_dict(), me.manifest["mean_rgb"], epoch=epoch,
                              top1_err=row["top1_err"], top5_err=row["top5_err"])
        save_atomic(record, Path(tmp) / "model.pt")
        save_atomic({"optimizer": me.optimizer.state_dict(), "schedule": sched.state_dict(),
                     "history": me.history}, Path(tmp) / "state.pt")
        checkpoint = ray.train.Checkpoint.from_directory(tmp)
        write_outputs(me.run_dir, me.cfg, me.history, record)
    ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch{epoch:03d}")
    if tmp is not None:  # Ray Train has copied the checkpoint to storage: the epoch's line says it is saved
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"[{me.cfg.arch}] epoch {epoch}: lr {sched.lr:.3g} loss {row['train_loss']:.3f} "
              f"top-1 err {row['top1_err']:.1f}% top-5 err {row['top5_err']:.1f}% "
              f"({row['images_per_s']:.0f} img/s, {row['epoch_s']:.1f} s"
              + (f", {row['undecodable']} undecodable images skipped" if row["undecodable"] else "")
              + "); checkpoint saved", flush=True)


def write_outputs(run_dir: str, cfg: TrainConfig, history: list[dict], record: dict | None) -> None:
    """metrics.csv, curves.png, TensorBoard events, config.json and best.pt (when `record` is the best
    epoch's), into the run directory."""
    with publish_dir(run_dir) as out:
        out = Path(out)
        if not (out / "config.json").is_file():  # once per process: unchanged files are not uploaded again
            (out / "config.json").write_text(cfg.to_json())
        vmetrics.write_metrics_csv(out / "metrics.csv", history)
        vmetrics.plot_curves(out / "curves.png", history, title=f"VGG {cfg.arch}, S={cfg.train_scale}")
        if record is None:
            return
        vmetrics.log_tensorboard(out / "tensorboard", history[-1])
        if history[-1]["top1_err"] <= min(r["top1_err"] for r in history):
            save_atomic(record, out / "best.pt")
            (out / "best.json").write_text(json.dumps({k: history[-1][k] for k in ("epoch", "top1_err",
                                                                                  "top5_err")}))
