"""The ImageNet converter fanned out over Ray: one task per shard (vgg_ray.imagenet.convert is the work)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import ray
from tqdm import tqdm

from vgg_ray.imagenet import convert as imagenet


def ray_map(fn: Callable, args: list) -> Iterator[dict]:
    """Run fn over args as Ray tasks (1 CPU each, retried on node loss: a shard write is idempotent);
    yield results as they finish, with progress: shards done of total, images/s, ETA."""
    task = ray.remote(num_cpus=1, max_retries=3)(fn)
    pending = [task.remote(a) for a in args]
    images, start = 0, time.monotonic()
    with tqdm(total=len(args), unit="shard", desc="converting", mininterval=5, file=sys.stdout) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            info = ray.get(ready[0])
            images += info["rows"]
            bar.set_postfix_str(f"{images} images, {images / max(time.monotonic() - start, 1e-9):.0f} images/s, "
                                f"last {info['split']}/{info['name']} ({len(info['skipped'])} skipped)", refresh=False)
            bar.update()
            yield info


def convert(src: str, out: str, **kw) -> dict:
    """imagenet.convert with one Ray task per shard, on the cluster this process is connected to."""
    return imagenet.convert(src, out, map_fn=ray_map, log=lambda line: print(line, flush=True), **kw)
