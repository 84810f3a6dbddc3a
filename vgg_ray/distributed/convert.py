"""The ImageNet converter fanned out over Ray: one task per shard (vgg_ray.imagenet.convert is the work)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import ray

from vgg_ray.imagenet import convert as imagenet


def ray_map(fn: Callable, args: list) -> Iterator[dict]:
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


def convert(src: str, out: str, **kw) -> dict:
    """imagenet.convert with one Ray task per shard, on the cluster this process is connected to."""
    return imagenet.convert(src, out, map_fn=ray_map, log=lambda line: print(line, flush=True), **kw)
