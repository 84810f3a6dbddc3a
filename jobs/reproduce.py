"""The whole paper in one resumable Ray job: train A; B-E from A; C, D, E at S=256, then S=384, then
jittered S in [256, 512]; then the evaluations of Tables 3-5 and the D+E fusion of Table 6.

  python jobs/reproduce.py --data s3://bucket/imagenet --storage s3://bucket/runs --name vgg --workers 8
  python jobs/reproduce.py --arch D,E --preset smoke --data demo --device cpu --workers 2 --max-epochs 2

Submit it again with the same --storage and --name and it skips every finished stage.
"""

from __future__ import annotations

import argparse
import json
import sys

from vgg_ray.config import (
    ARCHS_HELP,
    TrainConfig,
    UsageError,
    add_arguments,
    fail,
    from_args,
    lr_note,
    parse_archs,
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", "--archs", default="all", help="configurations of Table 1 to reproduce (A is "
                        f"always trained: the others start from it): {ARCHS_HELP} (default all)")
    parser.add_argument("--init-a", default="glorot", choices=("glorot", "gaussian"),
                        help="initialisation of A (and A-LRN), trained from scratch")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N validation images only")
    add_arguments(parser, TrainConfig, skip=("arch", "train_scale", "init"))
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = "reproduce"
    try:  # every flag is checked before any work starts
        archs = parse_archs(args.arch)
        base = from_args(args, TrainConfig, arch="A")
    except ValueError as e:
        fail(parser, str(e))
    if note := lr_note(base, args.lr is not None):
        print(note, file=sys.stderr, flush=True)

    from vgg_ray.distributed.reproduce import run  # imports Ray: after the flags are checked

    try:
        summary = run(base, archs, init_a=args.init_a, limit=args.limit)
    except UsageError as e:  # found once the cluster is known, before any work
        fail(parser, str(e))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
