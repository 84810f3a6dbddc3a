"""Evaluate trained VGG nets as §3.2 of the paper does: dense, multi-crop and both, at several test
scales Q, each model alone and every fusion of two or more (Tables 3-6), over the whole validation set.

  python jobs/eval_ensemble.py --model D=runs/paper-S256-512/D --model E=runs/paper-S256-512/E \\
      --data s3://bucket/imagenet --out eval/D+E
  python jobs/eval_ensemble.py --model vgg16=vgg16-397923af.pth --data shards/ --methods dense

SOURCE is a training run directory (its best.pt), a checkpoint file, or a torchvision vgg11/13/16/19
.pth. Q defaults per model to §3.2's set for its training scale S; --scales (paper units, pixels at a
224 crop) overrides. Locally it starts Ray; submitted with `ray job submit` it joins the cluster.
"""

from __future__ import annotations

import argparse
import sys


def parse_model(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=SOURCE, e.g. D=runs/paper/D")
    return name, source


def parse_scales(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(q) for q in text.split(",") if q.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: expected Q values like 256,384,512") from None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=parse_model, action="append", required=True, metavar="NAME=SOURCE",
                        help="a model to evaluate (repeat for fusion): run directory, checkpoint or torchvision .pth")
    parser.add_argument("--data", default="demo", help="shards directory or URI (jobs/prepare_imagenet.py), or demo")
    parser.add_argument("--scales", type=parse_scales, default=(), help="Q1,Q2,... in paper units "
                        "(default per model, §3.2: S-32,S,S+32 for fixed S; S_min,(S_min+S_max)/2,S_max jittered)")
    parser.add_argument("--methods", default="both", help="dense, multi-crop, or both (adds multi-crop+dense)")
    parser.add_argument("--out", required=True, help="output directory or URI")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N validation images")
    parser.add_argument("--workers", type=int, default=0, help="evaluation actors (default: one per GPU)")
    parser.add_argument("--max-batch", type=int, default=250, help="crops per forward pass")
    parser.add_argument("--cpu", action="store_true", help="evaluate on CPUs even when there are GPUs")
    args = parser.parse_args(argv)
    models = dict(args.model)
    if len(models) != len(args.model):
        parser.error("--model: each NAME may be given once")

    from vgg_ray.eval_job import EvalConfig, connect, evaluate  # imports Ray: after the flags are checked

    try:
        cfg = EvalConfig(models=models, data=args.data, out=args.out, scales=args.scales, methods=args.methods,
                         limit=args.limit, workers=args.workers, max_batch=args.max_batch, cpu=args.cpu)
    except ValueError as e:
        parser.error(str(e))
    from vgg_ray.data import resolve_data

    root = resolve_data(cfg.data)
    connect()
    result = evaluate(cfg, root)
    print(result["markdown"])
    print(f"{result['n_images']} images x {len(models)} models: {result['pieces']} pieces"
          + (f"; {result['skipped']} undecodable images left out" if result["skipped"] else ""))
    print(f"tables {cfg.out}/results.md, rows {cfg.out}/results.json, posteriors {cfg.out}/posteriors/")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
