"""Speed settings for training VGG on GPUs, and the all-reduce timing the cluster check uses. Pure PyTorch.

The train loop calls, in this order: `configure_backends()` once per process; `prepare_for_speed(model,
device)` before the model is wrapped in DDP (channels_last must come first: DDP's gradient buckets take the
parameters' strides at construction); `ddp_kwargs()` as the wrapper's arguments; `ddp_comm_hook(ddp_model)`
after it; and, optionally, `compile_model(ddp_model, ...)` last (Dynamo's DDP optimizer then splits the graph
at bucket boundaries so the all-reduce still overlaps the backward pass). `time_allreduce` and `busbw`
measure the links. What says how fast training could go (MFU, peaks, the bucket plan, scaling
projections) is the benchmarks' and lives in bench/perf.py.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

# DDP never splits a tensor, so the three FC weights (411, 67 and 16 MB at 1000 classes) are buckets of
# their own whatever the cap; the cap only cuts the 59 MB of conv gradients (13 convs of D; 80 MB, 16 of E).
# Gradients become ready from the last layer back, FC first, and the FC buckets (89% of the bytes) are
# ready after ~1% of the backward FLOPs, so they overlap the whole conv backward. What cannot overlap is
# the tail: the buckets that complete only with conv1_1's gradient, the last of the backward pass. At
# 16 MiB the tail is 2.2 MB for D and 4.6 MB for E, at most 4.6 MB for all six configurations, in 5-7
# all-reduces a step. torch's default 25 MiB leaves a 23.5 MB tail for E (conv4_1 and conv4_2 wait for
# conv1_1); 100 MiB makes all conv gradients the tail; caps under 16 MiB only add all-reduces (8 MiB: the
# same 4.6 MB worst tail in 8-12). bench.perf.tail_bytes computes these; tests/bench/test_perf.py checks
# its bucket plan against DDP's own.
BUCKET_CAP_MB = 16


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


def busbw(nbytes: float, world: int, seconds: float) -> float:
    """The bus bandwidth (bytes/s, as nccl-tests report it) of a ring all-reduce of `nbytes` over `world`
    devices that took `seconds`: each device sent and received 2(n-1)/n of the buffer in that time."""
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
