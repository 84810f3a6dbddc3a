"""The Ray Train loop run by every DDP worker: §3.1's SGD on the shards streamed by Ray Data.

Per epoch, on every rank: read the rate decided after the previous epoch (ScheduleBoard), train on this
rank's share of the training stream, validate on this rank's exact slice of the validation set, all-reduce
the counts, and report (rank 0 also writes the checkpoint and the run's outputs). Ray context calls stay
here, at epoch boundaries; nothing Ray-specific runs per step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from vgg_ray import data as vdata
from vgg_ray import metrics as vmetrics
from vgg_ray import perf
from vgg_ray.checkpoints import load_model, model_record, resolve_source, save_atomic
from vgg_ray.config import TrainConfig
from vgg_ray.models import build_vgg, transfer_init
from vgg_ray.schedule import PlateauSchedule
from vgg_ray.storage import publish_dir
from vgg_ray.transforms import colour_shift, to_float_nchw
from vgg_ray.tune_schedule import board

SCHEDULE_TIMEOUT_S = 1800  # the Tune driver decides within seconds; this only turns a lost driver into an error
# "EPOCH:MARKER_FILE" in the driver's environment: one worker process exits after that epoch (once, while
# the marker file does not exist). Fault injection for the restart test; the trainer forwards it.
CRASH_ENV = "VGG_RAY_CRASH_AFTER_EPOCH"


def _load_checkpoint(model, cfg: TrainConfig):
    """(start_epoch, history, schedule, optimizer_state) from Ray Train's latest checkpoint, or None."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        weights = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(weights["model"])
    history = state["history"]
    # The checkpoint was written before the Tune driver saw its epoch: replay that decision here.
    sched = PlateauSchedule.from_state(state["schedule"]).observe(history[-1]["epoch"], history[-1]["top1_acc"])
    return history[-1]["epoch"] + 1, history, sched, state["optimizer"]


def _maybe_crash(spec: str | None, epoch: int, rank: int, world: int) -> None:
    if not spec or rank != world - 1:
        return
    at, marker = spec.split(":", 1)
    if epoch == int(at) and not os.path.exists(marker):
        Path(marker).write_text(f"killed after epoch {epoch}\n")
        os._exit(1)  # a worker process dying without cleanup, as on a lost node


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig.from_dict(config["cfg"])
    root, run_dir, key = config["root"], config["run_dir"], config["key"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if on_gpu:
        perf.configure_backends()  # cuDNN autotuning, TF32
    manifest = vdata.load_manifest(root)

    torch.manual_seed(cfg.seed)
    model = build_vgg(cfg.arch, num_classes=manifest["num_classes"], width=cfg.width, fc_width=cfg.fc_width,
                      crop_size=cfg.crop_size, dropout=cfg.dropout,
                      init=cfg.init if not cfg.init.startswith("from:") else "glorot", init_std=cfg.init_std)
    resumed = _load_checkpoint(model, cfg)
    if resumed is not None:
        start_epoch, history, sched, opt_state = resumed
    else:
        start_epoch, history, opt_state = 0, [], None
        sched = PlateauSchedule(lr=cfg.lr, patience=cfg.plateau_patience, max_decreases=cfg.max_lr_decreases)
        if cfg.init.startswith("from:"):
            source, _ = load_model(resolve_source(cfg.init[len("from:"):], cfg.arch))
            copied = transfer_init(model, source)
            if rank == 0:
                print(f"[{cfg.arch}] initialised {', '.join(copied)} from {cfg.init[5:]} (§3.1)")
    # channels_last before DDP is built: DDP records the parameters' memory layout
    model = perf.prepare_for_speed(model, device)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=perf.ddp_kwargs())
    perf.ddp_comm_hook(model)  # bf16 gradient all-reduce on NCCL; nothing on gloo or one worker
    optimizer = torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    schedule_board = board()
    ray.get(schedule_board.seed.remote(key, sched.state_dict()))

    mean = torch.tensor(manifest["mean_rgb"], device=device)
    eigval = torch.tensor(manifest["eigval"], device=device)
    eigvec = torch.tensor(manifest["eigvec"], device=device)
    train_shard = ray.train.get_dataset_shard("train")
    val_ds = vdata.val_dataset(root, rank, world, cfg.val_scale_px, cfg.crop_size)
    micro = cfg.micro_batch or cfg.per_worker_batch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    for epoch in range(start_epoch, cfg.max_epochs):
        decided = ray.get(schedule_board.after_epoch.remote(key, epoch - 1), timeout=SCHEDULE_TIMEOUT_S)
        if decided["stop"]:
            break
        sched = PlateauSchedule.from_state(decided)
        for group in optimizer.param_groups:
            group["lr"] = sched.lr

        model.train()
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=device), 0  # on the device: no per-step GPU sync
        for batch in train_shard.iter_torch_batches(batch_size=cfg.per_worker_batch, drop_last=True,
                                                    device=device):
            x = colour_shift(to_float_nchw(batch["image"], mean, channels_last=on_gpu), eigval, eigvec,
                             cfg.colour_shift_std, gen)
            y = batch["label"].long()
            chunks = list(zip(x.split(micro), y.split(micro), strict=True))
            optimizer.zero_grad(set_to_none=True)
            for i, (xc, yc) in enumerate(chunks):
                # gradients are all-reduced once per global batch of 256, on the last micro-batch only
                sync = model.no_sync() if i < len(chunks) - 1 and hasattr(model, "no_sync") else contextlib.nullcontext()
                with sync, autocast:
                    loss = F.cross_entropy(model(xc), yc)
                    (loss * (len(yc) / len(y))).backward()
                loss_sum += loss.detach().float() * len(yc)
            optimizer.step()
            seen += len(y)
        train_s = time.perf_counter() - t0

        model.eval()
        c1 = c5 = n_val = 0
        with torch.no_grad(), autocast:
            for batch in val_ds.iter_torch_batches(batch_size=max(micro, 64), device=device):
                logits = model(to_float_nchw(batch["image"], mean, channels_last=on_gpu)).float()
                top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = top5 == batch["label"].long().view(-1, 1)
                c1 += int(hit[:, 0].sum())
                c5 += int(hit.any(dim=1).sum())
                n_val += len(hit)
        loss_sum, seen, c1, c5, n_val = _all_reduce_sum([loss_sum.item(), seen, c1, c5, n_val], device)
        if n_val == 0:
            raise RuntimeError(f"{root}: the validation split is empty")
        row = {"epoch": epoch, "lr": sched.lr, "train_loss": loss_sum / max(seen, 1),
               "top1_err": 100 * (1 - c1 / n_val), "top5_err": 100 * (1 - c5 / n_val),
               "top1_acc": c1 / n_val, "images_per_s": seen / train_s, "epoch_s": time.perf_counter() - t0,
               "n_val": int(n_val), "corrupt_images": vdata.corrupt_images()["count"],
               "started_at_epoch": start_epoch}
        history.append(row)

        checkpoint, tmp = None, None
        if rank == 0:
            tmp = tempfile.mkdtemp(prefix="vgg_ray_ckpt_")
            net = model.module if hasattr(model, "module") else model
            record = model_record(net, cfg.to_dict(), manifest["mean_rgb"], epoch=epoch,
                                  top1_err=row["top1_err"], top5_err=row["top5_err"])
            save_atomic(record, Path(tmp) / "model.pt")
            save_atomic({"optimizer": optimizer.state_dict(), "schedule": sched.state_dict(),
                         "history": history}, Path(tmp) / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            _write_outputs(run_dir, cfg, history, record, key)
            print(f"[{cfg.arch}] epoch {epoch}: lr {sched.lr:.3g} loss {row['train_loss']:.3f} "
                  f"top-1 err {row['top1_err']:.1f}% top-5 err {row['top5_err']:.1f}% "
                  f"({row['images_per_s']:.0f} img/s, {row['epoch_s']:.1f} s)", flush=True)
        ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch{epoch:03d}")
        if tmp is not None:  # Ray Train has copied the checkpoint to storage
            shutil.rmtree(tmp, ignore_errors=True)
        _maybe_crash(config.get("crash"), epoch, rank, world)


def _write_outputs(run_dir: str, cfg: TrainConfig, history: list[dict], record: dict, key: str) -> None:
    """metrics.csv, curves.png, TensorBoard events, config.json and best.pt, into the run directory."""
    with publish_dir(run_dir) as out:
        out = Path(out)
        (out / "config.json").write_text(cfg.to_json())
        vmetrics.write_metrics_csv(out / "metrics.csv", history)
        vmetrics.plot_curves(out / "curves.png", history, title=f"VGG {cfg.arch}, S={cfg.train_scale}")
        vmetrics.log_tensorboard(out / "tensorboard", history[-1])
        if history[-1]["top1_err"] <= min(r["top1_err"] for r in history):
            save_atomic(record, out / "best.pt")
            (out / "best.json").write_text(json.dumps({k: history[-1][k] for k in ("epoch", "top1_err",
                                                                                  "top5_err")}))
