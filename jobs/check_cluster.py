"""Check a live cluster before a long run: CUDA, the GPU, torch/CUDA/NCCL and driver versions on every
train worker, and the all-reduce bus bandwidth DDP gets between them (NCCL across the nodes' network).

  ray job submit --working-dir . -- python jobs/check_cluster.py --workers 16    # two 8-GPU nodes
  python jobs/check_cluster.py --device cpu --workers 2 --size-mb 16             # here, gloo on CPUs

Compare --workers 8 (one node: NVLink) with 16 (two nodes: the network). VGG-D's fp32 gradients are 553 MB
(the default size); at bus bandwidth B, one all-reduce over n GPUs takes 2(n-1)/n x 553 MB / B.
"""

from __future__ import annotations

import argparse
import sys

from vgg_ray.config import UsageError, fail


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=0,
                        help="train workers, one per GPU (default: every GPU the cluster has or can add)")
    parser.add_argument("--device", default="auto", choices=("auto", "gpu", "cpu"))
    parser.add_argument("--size-mb", type=float, default=553.0,
                        help="all-reduce buffer in MB (default 553: VGG-D's fp32 gradients)")
    parser.add_argument("--repeat", type=int, default=10, help="timed all-reduces after two warm-ups")
    parser.add_argument("--storage", default=None, help="where Ray Train keeps the check's run (a URI on a "
                        "multi-node cluster; default Ray Train's)")
    args = parser.parse_args(argv)
    problems = [m for ok, m in ((args.workers >= 0, f"--workers {args.workers}: must be >= 0 (0: every GPU)"),
                                (args.size_mb > 0, f"--size-mb {args.size_mb}: must be > 0"),
                                (args.repeat >= 1, f"--repeat {args.repeat}: must be >= 1")) if not ok]
    if problems:
        fail(parser, "\n".join(problems))

    from vgg_ray.distributed.cluster_check import allreduce, probe  # imports Ray: after the flags
    from vgg_ray.distributed.session import capacity, check_cluster, connect

    connect()
    cap = capacity()
    try:
        use_gpu = check_cluster(cap, args.device, {}, True, gpu_workers=args.workers)
    except UsageError as e:
        fail(parser, str(e))
    workers = args.workers or (cap.gpus if use_gpu else 2)
    print(f"checking {workers} {'GPU' if use_gpu else 'CPU'} slot(s) (from {cap.source}; nodes not up yet "
          "are waited for, as a training run waits for them)", flush=True)
    slots = probe(workers, use_gpu)
    for i, w in enumerate(slots):
        print(f"slot {i:>3} {w['host']} node {w['node']}: "
              + (f"{w['gpu']} (GPU {','.join(map(str, w['visible']))}), driver {w['driver']}, torch {w['torch']} "
                 f"CUDA {w['cuda_build']}, NCCL {w['nccl']}" if w["cuda"] else
                 f"no CUDA (torch {w['torch']}, CUDA build {w['cuda_build']}, driver {w['driver']})"))
    missing = [w for w in slots if use_gpu and not w["cuda"]]
    if missing:
        print(f"no CUDA in {len(missing)} of {workers} GPU slots, on " + ", ".join(sorted({w["host"] for w in missing}))
              + ": the cluster image's torch is a CUDA 12.8 build, which needs driver >= 570 (cluster/Dockerfile)",
              file=sys.stderr)
        sys.exit(1)
    out = allreduce(workers, use_gpu, int(args.size_mb * 1e6), args.repeat, args.storage, "check-cluster")
    print(f"all-reduce of {out['bytes'] / 1e6:.0f} MB over {workers} workers on {out['nodes']} node(s), "
          f"{out['backend']}: {out['seconds'] * 1e3:.1f} ms, bus bandwidth {out['busbw'] / 1e9:.2f} GB/s")
    return {"slots": slots, **out}


if __name__ == "__main__":
    main(sys.argv[1:])
