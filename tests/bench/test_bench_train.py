"""bench/bench_train.py end to end on CPU (smoke preset): synthetic, Ray Data and plain-PyTorch-peer paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import bench_train, perf
from vgg_ray.models import build_vgg

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"arch", "path", "variant", "devices", "batch", "micro_batch", "images_per_s", "step_s",
            "first_step_s", "first_batch_s", "peak_mem_gib", "mfu", "mfu_vs_matmul", "compile_s", "loss",
            "images"}
MAIN_VARIANTS = {s.variant for s in bench_train.PATHS.values()}


def tiny(arch: str = "D") -> torch.nn.Module:
    return build_vgg(arch, num_classes=10, width=1 / 16, fc_width=256, crop_size=32)  # the smoke preset's net


def _check_result(result: dict, paths: set[str]) -> None:
    assert {"device", "preset", "peak", "results", "ratios", "decode_img_s_per_core", "batch"} <= set(result)
    assert result["device"] == "cpu" and result["preset"] == "smoke"
    assert result["peak"]["matmul_flops"] > 0 and result["decode_img_s_per_core"] > 0
    rows = {r["path"]: r for r in result["results"] if r["variant"] in MAIN_VARIANTS}
    assert set(rows) == paths
    for r in rows.values():
        assert set(r) == ROW_KEYS
        for k in ("images_per_s", "step_s", "first_step_s", "mfu_vs_matmul", "loss"):
            assert r[k] > 0, (r["path"], k, r[k])
        assert r["images"] == 3 * r["batch"]
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no bf16 peak, no GPU memory on a CPU


def test_bench_cpu_synthetic_and_peer(demo_shards, tmp_path):
    cmd = [sys.executable, "-m", "bench.bench_train", "--preset", "smoke", "--arch", "D",
           "--data", demo_shards, "--paths", "synthetic,peer", "--steps", "3", "--warmup", "1", "--procs", "1",
           "--project-scaling", "--allreduce-world", "2", "--out", f"{tmp_path}/results/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    (out,) = (tmp_path / "results").iterdir()
    assert out.name == f"{result['date']}-cpu.json" and json.loads(out.read_text()) == result
    assert any(line.startswith("D    synthetic") for line in lines)  # the table came first
    _check_result(result, {"synthetic", "peer"})
    assert result["ratios"]["D"]["peer_over_synthetic"] > 0
    sc = result["scaling"]["D"]
    assert sc["allreduce_measured"]["backend"] == "gloo" and sc["allreduce_measured"]["seconds"] > 0
    assert sc["grad_bytes"] == perf.gradient_bytes(tiny())["total"]
    labels = list(sc["projection"])
    assert any(k.startswith("measured: 2 x gloo") for k in labels)
    assert all(k.startswith(("assumed:", "measured:")) for k in labels)
    for scenario in sc["projection"].values():
        assert all(v["speedup_overlap"] >= v["speedup_no_overlap"] > 0 for k, v in scenario.items() if k != "busbw")


def test_readme_path_table_is_the_benchmarks():
    readme = (ROOT / "bench" / "README.md").read_text()
    start = readme.index("| path | what feeds the step |")
    table = readme[start:readme.index("\n\n", start)]
    assert table == bench_train.paths_table(), \
        "bench/README.md's path table is not bench_train.PATHS'; put this in its place:\n" + bench_train.paths_table()


def test_a_path_that_cannot_run_is_named_with_its_reason(monkeypatch, capsys):
    def broken(b, m):
        raise ImportError("No module named 'ray'")

    monkeypatch.setitem(bench_train.PATHS, "ray", bench_train.PATHS["ray"]._replace(run=broken))
    result = {"results": []}
    bench_train.run_path(SimpleNamespace(), SimpleNamespace(arch="D"), "ray", result)
    assert result == {"results": [], "errors": ["D ray: ImportError: No module named 'ray'"]}
    assert "D ray: ImportError" in capsys.readouterr().out


def test_bench_rejects_bad_flags():
    for argv, match in [(["--arch", "D,X"], "--arch"), (["--paths", "synthetic,gpu"], "--paths"),
                        (["--batch", "30", "--micro-batch", "40"], "micro-batch")]:
        with pytest.raises(SystemExit, match=match):
            bench_train.main(argv)


@pytest.mark.ray
def test_bench_ray_data_path(ray_local, demo_shards):
    # In this process (the peer path spawns processes: it runs in a subprocess above).
    threads = torch.get_num_threads()
    try:
        result = bench_train.main(["--preset", "smoke", "--arch", "A", "--data", demo_shards,
                                     "--paths", "synthetic,ray,ray-gpu", "--steps", "3", "--warmup", "1"])
    finally:
        torch.set_num_threads(threads)
    _check_result(result, {"synthetic", "ray", "ray-gpu"})
    assert result["ratios"]["A"]["ray_over_synthetic"] > 0
    assert result["ratios"]["A"]["ray-gpu_over_ray"] > 0  # --decode gpu's path, decoded here on the CPU
    assert "errors" not in result
