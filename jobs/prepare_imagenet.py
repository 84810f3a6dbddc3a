"""Convert an ILSVRC-2012 tree into Parquet shards + manifest.json, once, with Ray tasks (one per shard).

    python jobs/prepare_imagenet.py --src /data/imagenet --out s3://bucket/imagenet
    ray job submit --working-dir . -- python jobs/prepare_imagenet.py --src /shared/imagenet --out DIR_OR_URI

Runs on the Ray cluster of a submitted job (RAY_ADDRESS), else on a local Ray with this machine's CPUs.
--src must be readable at the same path on every node (a shared file system); --out may be any pyarrow
URI. Re-running is safe and resumes: finished shards are kept, the manifest comes last (see
vgg_ray/imagenet.py: convert). Layouts, quirks and the data format: README, "ImageNet shards".
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ray

from vgg_ray import imagenet
from vgg_ray.session import connect


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="ImageNet folder holding train/ and val/ (or the Kaggle ILSVRC/)")
    p.add_argument("--out", required=True, help="output folder or URI (s3://..., gs://...)")
    p.add_argument("--shard-mb", type=float, default=imagenet.DEFAULT_SHARD_MB,
                   help=f"source MB per shard (default {imagenet.DEFAULT_SHARD_MB}: object-storage sized)")
    p.add_argument("--stats-sample", type=int, default=imagenet.DEFAULT_STATS_SAMPLE,
                   help="training images sampled for the mean RGB and its PCA "
                        f"(default {imagenet.DEFAULT_STATS_SAMPLE})")
    return p.parse_args(argv)


def ray_map(fn, args: list):
    """Run fn over args as Ray tasks (1 CPU each, retried on node loss: a shard write is idempotent);
    yield results as they finish, with a progress line per shard."""
    task = ray.remote(num_cpus=1, max_retries=3)(fn)
    pending = [task.remote(a) for a in args]
    start, done, rows = time.time(), 0, 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        info = ray.get(ready[0])
        done, rows = done + 1, rows + info["rows"]
        rate = rows / max(time.time() - start, 1e-9)
        print(f"[{done}/{len(args)}] {info['split']}/{info['name']}: {info['rows']} images, "
              f"{len(info['skipped'])} skipped; {rows} images so far, {rate:.0f}/s", flush=True)
        yield info


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if not Path(args.src).is_dir():
        raise SystemExit(f"--src {args.src}: not a folder")
    connect(os.cpu_count() or 1)  # the cluster of a submitted job / RAY_ADDRESS, else a local Ray
    manifest = imagenet.convert(args.src, args.out, shard_mb=args.shard_mb, stats_sample=args.stats_sample,
                                map_fn=ray_map, log=lambda line: print(line, flush=True))
    print(f"wrote {args.out}: {manifest['counts']['train']} train, {manifest['counts']['val']} val images "
          f"in {manifest['shards']['train']} + {manifest['shards']['val']} shards, "
          f"{manifest['num_classes']} classes; {len(manifest['skipped'])} files skipped "
          f"(see {args.out.rstrip('/')}/manifest.json)")
    return manifest


if __name__ == "__main__":
    main()
