"""Training images/s of VGG: synthetic data on the device, our Ray Data pipeline, and a plain PyTorch peer.

    python -m bench.bench_train --preset smoke --data demo                         # CPU, under a minute
    python -m bench.bench_train --preset paper --data photos --project-scaling --out auto           # a GPU
    python -m bench.bench_train --preset paper --data photos --paths synthetic --ablate --out auto  # a GPU

Every path runs the same training step (vgg_ray.engine.TrainStep, the train loop's step: uint8 NHWC batch
-> mean subtraction and §3.1 colour shift on the device -> bf16 autocast forward/backward on CUDA, in
micro-batches summing to the batch -> SGD); the paths differ in what feeds it (listed at the end).
Images/s are per device, over --steps after --warmup steps (the first step, timed alone, includes cuDNN's
autotuning). `--data photos` builds ImageNet-sized JPEGs (300-500 px, ~60 KB) so that decoding costs about
what it would on ImageNet; the demo's smaller images decode faster (bench/README.md gives the rates). A
path that cannot run here is named, with its reason, under "errors" and the other paths still run. Prints
a table, then one JSON line (bench/README.md says what each figure means).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bench import perf as bench_perf
from bench.common import peer_transform, resolve, result_path, sync, write_images
from vgg_ray import perf, transforms
from vgg_ray.config import PRESETS, TrainConfig
from vgg_ray.engine import TrainStep, build_model
from vgg_ray.imagenet import shards
from vgg_ray.models import ARCHS, forward_macs


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, epilog=paths_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="D,E", help="comma list of Table 1 configurations")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="paper (224 crops, batch 256) or smoke (tiny); default paper on CUDA, else smoke")
    p.add_argument("--data", default="demo", help="shards folder/URI, demo, or photos (ImageNet-sized JPEGs)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)} (see below)")
    p.add_argument("--gpus", type=int, default=max(1, torch.cuda.device_count()),
                   help="ranks of the peer's DDP loop (and the devices the global batch is split over)")
    p.add_argument("--batch", type=int, default=None, help="global batch, images (default: the preset's)")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="images per forward pass; 0: the largest power-of-two share of the batch that fits")
    p.add_argument("--steps", type=int, default=None, help="timed steps per path (paper 30, smoke 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, the first included (3)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in every path")
    p.add_argument("--ablate", action="store_true",
                   help="synthetic images/s with the speed settings added one at a time")
    p.add_argument("--project-scaling", action="store_true", help="project 4- and 8-GPU speed-up")
    p.add_argument("--allreduce-world", type=int, default=None,
                   help="processes for the measured all-reduce (default --gpus; 1: formula only)")
    p.add_argument("--procs", type=int, default=cpus,
                   help="CPU processes for each input pipeline: Ray's CPUs, the peer's loader workers in all")
    p.add_argument("--prefetch", type=int, default=4, help="batches Ray Data prepares ahead")
    p.add_argument("--peer-images", type=int, default=10_000, help="images written out for the peer")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU runs: torch threads per training process (1: OpenMP threads spin badly on a "
                        "busy machine, the input pipeline needs cores too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="write the JSON to this file, or to DIR/<date>-<device>.json for a DIR/ (auto: bench/results/)")
    return p.parse_args(argv)


# ---- what a run shares, built once ----

@dataclass
class Bench:
    args: argparse.Namespace
    device: torch.device
    name: str  # torch.cuda.get_device_name(), or "cpu"
    preset: str
    cfgs: dict[str, TrainConfig]  # by arch, in --arch order
    paths: list[str]  # of PATHS, in its order
    steps: int
    warmup: int
    root: str  # the shards --data resolved to
    stats: dict  # the manifest's mean_rgb, eigval, eigvec: the step's mean subtraction and colour shift
    classes: int
    settings: dict  # the backend settings in force, for the record
    peak: bench_perf.Peak | None
    matmul: float  # FLOP/s of a matmul measured in this run
    out: Path | None
    work: Path | None = None  # a temporary folder while paths run (the peer's ImageFolder)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def synthetic(self, cfg: TrainConfig, batch: int | None = None):
        return synthetic_batches(batch or cfg.per_worker_batch, cfg.crop_size, self.classes, self.device, cfg.seed)

    def timed(self, step, batches) -> dict:
        return timed(step, batches, self.warmup, self.steps, self.device)


def setup(args: argparse.Namespace) -> Bench:
    """Check the flags (one line naming the flag on error), resolve the data, set the backends, and measure
    the matmul rate MFU is also reported against."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    preset = args.preset or ("paper" if on_gpu else "smoke")
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    paths = {p.strip() for p in args.paths.split(",") if p.strip()}
    if not archs or any(a not in ARCHS for a in archs):
        raise SystemExit(f"--arch {args.arch!r}: expected a comma list of {', '.join(ARCHS)}")
    if not paths or not paths <= set(PATHS):
        raise SystemExit(f"--paths {args.paths!r}: expected a comma list of {', '.join(PATHS)}")
    if on_gpu and args.gpus > torch.cuda.device_count():
        raise SystemExit(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} GPUs")
    try:
        cfgs = {a: TrainConfig.from_preset(preset, arch=a, data=args.data, workers=args.gpus, seed=args.seed,
                                           micro_batch=args.micro_batch,
                                           **({"batch_size": args.batch} if args.batch else {}))
                for a in archs}
    except ValueError as e:
        raise SystemExit(str(e)) from None
    name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    out = result_path(args.out, f"{datetime.date.today().isoformat()}-{name}")
    root = resolve(args.data)
    manifest = shards.load_manifest(root)
    if not on_gpu:
        torch.set_num_threads(args.threads)
    return Bench(
        args=args, device=device, name=name, preset=preset, cfgs=cfgs, paths=[p for p in PATHS if p in paths],
        steps=args.steps or (30 if preset == "paper" else 8), warmup=args.warmup or 3, root=root,
        stats={k: manifest[k] for k in ("mean_rgb", "eigval", "eigvec")},
        classes=1000 if preset == "paper" else manifest["num_classes"],  # the paper's fc8, whatever the data
        settings=perf.configure_backends() if on_gpu else {"threads": args.threads},
        peak=bench_perf.bf16_peak(name) if on_gpu else None,
        matmul=(bench_perf.measure_matmul_flops(device) if on_gpu
                else bench_perf.measure_matmul_flops(device, torch.float32, n=1024, repeat=3)),
        out=out)


def header(b: Bench) -> dict:
    first = next(iter(b.cfgs.values()))
    peak = b.peak
    return {"bench": "train", "date": datetime.date.today().isoformat(), "device": b.name, "gpus": b.args.gpus,
            "torch": torch.__version__, "preset": b.preset, "data": b.args.data, "classes": b.classes,
            "batch": first.batch_size, "per_device_batch": first.per_worker_batch, "crop": first.crop_size,
            "train_scale_px": list(first.train_scale_px), "steps": b.steps, "warmup": b.warmup,
            "compile": b.args.compile, "settings": b.settings,
            "peak": {"name": peak.name if peak else None, "spec_flops": peak.spec if peak else None,
                     "table_matmul_flops": peak.measured if peak else None, "matmul_flops": b.matmul,
                     "matmul_dtype": "bfloat16 8192^3" if b.on_gpu else "float32 1024^3"},
            "ray_path": "driver process, one device, iter_torch_batches (no Ray Train, no DDP)",
            "peer_path": f"{b.args.gpus} DDP rank(s), DataLoader + ImageFolder, DDP defaults",
            "decode_img_s_per_core": decode_rate(b.root, first), "results": [], "ratios": {}}


# ---- the step every path runs, and the model it trains ----

@dataclass
class Model:
    arch: str
    cfg: TrainConfig
    net: nn.Module  # compiled under --compile
    step: TrainStep
    micro: int  # images per forward pass
    macs: int  # forward multiply-accumulates per image
    first_step_s: float | None  # the micro-batch search's first step (cuDNN's autotuning), on CUDA
    compile_s: float | None


def build(b: Bench, arch: str, cfg: TrainConfig, *, amp: bool = True, channels_last: bool = True,
          compiled: bool = False) -> Model:
    """The model and its step at the given speed settings (amp and channels_last apply on CUDA only)."""
    amp, cl = amp and b.on_gpu, channels_last and b.on_gpu
    net = new_model(cfg, b.classes, b.device, channels_last=cl)
    macs = forward_macs(net, cfg.crop_size)
    micro, first_step_s = fit_micro_batch(b, cfg, net, amp, cl)
    compile_s = None
    if compiled:
        net = maybe_compile(net, micro, cfg, b.device, amp, cl)
        compile_s = net.compile_s
    step = make_step(net, cfg, b.stats, b.device, micro, amp=amp, channels_last=cl)
    return Model(arch, cfg, net, step, micro, macs, first_step_s, compile_s)


def make_step(model, cfg: TrainConfig, stats: dict, device: torch.device, micro: int, *, amp: bool,
              channels_last: bool) -> TrainStep:
    """vgg_ray.engine's step, as the train loop runs it, at lr 0: SGD still computes momentum, weight decay
    and the update (torch has no shortcut for 0), but random data cannot drive the weights to inf/NaN
    over hundreds of steps; speed ignores values."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return TrainStep(model, opt, stats, device, micro=micro, colour_shift_std=cfg.colour_shift_std,
                     seed=cfg.seed, amp=amp, channels_last=channels_last)


def timed(step, batches, warmup: int, steps: int, device: torch.device) -> dict:
    """Run warmup + steps steps from the `batches` iterator; figures of the timed ones (see module doc)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    x, y = next(batches)
    first_batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step(x, y)
    sync(device)
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step(*next(batches))
    sync(device)
    t0, n, loss = time.perf_counter(), 0, 0.0
    for _ in range(steps):
        x, y = next(batches)
        loss = loss + step(x, y)
        n += len(y)
    sync(device)
    elapsed = time.perf_counter() - t0
    loss = float(loss) / n
    if not np.isfinite(loss):
        bad = "" if torch.isfinite(x.float()).all() else " (non-finite input)"
        raise FloatingPointError(f"training loss {loss} after {warmup + steps} steps{bad}: the step is broken; "
                                 f"last batch {tuple(x.shape)} {x.dtype} min {x.min().item()} max {x.max().item()}, "
                                 f"labels {y.min().item()}-{y.max().item()}")
    return {"images_per_s": n / elapsed, "step_s": elapsed / steps, "first_step_s": first_step_s,
            "first_batch_s": first_batch_s, "images": n, "loss": loss,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def new_model(cfg: TrainConfig, classes: int, device: torch.device, channels_last: bool = True):
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, classes)
    return perf.prepare_for_speed(net, device, channels_last=channels_last)


def maybe_compile(model, micro: int, cfg: TrainConfig, device: torch.device, amp: bool, channels_last: bool):
    example = torch.randn(micro, 3, cfg.crop_size, cfg.crop_size, device=device)
    if channels_last and device.type == "cuda":
        example = example.contiguous(memory_format=torch.channels_last)
    return perf.compile_model(model, example, torch.bfloat16 if amp else None)


def fit_micro_batch(b: Bench, cfg: TrainConfig, net: nn.Module, amp: bool, cl: bool) -> tuple[int, float | None]:
    """(micro-batch, seconds of the first step that fitted): --micro-batch if given (no step run), else the
    largest power-of-two share of the per-device batch whose step fits in GPU memory. That first step of
    the model pays for cuDNN's autotuning, so its time is the path's first-step time."""
    batch = cfg.per_worker_batch
    if b.args.micro_batch or not b.on_gpu:
        return b.args.micro_batch or batch, None
    micro = batch
    x, y = next(b.synthetic(cfg))
    while True:
        try:
            t0 = time.perf_counter()
            make_step(net, cfg, b.stats, b.device, micro, amp=amp, channels_last=cl)(x, y)
            sync(b.device)
            return micro, time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError:
            if micro == 1 or micro % 2:
                raise
            micro //= 2
        finally:
            for p in net.parameters():
                p.grad = None
            torch.cuda.empty_cache()


# ---- the paths: what feeds the step ----

def synthetic_batches(batch: int, crop: int, classes: int, device: torch.device, seed: int, pool: int = 2):
    """Random uint8 batches made once on the device and cycled (random, not zeros: zeros run faster)."""
    g = torch.Generator().manual_seed(seed)
    made = [(torch.randint(0, 256, (batch, crop, crop, 3), dtype=torch.uint8, generator=g).to(device),
             torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(pool)]
    return itertools.cycle(made)


def ray_batches(b: Bench, cfg: TrainConfig, on_device: bool):
    from vgg_ray.device_decode import decode_batch
    from vgg_ray.distributed import data

    _start_ray(b.args.procs)
    batch = cfg.per_worker_batch
    ds = data.train_dataset(b.root, cfg.train_scale_px, cfg.crop_size, cfg.seed, on_device=on_device)
    while True:  # one pass per epoch: Ray Data re-executes the pipeline, as in training
        if on_device:  # as vgg_ray.distributed.train_loop.batches does with --decode gpu
            for d in ds.iter_batches(batch_size=batch, drop_last=True, batch_format="numpy",
                                     prefetch_batches=b.args.prefetch):
                d = decode_batch(d, cfg.crop_size, b.device)
                yield d["image"], d["label"]
            continue
        for d in ds.iter_torch_batches(batch_size=batch, drop_last=True, device=str(b.device),
                                       prefetch_batches=b.args.prefetch, pin_memory=b.on_gpu):
            yield d["image"], d["label"]


def _start_ray(cpus: int) -> None:
    # The Ray started here is left to Ray's exit handler: shut down while a Ray Data prefetch thread of a
    # closed iterator still runs, Ray ends the process with exit status 1. Hence too the figures are
    # printed before the process exits.
    import ray

    if ray.is_initialized():
        return
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_synthetic(b: Bench, m: Model) -> dict:
    res = b.timed(m.step, b.synthetic(m.cfg))
    return {**res, "first_step_s": m.first_step_s or res["first_step_s"], "compile_s": m.compile_s}


def run_ray(b: Bench, m: Model, on_device: bool = False) -> dict:
    batches = ray_batches(b, m.cfg, on_device)
    try:
        return b.timed(m.step, batches)
    finally:
        batches.close()


def run_peer(b: Bench, m: Model) -> dict:
    images = b.work / "images"
    if not images.is_dir():  # once per run, untimed; renamed when whole, so a failed write is not reused
        write_images(b.root, b.work / "partial", b.args.peer_images)
        (b.work / "partial").rename(images)
    job = {"cfg": m.cfg.to_dict(), "classes": b.classes, "stats": b.stats, "micro": m.micro,
           "batch": m.cfg.per_worker_batch, "compile": b.args.compile, "images": str(images),
           "warmup": b.warmup, "steps": b.steps, "loader_workers": max(1, b.args.procs // b.args.gpus),
           "threads": b.args.threads}
    return spawn(_peer_rank, b.args.gpus, job)


class Source(NamedTuple):
    run: Callable[[Bench, Model], dict]  # the timed figures of `timed`
    variant: str  # the row's variant in the JSON; ratios() compares the rows of these
    ranks: bool  # the row's devices: --gpus DDP ranks, else the one device of this process
    doc: str  # --help's and bench/README.md's description (tests/bench check that the README has it)


PATHS: dict[str, Source] = {  # run in this order
    "synthetic": Source(run_synthetic, "default", False,
                        "random uint8 batches already on the device. This is the model's ceiling."),
    "peer": Source(run_peer, "DDP+DataLoader", True,
                   "a plain PyTorch loop, which is what most users would write: `--gpus` DDP ranks started "
                   "with `torch.multiprocessing` (NCCL on GPU, gloo on CPU). Each rank reads through a "
                   "`DataLoader` over a torchvision `ImageFolder` that holds the same images as JPEG files, "
                   "decoded by its default (Pillow) loader and transformed by `transforms.v2` Resize(S), "
                   "RandomCrop, RandomHorizontalFlip, as users write it (`bench.common.peer_transform`). DDP "
                   "runs with its default settings."),
    "ray": Source(run_ray, "Ray Data", False,
                  "`vgg_ray.distributed.data.train_dataset(...).iter_torch_batches`, read in the driver process "
                  "on one device. It does not use Ray Train: the step is the same as in the train loop, and one "
                  "worker would add nothing per step."),
    "ray-gpu": Source(lambda b, m: run_ray(b, m, on_device=True), "Ray Data, decode on device", False,
                      "the `ray` path as the train loop runs it with `--decode gpu`: Ray Data carries the JPEG "
                      "bytes and each image's window, and the batch is decoded and rendered on the device "
                      "(`vgg_ray.device_decode`). On a CPU it decodes there."),
}


def paths_help() -> str:
    return "paths (--paths; run in this order):\n" + "\n".join(
        textwrap.fill(s.doc.replace("`", ""), 100, initial_indent=f"  {name:<11}", subsequent_indent=" " * 13)
        for name, s in PATHS.items())


def paths_table() -> str:
    """bench/README.md's table of the paths, as markdown."""
    return "\n".join(["| path | what feeds the step |", "|---|---|",
                      *(f"| `{name}` | {s.doc} |" for name, s in PATHS.items())])


# ---- the plain PyTorch peer, and the measured all-reduce, in spawned processes ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_rank(rank: int, world: int, port: int) -> torch.device:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return torch.device("cuda", rank) if cuda else torch.device("cpu")


def _peer_rank(rank: int, world: int, port: int, job: dict, results) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.datasets import ImageFolder

    device = _init_rank(rank, world, port)
    try:
        cfg = TrainConfig.from_dict(job["cfg"])
        on_gpu = device.type == "cuda"
        if on_gpu:
            perf.configure_backends()
        else:
            torch.set_num_threads(max(1, job["threads"]))
        model = new_model(cfg, job["classes"], device)
        if job["compile"]:
            model = maybe_compile(model, job["micro"], cfg, device, on_gpu, on_gpu)
        ddp = DDP(model, device_ids=[rank] if on_gpu else None)  # DDP's defaults: what a user writes
        ds = ImageFolder(job["images"], transform=peer_transform(cfg.train_scale_px, cfg.crop_size))
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
        workers = job["loader_workers"]
        dl = DataLoader(ds, batch_size=job["batch"], sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=on_gpu, persistent_workers=workers > 0)

        def batches():
            for epoch in itertools.count():
                sampler.set_epoch(epoch)
                for x, y in dl:  # uint8 CHW from torchvision; the step takes NHWC
                    yield x.to(device, non_blocking=True).permute(0, 2, 3, 1), y.to(device, non_blocking=True)

        step = make_step(ddp, cfg, job["stats"], device, job["micro"], amp=on_gpu, channels_last=on_gpu)
        out = timed(step, batches(), job["warmup"], job["steps"], device)
        if rank == 0:
            results.put(out)
    finally:
        dist.destroy_process_group()


def _allreduce_rank(rank: int, world: int, port: int, nbytes: int, repeat: int, results) -> None:
    device = _init_rank(rank, world, port)
    try:
        seconds = perf.time_allreduce(nbytes, device, repeat)
        if rank == 0:
            results.put(seconds)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args):
    """Run fn(rank, world, port, *args, results) in `world` fresh processes; rank 0's one result."""
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(fn, args=(world, _free_port(), *args, results), nprocs=world, join=True)
    return results.get()


def measure_allreduce(nbytes: int, world: int, repeat: int = 5) -> dict:
    """A real all-reduce of `nbytes` of fp32 over `world` processes (NCCL on GPUs, gloo on CPUs)."""
    s = spawn(_allreduce_rank, world, nbytes, repeat)
    return {"world": world, "backend": "nccl" if torch.cuda.is_available() else "gloo", "bytes": nbytes,
            "seconds": s, "busbw": perf.busbw(nbytes, world, s)}


def decode_rate(root: str, cfg: TrainConfig, n: int = 64) -> float:
    """Images/s of the CPU transform (decode, rescale, crop, flip) on one core, this process."""
    t = shards.read_rows(root, "train", 0, min(n, shards.split_rows(root, "train")), ["image"])
    images = t.column("image").to_pylist()
    rng = np.random.default_rng(0)
    transforms.train_sample(images[0], cfg.train_scale_px, cfg.crop_size, rng)
    t0 = time.perf_counter()
    for b in images:
        transforms.train_sample(b, cfg.train_scale_px, cfg.crop_size, rng)
    return len(images) / (time.perf_counter() - t0)


# ---- main ----

def main(argv: list[str] | None = None) -> dict:
    b = setup(parse(argv))
    result = header(b)
    with tempfile.TemporaryDirectory(prefix="bench_train_", ignore_cleanup_errors=True) as work:
        b.work = Path(work)
        for arch, cfg in b.cfgs.items():
            m = build(b, arch, cfg, compiled=b.args.compile)
            for path in b.paths:
                run_path(b, m, path, result)
            if b.args.ablate:
                result["results"] += ablate(b, arch, cfg)
            if b.args.project_scaling:
                result.setdefault("scaling", {})[arch] = scaling(b, m)
            del m
            if b.on_gpu:
                torch.cuda.empty_cache()
            result["ratios"][arch] = ratios(result["results"], arch)
    print_table(result)
    if b.out:
        b.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {b.out}")
    print(json.dumps(result), flush=True)
    return result


def run_path(b: Bench, m: Model, path: str, result: dict) -> None:
    """One path's row in result["results"]; or, for a path that cannot run here (no Ray, no memory, a
    non-finite loss, a failed rank), "<arch> <path>: <reason>" in result["errors"], and the next path runs."""
    source = PATHS[path]
    try:
        res = source.run(b, m)
    except Exception as e:  # every path alike: the reason goes in the JSON
        reason = f"{m.arch} {path}: {type(e).__name__}: {e}"
        result.setdefault("errors", []).append(reason)
        print(reason, flush=True)
        return
    result["results"].append(row(b, m, path, source.variant, res, devices=b.args.gpus if source.ranks else 1))


def row(b: Bench, m: Model, path: str, variant: str, res: dict, devices: int = 1) -> dict:
    ips = res["images_per_s"]
    return {"arch": m.arch, "path": path, "variant": variant, "devices": devices, "batch": m.cfg.per_worker_batch,
            "micro_batch": m.micro, "compile_s": None, **res,
            "mfu": bench_perf.mfu(ips, m.macs, b.peak.spec) if b.peak else None,
            "mfu_vs_matmul": bench_perf.mfu(ips, m.macs, b.matmul)}


# (variant, bf16 autocast, channels_last, TF32 + cudnn.benchmark, torch.compile); each row keeps the ones above
LADDER = [("fp32, NCHW, no autotuning", False, False, False, False),
          ("+ TF32, cudnn.benchmark", False, False, True, False),
          ("+ bf16 autocast", True, False, True, False),
          ("+ channels_last", True, True, True, False),
          ("+ torch.compile", True, True, True, True)]


def ablate(b: Bench, arch: str, cfg: TrainConfig) -> list[dict]:
    """Synthetic images/s as the speed settings are added one at a time."""
    ladder = LADDER if b.on_gpu else LADDER[:-1]  # inductor on CPUs compiles C++ for minutes
    rows = []
    try:
        for variant, amp, cl, fast, compiled in ladder:
            if b.on_gpu:
                perf.configure_backends(cudnn_benchmark=fast, tf32=fast)
            m = build(b, arch, cfg, amp=amp, channels_last=cl, compiled=compiled)
            res = {**b.timed(m.step, b.synthetic(cfg)), "compile_s": m.compile_s}
            rows.append(row(b, m, "synthetic", variant, res))
            del m
    finally:
        if b.on_gpu:
            perf.configure_backends()
            torch.cuda.empty_cache()
    return rows


def scaling(b: Bench, m: Model) -> dict:
    """Step times on this device at the per-device batches of 1, 4 and 8 GPUs sharing the global batch,
    the all-reduce (measured when --allreduce-world >= 2), and the projection (bench.perf)."""
    net, cfg = getattr(m.net, "_orig_mod", m.net), m.cfg
    step_s = {}
    for n in (1, 4, 8):
        batch = max(1, cfg.batch_size // n)
        step = make_step(m.net, cfg, b.stats, b.device, min(m.micro, batch), amp=b.on_gpu, channels_last=b.on_gpu)
        step_s[n] = b.timed(step, b.synthetic(cfg, batch))["step_s"]
    grads = bench_perf.gradient_bytes(net)
    tail = bench_perf.tail_bytes(net)
    busbw = dict(bench_perf.ASSUMED_BUSBW)
    world = b.args.allreduce_world or b.args.gpus
    measured = None
    if world >= 2:
        measured = measure_allreduce(grads["total"], world)
        busbw[f"measured: {world} x {measured['backend']} on this machine"] = measured["busbw"]
    return {"global_batch": cfg.batch_size, "step_s_by_gpus": step_s, "grad_bytes": grads["total"],
            "fc_share": grads["fc_share"], "tail_bytes": tail, "bucket_cap_mb": perf.BUCKET_CAP_MB,
            "allreduce_measured": measured, "paper_4gpu_speedup": 3.75,
            "projection": bench_perf.project_scaling(step_s, grads["total"], tail, busbw)}


def ratios(rows: list[dict], arch: str) -> dict:
    get = {r["path"]: r["images_per_s"] for r in rows
           if r["arch"] == arch and r["variant"] == PATHS[r["path"]].variant}
    out = {}
    for a, b in (("ray", "synthetic"), ("ray", "peer"), ("ray-gpu", "synthetic"), ("ray-gpu", "peer"),
                 ("ray-gpu", "ray"), ("peer", "synthetic")):
        if a in get and b in get:
            out[f"{a}_over_{b}"] = get[a] / get[b]
    return out


def print_table(result: dict) -> None:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"\n{result['device']}, preset {result['preset']}, batch {result['per_device_batch']} per device, "
          f"crop {result['crop']}, data {result['data']}; MFU vs {result['peak']['name'] or 'no'} bf16 spec "
          f"peak, and vs the {result['peak']['matmul_flops'] / 1e12:.3g} TFLOP/s matmul measured here")
    print(f"{'arch':<5}{'path':<10}{'variant':<27}{'micro':>6}{'img/s/dev':>11}{'step ms':>9}{'1st step s':>11}"
          f"{'1st batch s':>12}{'MFU':>7}{'MFU mm':>8}{'peak GiB':>9}{'compile s':>10}")
    for r in result["results"]:
        print(f"{r['arch']:<5}{r['path']:<10}{r['variant']:<27}{r['micro_batch']:>6}{r['images_per_s']:>11.1f}"
              f"{r['step_s'] * 1e3:>9.1f}{r['first_step_s']:>11.2f}{r['first_batch_s']:>12.2f}"
              f"{f(r['mfu'], '.1%'):>7}{f(r['mfu_vs_matmul'], '.1%'):>8}{f(r['peak_mem_gib'], '.1f'):>9}"
              f"{f(r['compile_s'], '.1f'):>10}")
    for arch, rs in result["ratios"].items():
        if rs:
            print(f"{arch}: " + ", ".join(f"{k.replace('_over_', ' / ')} {v:.2f}" for k, v in rs.items()))
    for reason in result.get("errors", []):
        print(f"not measured: {reason}")
    rate = result["decode_img_s_per_core"]
    print(f"CPU transform (decode, rescale, crop, flip): {rate:.0f} images/s per core")
    for arch, sc in result.get("scaling", {}).items():
        print(f"{arch}: projected speed-up at global batch {sc['global_batch']} (paper: 3.75x on 4 GPUs); "
              f"{sc['grad_bytes'] / 1e6:.4g} MB of fp32 gradients, DDP's unhidden tail {sc['tail_bytes'] / 1e6:.3g} MB")
        for name, p in sc["projection"].items():
            cells = [f"{k}: {v['speedup_no_overlap']:.2f}-{v['speedup_overlap']:.2f}x" for k, v in p.items()
                     if k != "busbw"]
            print(f"  {name} [{p['busbw'] / 1e9:.1f} GB/s]: " + ", ".join(cells))


if __name__ == "__main__":
    # a path that failed is reported in the JSON and the table, and in the exit status too: scripts and CI
    # that run the benchmark see it
    sys.exit(1 if main().get("errors") else 0)
