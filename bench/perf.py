"""The arithmetic that says how fast training could go, for the benchmarks: `mfu` and `bf16_peak` turn a
measured images/s into model FLOP utilisation, `measure_matmul_flops` the ceiling it is also compared to;
`gradient_buckets` shows how DDP cuts VGG's gradients (at vgg_ray.perf.BUCKET_CAP_MB, the train loop's
cap) and `project_scaling` what that means for 4 and 8 GPUs. bench/README.md says what each figure means.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from bench.common import sync
from vgg_ray.perf import BUCKET_CAP_MB

MiB = 2**20


def training_flops(macs_per_image: int) -> int:
    """FLOPs of one training image: forward 2 FLOPs per multiply-accumulate, backward twice the forward
    (gradients for the inputs and for the weights), so 3 x 2 x MACs."""
    return 6 * macs_per_image


def mfu(images_per_s: float, macs_per_image: int, peak_flops: float) -> float:
    """Model FLOP utilisation: the training FLOPs the model needs per second over the device's peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops={peak_flops}: must be > 0")
    return images_per_s * training_flops(macs_per_image) / peak_flops


@dataclass(frozen=True)
class Peak:
    name: str
    spec: float  # FLOP/s, dense (no 2:4 sparsity) bf16 tensor-core peak from the datasheet
    measured: float | None  # FLOP/s, an 8192^3 bf16 matmul on a machine of that kind (bench/README.md)


# Matched in order against torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3" is the SXM part). MFU is
# reported against `spec`, the usual definition (PaLM, appendix B); the benchmark also reports it against
# the matmul rate it measures in every run (`mfu_vs_matmul`), the measure the targets use.
BF16_PEAKS: list[tuple[str, Peak]] = [
    (r"H100.*PCIe", Peak("H100 PCIe", 756e12, None)),
    (r"H100.*NVL", Peak("H100 NVL", 835e12, None)),
    (r"H100", Peak("H100 SXM", 989.4e12, 798e12)),
    (r"H200", Peak("H200", 989.4e12, 788e12)),  # same chip as the H100 SXM
    (r"A100", Peak("A100", 312e12, None)),
    (r"\bL4\b", Peak("L4", 121e12, None)),
]


def bf16_peak(device_name: str) -> Peak | None:
    """The bf16 peak of a device by its CUDA name; None for CPUs and unknown GPUs."""
    for pattern, peak in BF16_PEAKS:
        if re.search(pattern, device_name):
            return peak
    return None


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                         repeat: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on `device`: the ceiling the GPU's matrix units reach in practice
    (random operands: zeros run faster). Median of `repeat` timed products after three warm-ups."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


# ---- DDP's gradients and the all-reduce ----

def gradient_bytes(model: nn.Module, bytes_per_value: int = 4) -> dict:
    """{"total", "fc", "fc_share"}: bytes of one step's gradients and the share in the classifier (fc6-8).
    D, 1000 classes: 553.4 MB, of which 494.6 MB (89.4%) FC; fc6 alone is 411 MB. E: 574.7 MB, 86.1%."""
    total = sum(p.numel() for p in model.parameters()) * bytes_per_value
    fc = sum(p.numel() for p in model.classifier.parameters()) * bytes_per_value
    return {"total": total, "fc": fc, "fc_share": fc / total}


def gradient_buckets(model: nn.Module, cap_mb: float = BUCKET_CAP_MB, bytes_per_value: int = 4) -> list[dict]:
    """DDP's buckets after its first-step rebuild, in the order they are all-reduced: {"bytes", "params"}.

    Gradients become ready layer by layer from the last (for a sequential net), weight before bias within
    a layer; a bucket closes once it reaches the cap (an explicit cap applies to the first bucket too).
    """
    layers: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append((name, p))
    cap = cap_mb * MiB
    buckets, cur, size = [], [], 0
    for layer in reversed(list(layers.values())):
        for name, p in layer:
            cur.append(name)
            size += p.numel() * bytes_per_value
            if size >= cap:
                buckets.append({"bytes": size, "params": cur})
                cur, size = [], 0
    if cur:
        buckets.append({"bytes": size, "params": cur})
    return buckets


def tail_bytes(model: nn.Module, cap_mb: float = BUCKET_CAP_MB, bytes_per_value: int = 4) -> int:
    """Bytes of the buckets that complete only with the first layer's gradient, the last of the backward
    pass: the all-reduce that no computation is left to hide."""
    first = next(iter(model.named_parameters()))[0].rpartition(".")[0]
    return sum(b["bytes"] for b in gradient_buckets(model, cap_mb, bytes_per_value)
               if b["params"][-1].rpartition(".")[0] == first)


def ring_allreduce_s(nbytes: float, world: int, busbw: float) -> float:
    """Seconds of a ring all-reduce of `nbytes` over `world` devices at bus bandwidth `busbw` (bytes/s, as
    nccl-tests report it; vgg_ray.perf.busbw measures it): each device sends and receives 2(n-1)/n of the
    buffer. Latency ignored (tens of microseconds against hundreds of megabytes)."""
    return 0.0 if world <= 1 else 2 * (world - 1) / world * nbytes / busbw


# ASSUMED all-reduce bus bandwidths (bytes/s, in nccl-tests' busbw sense) for machines this benchmark has
# not run on. Labelled as assumptions in the output; a measured busbw replaces them when --gpus >= 2.
ASSUMED_BUSBW = {
    "assumed: H100 SXM, NVLink 4 + NVSwitch (nccl-tests ~350 GB/s)": 350e9,
    "assumed: GPUs on PCIe 4.0 x16, no NVLink (~20 GB/s)": 20e9,
    "assumed: one GPU per node, 100 Gb/s network (~11 GB/s)": 11e9,
}
BACKWARD_SHARE = 2 / 3  # backward = 2x forward FLOPs: the window in which DDP's all-reduce can hide


def project_scaling(step_s: dict[int, float], grad_bytes: int, tail_bytes: int, busbw: dict[str, float],
                    worlds: tuple[int, ...] = (4, 8)) -> dict:
    """Speed-up over one GPU at a fixed global batch (the paper's setting: 256 split over n GPUs).

    step_s[n]: the step time measured on one device at the per-device batch 256/n (step_s[1] at 256).
    Per bandwidth scenario, n and gradient dtype (bf16: the comm hook's halved bytes): T_n = step_s[n] +
    the all-reduce time left exposed: all of it without overlap; with DDP's overlap (ideal: the
    all-reduce steals no compute), max(the tail's all-reduce, all-reduce - backward window).
    """
    out = {}
    for name, bw in busbw.items():
        rows = {}
        for n in worlds:
            for dtype, scale in (("fp32", 1.0), ("bf16", 0.5)):
                ar = ring_allreduce_s(grad_bytes * scale, n, bw)
                tail = ring_allreduce_s(tail_bytes * scale, n, bw)
                exposed = max(tail, ar - BACKWARD_SHARE * step_s[n])
                rows[f"{n}x_{dtype}"] = {"allreduce_s": ar, "speedup_no_overlap": step_s[1] / (step_s[n] + ar),
                                         "speedup_overlap": step_s[1] / (step_s[n] + exposed)}
        out[name] = {"busbw": bw, **rows}
    return out
