"""The device decode (vgg_ray.device_decode on this machine's GPU, nvJPEG) against the CPU path on the
same windows: how far apart the two renderings are, in levels of 0-255.

    python -m bench.gpu_check                  # the demo images, S in [256, 512] (paper units), 56 crops
    python -m bench.gpu_check photos 256-512 224
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bench.common import resolve
from vgg_ray import transforms as T
from vgg_ray.device_decode import decode_windows
from vgg_ray.imagenet import shards
from vgg_ray.scales import parse_scale, scale_to_px


def main(argv: list[str]) -> dict:
    data, text, crop = (argv + ["demo", "256-512", "56"][len(argv):])[:3]
    crop = int(crop)
    scale = tuple(scale_to_px(s, crop) for s in parse_scale(text))
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_check: no CUDA device here")
    t = shards.read_rows(resolve(data), "train", 0, 256, ["image"])
    datas = t.column("image").to_pylist()
    rng = np.random.default_rng(0)
    wins = T.window_array([T.train_window(T.image_size(d), scale, crop, rng) for d in datas])
    decoded = np.ones(len(datas), bool)
    g, g_decoded = decode_windows(datas, wins, decoded, crop, "cuda")
    c, c_decoded = decode_windows(datas, wins, decoded, crop, "cpu")
    d = (g.cpu().int() - c.int()).abs().float()
    out = {"images": len(datas), "decoded_gpu": int(g_decoded.sum()), "decoded_cpu": int(c_decoded.sum()),
           "max_diff": d.max().item(), "mean_abs_diff": d.mean().item(), "mean_gpu": g.float().mean().item(),
           "mean_cpu": c.float().mean().item()}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
