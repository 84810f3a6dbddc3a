"""vgg_ray/metrics.py: metrics.csv round trip and curves.png."""

from __future__ import annotations

import pytest

from vgg_ray.metrics import plot_curves, read_metrics_csv, write_metrics_csv


def test_metrics_csv_and_curves(tmp_path):
    rows = [{"epoch": e, "lr": 0.01 / 10 ** (e // 2), "train_loss": 2.0 - e / 10, "top1_err": 80.0 - e,
             "top5_err": 50.0 - e, "images_per_s": 100.0, "epoch_s": 3.0, "corrupt_images": 0, "top1_acc": 0.2}
            for e in range(4)]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    back = read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in back] == [0, 1, 2, 3]
    assert back[3]["lr"] == pytest.approx(1e-3) and back[1]["top1_err"] == pytest.approx(79.0)
    assert "top1_acc" not in back[0]
    plot_curves(tmp_path / "curves.png", rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
