"""Training on a multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: one raylet and object
store per node): a head that takes no tasks, as in cluster/, and two 4-CPU worker nodes. A node that dies
mid-run costs at most the epoch in progress, whichever of the run's processes it hosted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import ray._raylet
from ray.cluster_utils import Cluster
from ray.core.generated import autoscaler_pb2

from vgg_ray.metrics import read_metrics_csv

from ..jobs import job

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=False)
    try:
        for _ in range(2):
            c.add_node(num_cpus=4)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def smoke(demo_shards, storage, name, *extra):
    # every node of this cluster sees this machine's disk: --shared-fs says so
    return ["--arch", "A", "--preset", "smoke", "--data", demo_shards, "--device", "cpu", "--workers", "2",
            "--storage", str(storage), "--name", name, "--shared-fs", *extra]


def test_local_paths_are_refused_on_a_multi_node_cluster(cluster, demo_shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        job("train").main(smoke(demo_shards, tmp_path, "local")[:-1])  # without --shared-fs
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--storage {tmp_path} is a local path, and this cluster has 3 nodes" in err and "--shared-fs" in err
    assert not (tmp_path / "local").exists()  # nothing was started


def processes(cluster: Cluster, title: str) -> dict[str, list[psutil.Process]]:
    """{node id: live processes of that worker node whose title starts with ray::<title>}. Ray's workers
    are children of their node's raylet, so the process tree says where an actor lives (the actor table
    does not always list a Tune trial's actor while it runs)."""
    found = {}
    for node in cluster.worker_nodes:
        try:
            raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
            for p in raylet.children(recursive=True):
                if p.cmdline()[:1] and p.cmdline()[0].startswith(f"ray::{title}"):
                    found.setdefault(node.node_id, []).append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
            continue
    return found


def node_of(cluster: Cluster, title: str):
    """The worker node that hosts a live process titled ray::<title>, or None."""
    hosts = processes(cluster, title)
    return next((n for n in cluster.worker_nodes if n.node_id in hosts), None)


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name[len("checkpoint_epoch"):]) for p in run_dir.glob("checkpoint_epoch*"))


def drain_for_preemption_after_epoch_1(cluster: Cluster, run_dir: Path, done: threading.Event, drained: list):
    """Once epoch 1's checkpoint is in storage, drain a node hosting a train worker as a cloud reclaiming
    a spot node does (reason PREEMPTION, a deadline 5 s away), remove it at the deadline, and add a fresh
    node in its place."""
    while not done.wait(0.2):
        if 1 in checkpoints(run_dir):
            node = node_of(cluster, "RayTrainWorker")
            if node is None:
                continue
            gcs = ray._raylet.GcsClient(address=cluster.address)
            deadline_ms = time.time_ns() // 1_000_000 + 5_000
            accepted, why = gcs.drain_node(node.node_id, autoscaler_pb2.DrainNodeReason.Value(
                "DRAIN_NODE_REASON_PREEMPTION"), "spot instance reclaimed (test)", deadline_ms)
            drained.append((node.node_id, accepted, why, read_metrics_csv(run_dir / "metrics.csv")[-1]["epoch"]))
            done.wait(5)
            cluster.remove_node(node, allow_graceful=False)
            cluster.add_node(num_cpus=4)
            return


def test_the_run_lives_on_the_head_and_a_preempted_node_costs_no_failure(cluster, demo_shards, tmp_path):
    # The Tune trial that drives the TorchTrainer (and the Train controller beside it) runs on the head,
    # which is never a spot node; a worker node drained for preemption restarts the worker group from the
    # last checkpoint and is not charged to --max-failures: with --max-failures 0, any failure ends the run.
    done, drained, on_head = threading.Event(), [], []
    run_dir = tmp_path / "spot" / "A"

    def look_at_the_head():
        head = psutil.Process(cluster.head_node.all_processes["raylet"][0].process.pid)
        while not done.wait(0.5) and not on_head:
            titles = [p.cmdline()[0] for p in head.children(recursive=True) if p.cmdline()]
            if any(t.startswith("ray::ImplicitFunc") for t in titles):
                on_head.append(titles)

    threads = [threading.Thread(target=drain_for_preemption_after_epoch_1, args=(cluster, run_dir, done, drained),
                                daemon=True), threading.Thread(target=look_at_the_head, daemon=True)]
    for t in threads:
        t.start()
    try:
        runs = job("train").main(smoke(demo_shards, tmp_path, "spot", "--max-epochs", "4", "--max-failures", "0",
                                       "--plateau-patience", "40"))
    finally:
        done.set()
        for t in threads:
            t.join()
        while len(cluster.worker_nodes) < 2:
            cluster.add_node(num_cpus=4)
        cluster.wait_for_nodes()
    rows = read_metrics_csv(Path(runs["A"]) / "metrics.csv")
    print("drained:", drained, "started at epoch:", [r["started_at_epoch"] for r in rows])
    assert on_head, "the Tune trial never ran on the head"
    assert drained and drained[0][1], f"the drain was not accepted: {drained}"
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # finished, with no failure budget at all
    # one restart, from the last checkpoint registered by the deadline: the epoch in progress when the drain
    # came (the one after the last in metrics.csv then) lost at most; Ray Train lets the workers run until
    # the deadline, so that epoch may have finished and nothing be lost
    restarts = sorted({r["started_at_epoch"] for r in rows} - {0})
    assert len(restarts) == 1 and restarts[0] >= drained[0][3]


# Ray Train grows the group when Ray Data's AutoscalingCoordinator reserves it the new node's CPUs, which
# took 2 to 6 epochs after the node joined in runs here, and once more than 9 (a CI run of 2026-12-05): room.
EPOCHS = 16


def test_an_elastic_run_grows_when_a_node_joins_and_shrinks_when_one_is_lost(cluster, demo_shards, tmp_path):
    # Each 5-CPU node fits one train worker of 3 CPUs and leaves 2 CPUs to Ray Data (with 1, its read and
    # decode operators wait on each other's budget). The run starts on one node (1 worker); a second node
    # joins after epoch 0 (Ray Train grows the group to 2 from the last checkpoint); once an epoch has run
    # on 2 workers, the node that joined is lost (back to 1).
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    cluster.add_node(num_cpus=5)
    cluster.wait_for_nodes()
    run_dir = tmp_path / "elastic" / "A"
    done, events = threading.Event(), {}  # what happened -> the last epoch in metrics.csv then

    def watch():
        joined = None
        while not done.wait(0.2):
            rows = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
            if joined is None and rows:
                joined = cluster.add_node(num_cpus=5)
                events["node joined"] = rows[-1]["epoch"]
            # two epochs on 2 workers: the first one's checkpoint is registered by now
            elif joined is not None and sum(r.get("world_size") == 2 for r in rows) >= 2:
                cluster.remove_node(joined, allow_graceful=False)
                events["node lost"] = rows[-1]["epoch"]
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        runs = job("train").main(smoke(demo_shards, tmp_path, "elastic", "--workers", "1-2", "--cpus-per-worker",
                                       "3", "--resize-check-s", "1", "--max-epochs", str(EPOCHS),
                                       "--plateau-patience", "40"))
    finally:
        done.set()
        watcher.join()
        while len(cluster.worker_nodes) < 2:  # the next test finds the module's cluster as it was
            cluster.add_node(num_cpus=4)
        cluster.wait_for_nodes()
    rows = read_metrics_csv(Path(runs["A"]) / "metrics.csv")
    print("events:", events)
    print("world size per epoch:", [r["world_size"] for r in rows])
    print("started at epoch:", [r["started_at_epoch"] for r in rows])
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))  # the run finished
    sizes = [r["world_size"] for r in rows]
    grew, shrank = sizes.index(2), len(sizes) - sizes[::-1].index(2)
    assert sizes[0] == 1 and set(sizes[grew:shrank]) == {2} and set(sizes[shrank:]) == {1} and shrank < EPOCHS
    # growing restarts the workers from the last checkpoint; so does a loss, which costs at most the epoch
    # in progress (and the one before, if Ray Train had not yet registered its checkpoint)
    started = sorted({r["started_at_epoch"] for r in rows})
    assert len(started) == 3 and started[1] == grew and started[2] == shrank
    assert events["node lost"] + 1 - shrank in (0, 1)
    assert all(r["lr"] == pytest.approx(1.25e-3) for r in rows)  # same schedule, same global batch
