"""Training-input throughput: our Ray Data pipeline vs torchvision ImageFolder + DataLoader, same images.

    python -m bench.bench_data --data demo
    python -m bench.bench_data --data /data/shards --raw /data/imagenet --seconds 60

Both sides do the same work per image (vgg_ray.transforms.train_sample: JPEG draft-mode decode, isotropic
rescale to S, random crop, random flip) with the same number of CPU processes, and deliver uint8 batches
to this process. The peer reads the --raw tree's train/ folders, or, without --raw, the shards' training
images written out as files first (not timed). Each side runs for --seconds after its first batch (start-up
is not counted; epoch boundaries are). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import TrainSample, collate, read_bytes, resolve, write_images
from vgg_ray.scales import parse_scale, scale_to_px


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="demo", help="shards folder/URI from jobs/prepare_imagenet.py, or demo")
    p.add_argument("--raw", default=None, help="the ImageNet-layout folder the shards came from (train/<wnid>/)")
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per pipeline and round")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternate the two pipelines this many times and report the medians (a shared "
                        "machine's load drifts; alternating exposes both to the same drift)")
    p.add_argument("--train-scale", default=None,
                   help="S in paper units (256 or 256-512); default 256, or the smoke preset's for demo")
    p.add_argument("--crop", type=int, default=None, help="crop side, pixels (224; 32 for demo)")
    p.add_argument("--batch", type=int, default=64, help="images per batch delivered to this process")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                   help="CPU processes for each pipeline (default: this machine's cores)")
    return p.parse_args(argv)


def timed(epochs, seconds: float, size) -> tuple[float, int]:
    """(images/s, images) over `seconds` after the first batch; `epochs()` yields one epoch's iterator."""
    n, start = 0, None
    while True:
        for b in epochs():
            if start is None:
                start = time.perf_counter()
                continue
            n += size(b)
            if time.perf_counter() - start >= seconds:
                return n / (time.perf_counter() - start), n


def baseline(train_dir: Path, scale, crop, args):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(train_dir), loader=read_bytes, transform=TrainSample(scale, crop))
    # forkserver: workers start from a clean process, not forked from one running Ray's threads; they
    # persist across epochs and rounds, as a training script's would.
    dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.procs, drop_last=True,
                    persistent_workers=True, collate_fn=collate, multiprocessing_context="forkserver")
    return lambda: timed(lambda: iter(dl), args.seconds, lambda b: len(b[1]))


def ours(root: str, scale, crop, args):
    import ray

    from vgg_ray.distributed import data

    ray.init(num_cpus=args.procs, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = data.train_dataset(root, scale, crop, seed=0)
    return lambda: timed(lambda: ds.iter_torch_batches(batch_size=args.batch, drop_last=True), args.seconds,
                         lambda b: len(b["label"]))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    root = resolve(args.data)
    demo = args.data == "demo"
    crop = args.crop or (32 if demo else 224)
    scale = tuple(scale_to_px(s, crop) for s in parse_scale(args.train_scale or "256"))  # paper units -> px
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if args.raw:
            train_dir = Path(args.raw) / "train"
            if not train_dir.is_dir():
                train_dir = Path(args.raw) / "ILSVRC" / "Data" / "CLS-LOC" / "train"
            peer_reads = f"files under {train_dir}"
        else:
            train_dir = Path(tmp) / "train"
            write_images(root, train_dir)
            peer_reads = "the shards' training images written out as files"
        run_peer, run_ours = baseline(train_dir, scale, crop, args), ours(root, scale, crop, args)
        peer, mine = [], []
        for r in range(args.rounds):
            peer.append(run_peer()[0])
            mine.append(run_ours()[0])
            print(f"round {r + 1}/{args.rounds}: ours {mine[-1]:.1f}, peer {peer[-1]:.1f} images/s", flush=True)
    ours_s, base_s = float(np.median(mine)), float(np.median(peer))
    ratio = ours_s / base_s
    rows = [("ours: Ray Data read_parquet -> map_batches -> iter_torch_batches", ours_s, mine),
            (f"peer: ImageFolder + DataLoader({args.procs} workers)", base_s, peer)]
    print(f"\ndata {args.data} ({root}); S {scale[0]}-{scale[1]} px, crop {crop} px, batch {args.batch}, "
          f"{args.procs} CPU processes each; peer reads {peer_reads}")
    print(f"{'pipeline':<68}{'images/s':>10}  rounds")
    for name, rate, each in rows:
        print(f"{name:<68}{rate:>10.1f}  {' '.join(f'{x:.0f}' for x in each)}")
    print(f"{'ratio ours / peer (medians)':<68}{ratio:>10.2f}")
    result = {"ours_img_s": round(ours_s, 1), "baseline_img_s": round(base_s, 1), "ratio": round(ratio, 3),
              "per_process_img_s": round(ours_s / args.procs, 1), "procs": args.procs, "data": args.data,
              "train_scale_px": list(scale), "crop": crop, "batch": args.batch, "seconds": args.seconds,
              "rounds": args.rounds, "ours_rounds": [round(x, 1) for x in mine],
              "baseline_rounds": [round(x, 1) for x in peer],
              "peer_reads": peer_reads}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
