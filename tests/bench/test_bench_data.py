"""bench/bench_data.py end to end on the demo: the three pipelines, both scales, the decoder table, the CPU
breakdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_bench_data_compares_ours_with_the_peer_and_the_decoders(demo_shards, tmp_path):
    cmd = [sys.executable, "-m", "bench.bench_data", "--data", demo_shards, "--crop", "32", "--seconds", "1",
           "--rounds", "1", "--decoder-images", "8", "--procs", "2", "--batch", "16", "--out", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert [e["train_scale_px"] for e in result["scales"]] == [[37, 37], [37, 73]]  # S = 256 and 256-512
    for e in result["scales"]:
        assert len(e["decoders"]) == 5 and all(d["img_s_per_core"] > 0 for d in e["decoders"])
        assert e["median_img_s"]["ours"] > 0 and e["median_img_s"]["peer"] > 0 and e["ratio_ours_over_peer"] > 0
        assert e["median_img_s"]["ceiling"] > 0 and set(e["share_of_procs_x_per_core"]) == {"ours", "peer", "ceiling"}
        cores = e["cpu_cores_during_ours"]
        assert cores["decode tasks"] > 0  # the decode processes were found and sampled
        # every core of the machine is accounted for: busy by role, or idle
        assert sum(cores.values()) == pytest.approx(os.cpu_count(), rel=0.25)
        assert e["gpu_decode_img_s"] is None  # no GPU here
    assert "ratio ours / peer" in proc.stdout and "ours: simplejpeg" in proc.stdout
