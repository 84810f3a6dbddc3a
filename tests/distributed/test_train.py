"""jobs/train.py end to end on a real local Ray instance: 2 CPU workers, smoke preset, demo shards."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import ray
import torch

from vgg_ray.distributed import data as vdata
from vgg_ray.metrics import read_metrics_csv

from ..jobs import job

pytestmark = [pytest.mark.ray, pytest.mark.slow]



def smoke(demo_shards, storage, name, *extra):
    return ["--preset", "smoke", "--data", demo_shards, "--device", "cpu", "--workers", "2", "--storage", str(storage),
            "--name", name, *extra]


@pytest.fixture(scope="module")
def run_a(ray_local, demo_shards, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    runs = job("train").main(smoke(demo_shards, storage, "two", "--arch", "A", "--max-epochs", "2"))
    return Path(runs["A"])


def test_two_epoch_run_writes_every_output(run_a):
    rows = read_metrics_csv(run_a / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["decision"] == "improved" and rows[1]["decision"]  # the last epoch's too
    for r in rows:
        assert r["lr"] == pytest.approx(1.25e-3) and 0 <= r["top1_err"] <= 100 and r["top5_err"] <= r["top1_err"]
        assert r["train_loss"] > 0 and r["images_per_s"] > 0 and r["epoch_s"] > 0
    assert (run_a / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run_a / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in run_a.glob("checkpoint_epoch*")) == ["checkpoint_epoch000", "checkpoint_epoch001"]
    best = torch.load(run_a / "best.pt", weights_only=True)
    assert best["arch"] == "A" and best["config"]["preset"] == "smoke"
    assert best["top1_err"] == pytest.approx(min(r["top1_err"] for r in rows), abs=1e-4)
    weights = torch.load(run_a / "checkpoint_epoch001" / "model.pt", weights_only=True)
    assert weights["epoch"] == 1
    # a worker group Ray Train starts for this run now (a resubmission, a restart) counts the data's epochs
    # from 2, read from the checkpoint manager's snapshot that Ray Train wrote
    assert vdata.resume_epoch(str(run_a)) == 2 and vdata.resume_epoch(str(run_a.parent / "elsewhere")) == 0


def test_plateau_schedule_ends_the_run_and_init_from_copies_layers(run_a, demo_shards, tmp_path):
    # lr 1e-9 leaves float32 weights unchanged, so accuracy never improves: the Tune callback divides the
    # rate three times and ends the trial at the next plateau, long before --max-epochs 20.
    # (--decode gpu on these CPU workers: the JPEGs decoded in the train worker, as on a GPU node)
    runs = job("train").main(smoke(demo_shards, tmp_path, "plateau", "--arch", "B", "--lr", "1e-9", "--decode", "gpu",
                            "--plateau-patience", "1", "--max-epochs", "20", "--init", f"from:{run_a}"))
    rows = read_metrics_csv(Path(runs["B"]) / "metrics.csv")
    assert [r["lr"] for r in rows] == pytest.approx([1e-9, 1e-9, 1e-10, 1e-11, 1e-12], rel=1e-6)
    # each epoch's decision, as the Tune callback took it, in metrics.csv (the last one written at the end)
    assert rows[0]["decision"] == "improved"
    assert all("rate divided by 10" in r["decision"] for r in rows[1:4])
    assert rows[4]["decision"] == "plateau after 3 decreases: stop"
    # §3.1: B took A's first four conv layers and its FC layers; the rest is B's own fresh init.
    a = torch.load(run_a / "best.pt", weights_only=True)["model"]
    b = torch.load(Path(runs["B"]) / "best.pt", weights_only=True)["model"]
    index_a = {"conv1_1": "features.0", "conv2_1": "features.3", "conv3_1": "features.6",
               "conv3_2": "features.8", "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
    index_b = {"conv1_1": "features.0", "conv1_2": "features.2", "conv2_1": "features.5",
               "conv3_1": "features.10", "conv3_2": "features.12", "fc6": "classifier.0",
               "fc7": "classifier.3", "fc8": "classifier.6"}
    for layer, key in index_a.items():
        # 5 epochs at <= 1e-9 move a weight by ~1e-6 (raw-pixel gradients are large); fresh inits differ by ~0.1
        torch.testing.assert_close(b[index_b[layer] + ".weight"], a[key + ".weight"], rtol=0, atol=1e-4,
                                   msg=layer)
    # conv4_1 has the same shape in both nets but is not one of the transferred layers
    assert a["features.11.weight"].shape == b["features.15.weight"].shape
    assert (a["features.11.weight"] - b["features.15.weight"]).abs().max() > 1e-2


def alive_actors(class_name: str) -> list[dict]:
    return [a for a in ray._private.state.actors().values()
            if a["ActorClassName"] == class_name and a["State"] == "ALIVE"]


def test_killed_worker_resumes_from_the_last_checkpoint_and_leaves_nothing_behind(ray_local, demo_shards,
                                                                                  tmp_path):
    # Once Ray Train has registered epoch 1's checkpoint, one train worker process is killed (SIGKILL, as a lost
    # node would end it), from outside the product, while the run goes on in this thread.
    snapshot = tmp_path / "crash" / "A" / "checkpoint_manager_snapshot.json"
    killed: list[int] = []
    done = threading.Event()

    def kill_a_worker():
        while not done.wait(0.2):
            if snapshot.is_file() and "checkpoint_epoch001" in snapshot.read_text():
                workers = alive_actors("RayTrainWorker")
                if workers:
                    os.kill(workers[-1]["Pid"], signal.SIGKILL)
                    killed.append(workers[-1]["Pid"])
                    return

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        runs = job("train").main(smoke(demo_shards, tmp_path, "crash", "--arch", "A", "--max-epochs", "4"))
    finally:
        done.set()
        killer.join()
    assert killed, "no train worker was killed"
    rows = read_metrics_csv(Path(runs["A"]) / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # the first worker group ran from epoch 0 and was killed after epoch 1's checkpoint; the restarted
    # group resumed from the last checkpoint the controller had registered: at most the epoch in
    # progress lost, never a restart from scratch
    assert rows[0]["started_at_epoch"] == 0 and rows[-1]["started_at_epoch"] in (2, 3)
    # the schedule continued: every epoch at the initial rate (patience 4 cannot run out in 4 epochs)
    assert all(r["lr"] == pytest.approx(1.25e-3) for r in rows)
    # nothing of the finished run stays on the cluster: no schedule board, no train workers
    assert not alive_actors("ScheduleBoard") and not alive_actors("RayTrainWorker")
