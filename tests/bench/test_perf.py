"""bench/perf.py: the arithmetic of MFU, DDP's gradient buckets and multi-GPU scaling; the bucket plan
checked against DDP's own on a gloo process group, at the train loop's settings (vgg_ray.perf.ddp_kwargs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from bench import perf
from vgg_ray import perf as core_perf
from vgg_ray.models import build_vgg, forward_macs


def tiny(arch: str = "D") -> torch.nn.Module:
    return build_vgg(arch, num_classes=10, width=1 / 16, fc_width=64, crop_size=32)


def full(arch: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_vgg(arch)


def test_mfu_by_hand():
    # D at 224: 15,470,264,320 MACs forward; a training image costs 3 x 2 x that = 92.82 GFLOP.
    macs = forward_macs(full("D"), 224)
    assert macs == 15_470_264_320
    assert perf.training_flops(macs) == 92_821_585_920
    assert perf.mfu(1000, macs, 989.4e12) == pytest.approx(92.821585920e12 / 989.4e12)
    # The issue's target: D at 4,000 images/s is "about 46%" of the H100's measured 798 TFLOP/s.
    assert perf.mfu(4000, macs, 798e12) == pytest.approx(0.4653, abs=5e-4)
    with pytest.raises(ValueError, match="peak_flops"):
        perf.mfu(1.0, macs, 0)


def test_bf16_peak_by_device_name():
    sxm = perf.bf16_peak("NVIDIA H100 80GB HBM3")
    assert (sxm.name, sxm.spec, sxm.measured) == ("H100 SXM", 989.4e12, 798e12)
    assert perf.bf16_peak("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert perf.bf16_peak("NVIDIA H200").spec == 989.4e12
    assert perf.bf16_peak("NVIDIA L4").spec == 121e12
    assert perf.bf16_peak("NVIDIA L40S") is None  # not an L4
    assert perf.bf16_peak("cpu") is None


def test_matmul_rate_on_cpu():
    assert perf.measure_matmul_flops("cpu", torch.float32, n=128, repeat=2) > 0


def test_gradient_bytes_of_d_and_e():
    d, e = perf.gradient_bytes(full("D")), perf.gradient_bytes(full("E"))
    assert d["total"] == 138_357_544 * 4  # 553.4 MB
    assert d["fc_share"] == pytest.approx(0.894, abs=1e-3)  # the "89% in the FC layers"
    assert e["total"] == 143_667_240 * 4 and e["fc"] == d["fc"]


def test_bucket_plan_and_chosen_cap():
    for arch in ("D", "E"):
        model = full(arch)
        buckets = perf.gradient_buckets(model)
        names = [n for b in buckets for n in b["params"]]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each gradient once
        assert sum(b["bytes"] for b in buckets) == perf.gradient_bytes(model)["total"]
        assert buckets[0]["params"][0] == "classifier.6.weight"  # fc8 is ready first
        assert 5 <= len(buckets) <= 7
    # The reason for 16 MiB (vgg_ray.perf.BUCKET_CAP_MB): at torch's default 25 MiB, E's conv4_1/4_2
    # gradients wait for conv1_1.
    assert perf.tail_bytes(full("D")) == pytest.approx(2.2e6, rel=0.02)
    assert perf.tail_bytes(full("E")) == pytest.approx(4.58e6, rel=0.02)
    assert perf.tail_bytes(full("E"), cap_mb=25) == pytest.approx(23.46e6, rel=0.02)


def test_project_scaling_by_hand():
    step_s = {1: 0.064, 4: 0.017, 8: 0.009}
    p = perf.project_scaling(step_s, grad_bytes=553e6, tail_bytes=2.2e6, busbw={"x": 350e9})["x"]
    ar4 = 1.5 * 553e6 / 350e9  # ring: 2(n-1)/n of the bytes over the bus bandwidth
    assert p["4x_fp32"]["allreduce_s"] == pytest.approx(ar4)
    assert p["4x_bf16"]["allreduce_s"] == pytest.approx(ar4 / 2)
    assert p["4x_fp32"]["speedup_no_overlap"] == pytest.approx(0.064 / (0.017 + ar4))
    # all of it hides behind the backward pass (2/3 of 17 ms) except the tail
    assert p["4x_fp32"]["speedup_overlap"] == pytest.approx(0.064 / (0.017 + 1.5 * 2.2e6 / 350e9))
    slow = perf.project_scaling(step_s, 553e6, 2.2e6, {"net": 11e9})["net"]["8x_fp32"]
    exposed = 1.75 * 553e6 / 11e9 - 2 / 3 * 0.009  # comm-bound: the backward window is too short
    assert slow["speedup_overlap"] == pytest.approx(0.064 / (0.009 + exposed))
    assert perf.ring_allreduce_s(1e9, 1, 1e9) == 0.0



def test_bucket_plan_matches_ddp(gloo_group, monkeypatch):
    # A cap scaled down to the tiny model (~0.26 MB of gradients) gives it several buckets, so the plan of
    # gradient_buckets is checked against DDP's own rebuilt buckets under the train loop's ddp_kwargs.
    monkeypatch.setattr(core_perf, "BUCKET_CAP_MB", 0.02)
    model = tiny()
    ddp = DDP(model, **core_perf.ddp_kwargs())
    assert ddp.gradient_as_bucket_view and ddp.bucket_bytes_cap == int(0.02 * 2**20)
    for _ in range(3):  # rebuilt in gradient-ready order at the 2nd step, logged from the 3rd
        F.cross_entropy(ddp(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    rebuilt = ddp._get_ddp_logging_data()["rebuilt_bucket_sizes"]
    planned = [b["bytes"] for b in perf.gradient_buckets(model, 0.02)]
    assert len(planned) > 3
    assert [int(v) for v in rebuilt.split(",")] == planned
    # gradients are views into the buckets: no second copy of them
    assert all(p.grad is not None for p in ddp.parameters())
