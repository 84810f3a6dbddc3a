"""Images/s of §3.2's evaluation methods, each beside a single centre crop (the peer) on the same images.

  python -m bench.bench_eval --preset smoke --images 64
  python -m bench.bench_eval --arch D --preset paper --images 2 --json bench/results/eval-cpu.json

In-process, no Ray, random weights (speed does not depend on them), synthetic 4:3 images already
rescaled to each Q (JPEG decoding is timed on its own row). Multi-scale over Q = {256, 384, 512} in
paper units, as in Table 5. multi-crop+dense costs the sum of the two.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from vgg_ray.config import PRESETS
from vgg_ray.evaluation import DENSE, MULTI_CROP, evaluate_images
from vgg_ray.models import build_vgg
from vgg_ray.scales import scales_px
from vgg_ray.transforms import center_crop, decode_rescaled, to_float_nchw


def _timed(fn, repeat: int) -> float:
    """Seconds of one call: the fastest of `repeat` after a warm-up (the least disturbed by other load)."""
    fn()  # warm-up: allocator, kernel selection
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="D")
    p.add_argument("--preset", default="smoke", choices=list(PRESETS))
    p.add_argument("--images", type=int, default=32, help="images per timed pass")
    p.add_argument("--test-scales", "--scales", default="256,384,512", help="Q in paper units")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=250)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    geo = {"paper": {"width": 1.0, "fc_width": 4096, "crop_size": 224}}.get(args.preset) or {
        k: PRESETS[args.preset][k] for k in ("width", "fc_width", "crop_size")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_vgg(args.arch, num_classes=1000, **geo).to(device).eval()
    crop = model.crop_size
    qs = [int(q) for q in args.test_scales.split(",")]
    px = scales_px(qs, crop)
    rng = np.random.default_rng(0)
    images = {q: [rng.integers(0, 256, (q, q * 4 // 3, 3), dtype=np.uint8) for _ in range(args.images)] for q in px}
    mean = [124.0, 117.0, 104.0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(method, q):
        def f():
            evaluate_images(model, images[q], [method], mean, max_batch=args.max_batch)
            sync()
        return f

    # The peer: one centre crop per image at the middle Q, one forward pass, no flip (what a plain
    # torchvision validate.py does, and what training tracks).
    # At least 16 crops, so that the peer is not timed at batch 1 (slow per image on CPUs).
    mid = px[len(px) // 2]
    peer_n = max(16, args.images)
    crops = torch.from_numpy(np.stack([center_crop(images[mid][i % args.images], crop)
                                       for i in range(peer_n)])).to(device)

    @torch.no_grad()
    def centre_crop():
        for chunk in crops.split(args.max_batch):
            model(to_float_nchw(chunk, torch.tensor(mean, device=device))).softmax(1)
        sync()

    seconds = {"centre crop (peer)": _timed(centre_crop, args.repeat) * args.images / peer_n}
    for method in (DENSE, MULTI_CROP):
        seconds[method] = sum(_timed(run(method, q), args.repeat) for q in px)
    seconds["multi-crop+dense"] = seconds[DENSE] + seconds[MULTI_CROP]
    buf = BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    seconds["decode+rescale, 500x375 JPEG, per Q"] = _timed(
        lambda: [decode_rescaled(jpeg, q) for q in px for _ in range(args.images)], args.repeat) / len(px)
    peer = seconds["centre crop (peer)"]
    rows = [{"method": m, "images_per_s": args.images / s, "cost_vs_centre_crop": s / peer} for m, s in seconds.items()]
    print(f"{args.arch} ({args.preset}: crop {crop}, width {geo['width']}) on {device.type} "
          f"({torch.get_num_threads()} threads), Q = {qs} -> {list(px)} px, {args.images} images")
    for r in rows:
        print(f"  {r['method']:<38} {r['images_per_s']:9.3g} images/s   {r['cost_vs_centre_crop']:7.3g} x the peer's time")
    result = {"arch": args.arch, "preset": args.preset, "device": device.type, "machine": platform.node(),
              "torch_threads": torch.get_num_threads(), "scales": qs, "scales_px": list(px),
              "images": args.images, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
