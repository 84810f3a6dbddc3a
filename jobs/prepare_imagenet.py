"""Convert an ILSVRC-2012 tree into Parquet shards + manifest.json, once, with Ray tasks (one per shard).

    python jobs/prepare_imagenet.py --src /data/imagenet --out s3://bucket/imagenet
    ray job submit --working-dir . -- python jobs/prepare_imagenet.py --src /shared/imagenet --out DIR_OR_URI

Runs on the Ray cluster of a submitted job (RAY_ADDRESS), else on a local Ray with this machine's CPUs.
--src must be readable at the same path on every node (a shared file system); --out may be any pyarrow
URI. Re-running is safe and resumes: finished shards are kept, the manifest comes last (see
vgg_ray/imagenet/convert.py). Layouts, quirks and the data format: README, "ImageNet shards".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vgg_ray.imagenet.convert import DEFAULT_SHARD_MB, DEFAULT_STATS_SAMPLE


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="ImageNet folder holding train/ and val/ (or the Kaggle ILSVRC/)")
    p.add_argument("--out", required=True, help="output folder or URI (s3://..., gs://...)")
    p.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB,
                   help=f"source MB per shard at most (default {DEFAULT_SHARD_MB}: object-storage sized)")
    p.add_argument("--stats-sample", type=int, default=DEFAULT_STATS_SAMPLE,
                   help=f"training images sampled for the mean RGB and its PCA (default {DEFAULT_STATS_SAMPLE})")
    args = p.parse_args(argv)
    if not Path(args.src).is_dir():
        p.error(f"--src {args.src}: not a folder")
    if args.shard_mb <= 0 or args.stats_sample < 0:
        p.error(f"--shard-mb {args.shard_mb} must be > 0 and --stats-sample {args.stats_sample} >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    from vgg_ray.distributed.convert import convert  # imports Ray: after the flags are checked
    from vgg_ray.distributed.session import connect

    connect(os.cpu_count() or 1)  # the cluster of a submitted job / RAY_ADDRESS, else a local Ray
    manifest = convert(args.src, args.out, shard_mb=args.shard_mb, stats_sample=args.stats_sample)
    print(f"wrote {args.out}: {manifest['counts']['train']} train, {manifest['counts']['val']} val images "
          f"in {manifest['shards']['train']} + {manifest['shards']['val']} shards, "
          f"{manifest['num_classes']} classes; {len(manifest['skipped'])} files skipped "
          f"(see {args.out.rstrip('/')}/manifest.json)")
    return manifest


if __name__ == "__main__":
    main()
