"""Evaluate trained VGG nets as §3.2 of the paper does: dense, multi-crop and both, at several test
scales Q, each model alone and every fusion of two or more (Tables 3-6), over the whole validation set.

  python jobs/eval_ensemble.py --model D=runs/paper-S256-512/D --model E=runs/paper-S256-512/E \\
      --data s3://bucket/imagenet --out eval/D+E
  python jobs/eval_ensemble.py --model vgg16=vgg16-397923af.pth --data shards/ --methods dense --out eval/tv

SOURCE is a training run directory (its best.pt), a checkpoint file, or a torchvision vgg11/13/16/19
.pth. Q defaults per model to §3.2's set for its training scale S; --test-scales (paper units, pixels at a
224 crop) overrides. Locally it starts Ray; submitted with `ray job submit` it joins the cluster.
"""

from __future__ import annotations

import argparse
import sys

from vgg_ray.checkpoints import load_models
from vgg_ray.config import EvalConfig, UsageError, add_arguments, fail, from_args
from vgg_ray.imagenet import shards
from vgg_ray.imagenet.demo import resolve_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration and exit, without starting Ray")
    add_arguments(parser, EvalConfig)
    args = parser.parse_args(argv)
    try:
        cfg = from_args(args, EvalConfig)
    except ValueError as e:
        fail(parser, str(e))
    if args.print_config:
        print(cfg.to_json())
        return {}

    problems, root, classes = [], None, None  # every path before Ray starts, all problems at once
    try:
        root = resolve_data(cfg.data)
        classes = shards.load_manifest(root)["num_classes"]
    except (FileNotFoundError, ValueError, KeyError) as e:
        problems.append(str(e))
    try:  # each model read and checked here, not in the cluster: a file that is no VGG net stops the job now
        models = load_models(cfg.models, classes, cfg.data)
    except ValueError as e:
        problems.extend(str(e).splitlines())
    if problems:
        fail(parser, "\n".join(problems))

    from vgg_ray.distributed.evaluate import evaluate  # imports Ray: after the flags are checked
    from vgg_ray.distributed.session import connect

    connect()
    try:
        result = evaluate(cfg, root, models)
    except UsageError as e:  # found once the cluster is known, before any work
        fail(parser, str(e))
    print(result["markdown"])
    print(result["findings"])
    print(f"{result['n_images']} images x {len(cfg.models)} models: {result['pieces']} pieces"
          + (f"; {result['undecodable']} undecodable images left out" if result["undecodable"] else ""))
    print(f"tables {cfg.out}/results.md, the paper's findings {cfg.out}/findings.md, rows {cfg.out}/results.json, posteriors {cfg.out}/posteriors/")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
