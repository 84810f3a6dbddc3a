"""vgg_ray/metrics.py: metrics.csv round trip and curves.png."""

from __future__ import annotations

import pytest

from vgg_ray.metrics import lr_decrease_epochs, plot_curves, read_metrics_csv, write_metrics_csv


def test_metrics_csv_and_curves(tmp_path):
    rows = [{"epoch": e, "lr": 0.01 / 10 ** (e // 2), "train_loss": 2.0 - e / 10, "top1_err": 80.0 - e,
             "top5_err": 50.0 - e, "images_per_s": 100.0, "epoch_s": 3.0, "undecodable": 0, "top1_acc": 0.2}
            for e in range(4)]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    back = read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in back] == [0, 1, 2, 3]
    assert back[3]["lr"] == pytest.approx(1e-3) and back[1]["top1_err"] == pytest.approx(79.0)
    assert "top1_acc" not in back[0] and back[0]["undecodable"] == 0
    plot_curves(tmp_path / "curves.png", rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_csv_written_before_the_rename_reads_under_the_current_names(tmp_path):
    # metrics.csv of runs trained before `corrupt_images` became `undecodable`
    (tmp_path / "metrics.csv").write_text(
        "epoch,lr,train_loss,top1_err,top5_err,images_per_s,epoch_s,corrupt_images,started_at_epoch,world_size,"
        "decision\n0,0.01,6.9,99.9,99.5,120,30,2,0,2,improved\n")
    (row,) = read_metrics_csv(tmp_path / "metrics.csv")
    assert row["undecodable"] == 2 and "corrupt_images" not in row
    write_metrics_csv(tmp_path / "again.csv", [row])  # a resumed run writes it out under the new name
    assert read_metrics_csv(tmp_path / "again.csv") == [row]
    assert (tmp_path / "again.csv").read_text().splitlines()[0].split(",")[7] == "undecodable"


def test_curves_mark_the_epochs_where_the_rate_was_divided(tmp_path):
    # §3.1's shape: 1e-2 for epochs 0-3, 1e-3 from 4, 1e-4 from 7; a resumed run repeats a rate (no mark).
    lrs = [1e-2] * 4 + [1e-3] * 3 + [1e-4] * 2
    rows = [{"epoch": e, "lr": lr, "top1_err": 60.0 - e, "top5_err": 30.0 - e, "decision": "improved"}
            for e, lr in enumerate(lrs)]
    assert lr_decrease_epochs(rows) == [4, 7]
    assert lr_decrease_epochs(rows[:4]) == [] and lr_decrease_epochs([]) == []
    assert plot_curves(tmp_path / "curves.png", rows, title="A") == [4, 7]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows[4]["decision"] = "no improvement for 2 epochs: rate divided by 10"
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    assert read_metrics_csv(tmp_path / "metrics.csv")[4]["decision"] == rows[4]["decision"]  # stays text
