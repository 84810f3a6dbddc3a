"""The Ray Data pipeline over converted shards: transforms inside Ray Data equal them alone, per-epoch
order, exact-once validation, undecodable images, and the demo dataset."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from vgg_ray import transforms as T
from vgg_ray.distributed import data
from vgg_ray.imagenet import convert, shards

from ..jobs import job

pytestmark = pytest.mark.ray
SCALE, CROP = (37, 73), 32  # the smoke preset: §3.1's [256, 512] at a 32-pixel crop


def rows(ds, undecodable: list | None = None) -> list[tuple[str, int, bytes]]:
    """(key, label, image bytes) of the decoded images in the order the dataset yields them; the keys of
    rows marked undecodable (`decoded` False, a zero image) go to `undecodable`."""
    out = []
    for b in ds.iter_batches(batch_size=64, batch_format="numpy"):
        assert b["image"].dtype == np.uint8 and b["image"].shape[1:] == (CROP, CROP, 3)
        assert b["label"].dtype == np.int64 and b["decoded"].dtype == bool
        for k, lab, img, decoded in zip(b["key"], b["label"], b["image"], b["decoded"], strict=True):
            if decoded:
                out.append((str(k), int(lab), img.tobytes()))
            else:
                assert not img.any()
                undecodable.append(str(k))
    return out


def split_table(root: str, split: str) -> pa.Table:
    return shards.read_rows(root, split, 0, shards.split_rows(root, split))


def test_train_epochs_equal_transforms_alone_and_reorder(ray_local, demo_shards):
    t = split_table(demo_shards, "train")
    ds = data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True)
    epochs = [rows(ds), rows(ds)]
    for e, got in enumerate(epochs):
        # The same transforms alone, with the per-image generator of that epoch: identical pixels.
        want = {k: (lab, T.train_sample(img, SCALE, CROP, T.row_rng(5, e, k)).tobytes())
                for k, lab, img in zip(t.column("key").to_pylist(), t.column("label").to_pylist(),
                                       t.column("image").to_pylist(), strict=True)}
        assert len(got) == len(want) == len({k for k, _, _ in got})  # every image once per epoch
        assert {k: (lab, img) for k, lab, img in got} == want
    stats = [np.frombuffer(b"".join(img for _, _, img in ep), np.uint8).reshape(-1, 3) for ep in epochs]
    assert np.abs(stats[0].mean(0) - stats[1].mean(0)).max() < 5  # same distribution, new draws:
    same = sum(a == b for a, b in zip(sorted(epochs[0]), sorted(epochs[1]), strict=True))
    assert same < len(epochs[0]) // 4  # S, crop and flip redrawn every epoch (§3.1)
    order = [[k for k, _, _ in ep] for ep in epochs]
    assert order[0] != order[1]  # a new order every epoch...
    again = data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True)
    assert [k for k, _, _ in rows(again)] == order[0]  # ...reproducible from the seed
    other = data.train_dataset(demo_shards, SCALE, CROP, seed=6, with_keys=True)
    assert [k for k, _, _ in rows(other)] != order[0]


def _mates(keys: list[str], batch: int = 8) -> set[frozenset]:
    return {frozenset((a, b)) for i in range(0, len(keys), batch) for a in keys[i:i + batch]
            for b in keys[i:i + batch] if a < b}


def test_rows_meet_new_batch_mates_every_epoch_and_a_resumed_run_draws_an_uninterrupted_runs_epoch(
        ray_local, demo_shards):
    ds = data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True)
    epochs = [rows(ds) for _ in range(3)]
    keys = [[k for k, _, _ in ep] for ep in epochs]
    pairs = [_mates(k) for k in keys]
    # rows are permuted within each read task's block every epoch, not only the files: few batch-mates
    # of epoch 0 meet again in epoch 1 (with the file shuffle alone, most did: the shards' fixed order)
    assert len(pairs[0] & pairs[1]) < 0.25 * len(pairs[0])
    # a run resumed after epoch 1 (Ray Train's new worker group, a new dataset) starts its count at 2:
    # the same S, crops, flips and order as the uninterrupted run's epoch 2, and not epoch 0's
    resumed = rows(data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True, first_epoch=2))
    assert resumed == epochs[2] and resumed != epochs[0]


def test_block_order_permutes_each_files_rows_per_seed_and_epoch():
    paths = np.array(["s3://b/train/part-00001.parquet"] * 60 + ["s3://b/train/part-00007.parquet"] * 40, dtype=object)
    a = data.block_order(paths, seed=0, epoch=0)
    assert sorted(a[:60]) == list(range(60)) and sorted(a[60:]) == list(range(60, 100))  # within each file
    assert list(data.block_order(paths[60:], seed=0, epoch=0)) == list(a[60:] - 60)  # whatever else the task read
    assert list(data.block_order(paths, seed=0, epoch=0)) == list(a)
    assert list(data.block_order(paths, seed=0, epoch=1)) != list(a) != list(data.block_order(paths, 1, 0))


def test_small_shards_are_read_several_to_a_task_as_long_as_every_cpu_gets_two_tasks():
    assert data.files_per_task(32, 10_000, cpus=2) == 4  # 312 photos a shard: 4 reach 1024 images
    assert data.files_per_task(32, 10_000, cpus=16) == 1  # 32 tasks, 2 per CPU: no grouping
    assert data.files_per_task(32, 10_000, cpus=6) == 2  # grouping stops at two tasks per CPU
    assert data.files_per_task(560, 1_281_167, cpus=2) == 1  # converter shards: ~2,300 images each
    assert data.files_per_task(8, 203, cpus=0) == 1  # no CPUs known (not connected): one file a task


def test_grouped_reads_give_the_same_rows_in_the_same_order(ray_local, demo_shards, monkeypatch):
    def epoch_rows(cpus):
        monkeypatch.setattr(data, "cpu_capacity", lambda: cpus)
        ds = data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True)
        return rows(ds), ds.stats()

    (alone, stats_alone), (grouped, stats_grouped) = epoch_rows(0.0), epoch_rows(2.0)
    assert grouped == alone  # same keys, labels and pixels, in the same order
    # 8 shards, 2 CPUs: 4 fused read+decode tasks of 2 shards each, instead of 8
    assert "ReadParquet->MapBatches(_augment): 8 tasks executed" in stats_alone
    assert "ReadParquet->MapBatches(_augment): 4 tasks executed" in stats_grouped


def test_decode_on_device_carries_the_same_draws(ray_local, demo_shards):
    # --decode gpu: Ray Data passes the JPEG bytes and each image's window; the windows are the draws the
    # CPU path renders, so rendering them (as the device path does, here on the CPU) gives its images.
    cpu = {k: (lab, img) for k, lab, img in rows(data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True))}
    ds = data.train_dataset(demo_shards, SCALE, CROP, seed=5, with_keys=True, on_device=True)
    n = 0
    for b in ds.iter_batches(batch_size=64, batch_format="numpy"):
        assert set(b) == {"jpeg", "win", "label", "decoded", "key"} and b["win"].dtype == np.int32
        assert b["decoded"].all()
        for key, jpeg, win, label in zip(b["key"], b["jpeg"], b["win"], b["label"], strict=True):
            want_label, want = cpu[str(key)]
            got = T.render_window(jpeg, T.Window((int(win[0]), int(win[1])), int(win[2]), int(win[3]), bool(win[4])), CROP)
            assert label == want_label and got.tobytes() == want
            n += 1
    assert n == len(cpu)


def test_train_workers_get_different_images(ray_local, demo_shards):
    # The iterators Ray Train hands 3 workers for datasets={"train": ...} (DataConfig.configure:
    # streaming_split(3, equal=True) under our execution options).
    n = shards.split_rows(demo_shards, "train")
    ds = data.train_dataset(demo_shards, SCALE, CROP, seed=0, with_keys=True)
    splits = data.train_data_config().configure({"train": ds}, world_size=3, worker_handles=None,
                                                worker_node_ids=None)
    its = [s["train"] for s in splits]
    got: list[list[str]] = [[] for _ in its]

    def consume(i):
        got[i] = [str(k) for b in its[i].iter_batches(batch_size=8) for k in b["key"]]

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(len(g) == n // 3 for g in got)
    assert len(set().union(*map(set, got))) == 3 * (n // 3)  # disjoint


def val_keys(root: str, world: int, undecodable: list | None = None) -> list[list[tuple[str, int, bytes]]]:
    return [rows(data.val_dataset(root, r, world, 48, CROP, with_keys=True), undecodable) for r in range(world)]


@pytest.fixture(scope="module")
def one_val_file(demo_tree, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("one_file"))
    convert.convert(demo_tree, out, shard_mb=64, stats_sample=10)
    assert len(shards.shard_paths(out, "val")) == 1
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_val_pieces_cover_every_row_once(demo_shards, one_val_file, world):
    for root in (demo_shards, one_val_file):
        n = shards.split_rows(root, "val")
        per_rank = [sum(p["n"] for p in data.val_pieces(root, r, world)) for r in range(world)]
        assert sum(per_rank) == n and max(per_rank) - min(per_rank) <= 1


@pytest.mark.parametrize("world,which", [(2, "demo_shards"), (3, "one_val_file")])
def test_validation_exactly_once(ray_local, world, which, request):
    root = request.getfixturevalue(which)
    t = split_table(root, "val")
    want = {k: (lab, T.val_sample(img, 48, CROP).tobytes()) for k, lab, img in zip(
        t.column("key").to_pylist(), t.column("label").to_pylist(), t.column("image").to_pylist(), strict=True)}
    per_rank = val_keys(root, world)
    got = [r for rank in per_rank for r in rank]
    assert len(got) == len(want) and {k: (lab, img) for k, lab, img in got} == want
    sizes = [len(r) for r in per_rank]
    assert max(sizes) - min(sizes) <= 1
    # Contiguous slices: rank r holds rows [start_r, stop_r) of the split.
    keys = t.column("key").to_pylist()
    for (a, b), rank in zip(shards.row_ranges(len(keys), world), per_rank, strict=True):
        assert sorted(k for k, _, _ in rank) == sorted(keys[a:b])


def test_undecodable_images_are_counted_and_skipped(ray_local, demo_shards, tmp_path):
    # Shards written by another tool: one garbage and one truncated image in train, one garbage in val.
    root = str(tmp_path)
    spoilt = {}
    for split, spoil in (("train", (3, 10)), ("val", (7,))):
        t = split_table(demo_shards, split)
        images = t.column("image").to_pylist()
        for i in spoil:
            images[i] = b"garbage" if i != 10 else images[i][: len(images[i]) // 3]
            spoilt[t.column("key")[i].as_py()] = split
        t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
        shards.write_shard(root, split, shards.shard_name(0), t, {}, row_group_rows=16)
    shards.write_manifest(root, shards.load_manifest(demo_shards))
    undecodable_train, undecodable_val = [], []
    train = rows(data.train_dataset(root, SCALE, CROP, seed=0, with_keys=True), undecodable_train)
    assert len(train) + len(undecodable_train) == shards.split_rows(root, "train")  # the batch counts stay even
    val = [r for rank in val_keys(root, 2, undecodable_val) for r in rank]
    assert len(val) + len(undecodable_val) == shards.split_rows(root, "val")
    assert sorted(undecodable_train) == sorted(k for k, s in spoilt.items() if s == "train")
    assert undecodable_val == [k for k, s in spoilt.items() if s == "val"]
    assert not set(spoilt) & {k for k, _, _ in train + val}


def test_prepare_imagenet_job_fans_out_to_the_same_shards(ray_local, demo_tree, demo_shards, tmp_path, capsys):
    m = job("prepare_imagenet").main(["--src", demo_tree, "--out", str(tmp_path), "--shard-mb", "0.2", "--stats-sample", "100"])
    assert m == shards.load_manifest(demo_shards)  # Ray tasks or builtin map: one result
    for split in ("train", "val"):
        assert split_table(str(tmp_path), split).equals(split_table(demo_shards, split))
    out = capsys.readouterr().out
    n = len(shards.shard_paths(demo_shards, "train")) + len(shards.shard_paths(demo_shards, "val"))
    assert "converting: 100%" in out and f" {n}/{n} " in out and "images/s" in out  # progress, rate, ETA
    assert "1 files skipped" in out
