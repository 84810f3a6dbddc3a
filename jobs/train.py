"""Train VGG configurations as §3.1 of the paper says, one Ray Tune trial (a DDP TorchTrainer) each.

  python jobs/train.py --arch E --data s3://bucket/imagenet --storage s3://bucket/runs --name vgg-E
  python jobs/train.py --arch A,B --preset smoke --data demo --device cpu --workers 2

Run it again with the same --storage and --name to resume. Locally it starts Ray; submitted with
`ray job submit` it joins the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys

from vgg_ray.checkpoints import load_model, resolve_source
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
from vgg_ray.imagenet.demo import resolve_data
from vgg_ray.storage import delete_dir, is_file, join, read_bytes


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="A", help=f"configurations of Table 1 to train: {ARCHS_HELP} (default A)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration of each arch and exit, without starting Ray")
    parser.add_argument("--fresh", action="store_true",
                        help="delete what --storage/--name holds for these archs and start them over (without it, "
                             "a run resumes, and refuses a configuration other than the one it was started with)")
    add_arguments(parser, TrainConfig, skip=("arch",))
    args = parser.parse_args(argv)
    try:  # every flag is checked before any work starts
        cfgs = [from_args(args, TrainConfig, arch=a) for a in parse_archs(args.arch)]
    except ValueError as e:
        fail(parser, str(e))
    if note := lr_note(cfgs[0], args.lr is not None):
        print(note, file=sys.stderr, flush=True)
    if args.print_config:
        print("\n".join(c.to_json() for c in cfgs))
        return {}
    problems = []  # and every path, all problems at once: the data, the net each run starts from, the runs
    try:
        resolve_data(cfgs[0].data)
    except FileNotFoundError as e:
        problems.append(str(e))
    read = set()  # each net a run starts from, read once as the workers will read it: a file that is no
    for c in cfgs:  # VGG checkpoint is refused here, not on the cluster
        if c.init.startswith("from:"):
            try:
                path = resolve_source(c.init[len("from:"):], c.arch)
                if path not in read:
                    load_model(path)
                    read.add(path)
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"--init {c.init}: {e}")
        saved = join(c.run_dir, "config.json")
        if args.fresh or not is_file(saved):
            continue
        try:  # an existing run is resumed with what it was started with
            changed = c.differences(json.loads(read_bytes(saved)))
        except ValueError as e:  # not JSON, or a configuration this version refuses
            problems.append(f"--name {c.name}: {saved} cannot be read as a run's configuration ({e}); pick "
                            "another --name, or add --fresh to start the run over")
            continue
        if changed:
            problems.append(f"--name {c.name}: run {c.arch} was started with another configuration "
                            f"({'; '.join(changed)}); resume it with its own flags, pick another --name, or "
                            "add --fresh to start it over")
    if problems:
        fail(parser, "\n".join(problems))

    from vgg_ray.distributed.trainer import plan, train  # imports Ray: after the flags are known to be good

    try:
        decided = plan(cfgs)
    except UsageError as e:  # found once the cluster is known, before any work
        fail(parser, str(e))
    if args.fresh:  # only now that every check has passed
        for c in cfgs:
            delete_dir(c.run_dir)
    runs = train(cfgs, decided)
    for arch, run_dir in runs.items():
        print(f"{arch}: metrics {run_dir}/metrics.csv, curves {run_dir}/curves.png, best weights "
              f"{run_dir}/best.pt, TensorBoard {run_dir}/tensorboard")
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
