"""Speed settings for training VGG on GPUs, and the arithmetic that says how fast it could go. Pure PyTorch.

The train loop calls, in this order: `configure_backends()` once per process; `prepare_for_speed(model,
device)` before the model is wrapped in DDP (channels_last must come first: DDP's gradient buckets take the
parameters' strides at construction); `ddp_kwargs()` as the wrapper's arguments; `ddp_comm_hook(ddp_model)`
after it; and, optionally, `compile_model(ddp_model, ...)` last (Dynamo's DDP optimizer then splits the graph
at bucket boundaries so the all-reduce still overlaps the backward pass). `mfu` and `bf16_peak` turn a
measured images/s into model FLOP utilisation; `gradient_buckets` shows how DDP will cut VGG's gradients
and `project_scaling` what that means for 4 and 8 GPUs.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# DDP never splits a tensor, so the three FC weights (411, 67 and 16 MB at 1000 classes) are buckets of
# their own whatever the cap; the cap only cuts the 59 MB of conv gradients (13 convs of D; 80 MB, 16 of E).
# Gradients become ready from the last layer back, FC first, and the FC buckets (89% of the bytes) are
# ready after ~1% of the backward FLOPs, so they overlap the whole conv backward. What cannot overlap is
# the tail: the buckets that complete only with conv1_1's gradient, the last of the backward pass
# (`tail_bytes`). At 16 MiB the tail is 2.2 MB for D and 4.6 MB for E, at most 4.6 MB for all six
# configurations, in 5-7 all-reduces a step. torch's default 25 MiB leaves a 23.5 MB tail for E (conv4_1
# and conv4_2 wait for conv1_1); 100 MiB makes all conv gradients the tail; caps under 16 MiB only add
# all-reduces (8 MiB: the same 4.6 MB worst tail in 8-12).
BUCKET_CAP_MB = 16

MiB = 2**20


def configure_backends(cudnn_benchmark: bool = True, tf32: bool = True) -> dict:
    """Process-wide: cuDNN autotuning (VGG's input shapes never change, so the search pays once, in the first
    step) and TF32 for what stays float32 outside autocast. Returns what was set, for the benchmark record."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    precision = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        # torch >= 2.9: the new API; mixing it with allow_tf32 / set_float32_matmul_precision is an error.
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return {"cudnn_benchmark": cudnn_benchmark, "tf32": tf32}


def prepare_for_speed(model: nn.Module, device: torch.device | str, channels_last: bool = True,
                      compile: bool = False, example: torch.Tensor | None = None,
                      autocast_dtype: torch.dtype | None = torch.bfloat16) -> nn.Module:
    """The model on `device`, in channels_last on CUDA (cuDNN's NHWC kernels feed the tensor cores without
    transposes), optionally compiled (see compile_model; `example` and `autocast_dtype` go there)."""
    device = torch.device(device)
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = compile_model(model, example, autocast_dtype)
    return model


def compile_model(model: nn.Module, example: torch.Tensor | None = None,
                  autocast_dtype: torch.dtype | None = torch.bfloat16) -> nn.Module:
    """torch.compile(model). Compilation is lazy: with `example` (a training input batch, in the memory
    format and shape training will use) one forward and backward, under the same autocast, compile both
    graphs now and `model.compile_s` holds the seconds they took (None without `example`: the first
    training step pays them). Gradients are cleared afterwards. A DDP model all-reduces in that backward,
    so every rank must call this."""
    compiled = torch.compile(model)
    compiled.compile_s = None
    if example is not None:
        device = example.device
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = compiled(example)
        out.float().mean().backward()
        _sync(device)
        compiled.compile_s = time.perf_counter() - t0
        for p in compiled.parameters():
            p.grad = None
    return compiled


def ddp_kwargs() -> dict:
    """DistributedDataParallel's keyword arguments (Ray: prepare_model(..., parallel_strategy_kwargs=...)).

    gradient_as_bucket_view: the gradients are views into the communication buckets, saving one copy of
    the 553 MB of gradients per step and that much memory. (Buffer broadcasting is left as it is: VGG has
    no buffers, no batch norm, so DDP skips it anyway.)
    """
    return {"bucket_cap_mb": BUCKET_CAP_MB, "gradient_as_bucket_view": True}


def ddp_comm_hook(ddp_model: nn.Module, kind: str = "bf16") -> bool:
    """Register torch's gradient-compression hook on a DDP model; True if registered.

    bf16 halves the all-reduced bytes (553 -> 277 MB for D) and keeps fp32's exponent range, so no
    gradient overflows. Only for NCCL: the hook's bf16 all-reduce needs NCCL, and on gloo (CPU tests)
    it would only add casts. Anything that is not DDP (Ray Train does not wrap a single worker) is left
    alone. `kind`: bf16, fp16 or none.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hooks = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook, "none": None}
    if kind not in hooks:
        raise ValueError(f"comm hook {kind!r}: expected one of {', '.join(hooks)}")
    if hooks[kind] is None or not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
        return False
    if dist.get_backend(ddp_model.process_group) != "nccl":
        return False
    ddp_model.register_comm_hook(ddp_model.process_group, hooks[kind])
    return True


# ---- arithmetic ----

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
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def ring_allreduce_s(nbytes: float, world: int, busbw: float) -> float:
    """Seconds of a ring all-reduce of `nbytes` over `world` devices at bus bandwidth `busbw` (bytes/s, as
    nccl-tests report it): each device sends and receives 2(n-1)/n of the buffer. Latency ignored (tens
    of microseconds against hundreds of megabytes)."""
    return 0.0 if world <= 1 else 2 * (world - 1) / world * nbytes / busbw


def busbw(nbytes: float, world: int, seconds: float) -> float:
    """The bus bandwidth (bytes/s, as nccl-tests report it) of a ring all-reduce of `nbytes` over `world`
    devices that took `seconds`: ring_allreduce_s solved for the bandwidth."""
    return 2 * (world - 1) / world * nbytes / seconds if world > 1 else float("nan")


def time_allreduce(nbytes: int, device: torch.device, repeat: int) -> float:
    """Median seconds of `repeat` all-reduces of `nbytes` of fp32 in the initialised process group, after
    two warm-ups (connections, NCCL's channels); every rank calls it."""
    buf = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)
    times = []
    for i in range(repeat + 2):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
