"""jobs/check_cluster.py on a local Ray: every slot's versions, and a real all-reduce between two train
workers (gloo on CPUs here; NCCL on a GPU cluster, not measurable on this machine)."""

from __future__ import annotations

import pytest

from ..jobs import job

pytestmark = pytest.mark.ray


def test_the_check_reports_each_slot_and_the_allreduce_bandwidth(ray_local, capsys):
    out = job("check_cluster").main(["--device", "cpu", "--workers", "2", "--size-mb", "8", "--repeat", "3"])
    text = capsys.readouterr().out
    assert len(out["slots"]) == 2 and all(not s["cuda"] and s["torch"] for s in out["slots"])
    assert out["backend"] == "gloo" and out["nodes"] == 1 and out["bytes"] == 8_000_000
    # the ring model: each worker moves 2(n-1)/n of the buffer, here 8 MB, in the median time
    assert out["busbw"] == pytest.approx(8e6 / out["seconds"]) and out["busbw"] > 0
    assert "slot   0" in text and "slot   1" in text
    assert "all-reduce of 8 MB over 2 workers on 1 node(s), gloo:" in text and "GB/s" in text


def test_gpus_the_cluster_cannot_have_are_refused_in_one_line(ray_local, capsys):
    with pytest.raises(SystemExit) as e:
        job("check_cluster").main(["--device", "gpu"])
    assert e.value.code == 2
    assert "--device gpu: this cluster has no GPU and can add none" in capsys.readouterr().err
