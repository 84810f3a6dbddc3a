"""vgg_ray/perf.py: the speed settings and DDP wrapper settings the train loop uses, on a real gloo process
group. (The benchmarks' arithmetic, bench/perf.py, is tested in tests/bench/test_perf.py.)"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from vgg_ray import perf
from vgg_ray.models import build_vgg


def tiny(arch: str = "D") -> torch.nn.Module:
    return build_vgg(arch, num_classes=10, width=1 / 16, fc_width=64, crop_size=32)



def test_ddp_kwargs_and_comm_hook_only_on_nccl(gloo_group, monkeypatch):
    ddp = DDP(tiny(), **perf.ddp_kwargs())
    assert ddp.gradient_as_bucket_view and ddp.bucket_bytes_cap == perf.BUCKET_CAP_MB * 2**20
    assert perf.ddp_comm_hook(ddp) is False  # gloo
    assert "comm_hook" not in ddp._get_ddp_logging_data()
    assert perf.ddp_comm_hook(tiny()) is False  # not DDP (Ray Train with one worker)
    with pytest.raises(ValueError, match="bf16, fp16, none"):
        perf.ddp_comm_hook(ddp, kind="int8")
    monkeypatch.setattr(perf.dist, "get_backend", lambda group=None: "nccl")
    assert perf.ddp_comm_hook(ddp, kind="none") is False
    assert perf.ddp_comm_hook(ddp) is True
    assert ddp._get_ddp_logging_data()["comm_hook"] == "bf16_compress_hook"


def test_allreduce_timing_and_busbw(gloo_group):
    assert perf.time_allreduce(4096, torch.device("cpu"), repeat=2) > 0
    # ring all-reduce: each of 4 devices moves 2 * 3/4 of 1 GB, in 0.5 s: 3 GB/s
    assert perf.busbw(1e9, 4, 0.5) == pytest.approx(3e9)


def test_configure_backends_and_prepare_on_cpu():
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision
    try:
        assert perf.configure_backends() == {"cudnn_benchmark": True, "tf32": True}
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.fp32_precision == "tf32"
        perf.configure_backends(cudnn_benchmark=False, tf32=False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision = saved
    model = perf.prepare_for_speed(tiny(), "cpu")  # channels_last is for CUDA only
    assert model.features[0].weight.is_contiguous()
