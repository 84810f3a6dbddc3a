"""The converter's pure part (scan, quirks, statistics, shards, re-runs) and shards.py's readers."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vgg_ray.imagenet import convert, shards

from .conftest import WNIDS, all_rows, encode, make_tree, picture


def test_manifest_classes_counts_and_skips(converted):
    src, out, want, m = converted
    assert [c["wnid"] for c in m["classes"]] == WNIDS and m["num_classes"] == 3
    assert m["classes"][0]["name"] == "tench, Tinca tinca"
    kept = {k for k, v in want.items() if v is not None}
    assert m["counts"] == {s: sum(k.startswith(s + "/") for k in kept) for s in ("train", "val")}
    assert {s["key"] for s in m["skipped"]} == {k for k, v in want.items() if v is None}
    reasons = {s["key"].rsplit("/", 1)[-1]: s["reason"] for s in m["skipped"]}
    assert "truncated" in reasons["n01443537_trunc.JPEG"].lower()
    if "ILSVRC2012_val_00000099.JPEG" in reasons:
        assert "LOC_val_solution.csv" in reasons["ILSVRC2012_val_00000099.JPEG"]
    assert {c["key"].rsplit("/", 1)[-1] for c in m["converted"]} == {
        "n01440764_grey.JPEG", "n01440764_cmyk.JPEG", "n01443537_png.JPEG"}
    assert m == shards.load_manifest(out)


def test_every_row_right_to_the_image(converted):
    src, out, want, m = converted
    rows = {**all_rows(out, "train"), **all_rows(out, "val")}
    assert set(rows) == {k for k, v in want.items() if v is not None}  # exactly once: dict keys + count
    assert sum(m["counts"].values()) == len(rows)
    converted_keys = {c["key"] for c in m["converted"]}
    for key, (data, label) in rows.items():
        assert label == want[key], key
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.mode == "RGB", key
        if key in converted_keys:
            # Re-encoded, so compare pixels: the colour survives (a CMYK mix-up would invert it).
            ref = Image.open(src / key).convert("RGB")
            assert img.size == ref.size
            diff = np.abs(np.asarray(img, float).mean((0, 1)) - np.asarray(ref, float).mean((0, 1)))
            assert diff.max() < 4, key
        else:
            assert data == (src / key).read_bytes(), key  # RGB JPEGs are kept byte for byte


def test_train_shards_mix_classes_and_val_keeps_key_order(converted):
    _, out, _, m = converted
    assert m["shards"]["train"] > 1 and m["shards"]["val"] >= 1
    labels = shards.read_rows(out, "train", 0, m["counts"]["train"], ["label"]).column("label").to_pylist()
    assert labels != sorted(labels)  # a fixed mix, not class by class
    for path in shards.shard_paths(out, "train"):
        classes = set(pq.read_table(path, columns=["label"]).column("label").to_pylist())
        assert len(classes) > 1 or pq.read_metadata(path).num_rows < 3
    for path in shards.shard_paths(out, "val"):
        keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
        assert keys == sorted(keys)


def test_rgb_statistics_match_numpy(converted):
    _, out, _, m = converted
    # The sample limit (1000) exceeds the training set: statistics over every training pixel.
    assert m["stats"]["images"] == m["counts"]["train"] and not m["stats"]["sampled"]
    images = all_rows(out, "train")
    px = np.concatenate([np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), np.float64).reshape(-1, 3)
                         for d, _ in images.values()])
    assert np.allclose(m["mean_rgb"], px.mean(0), atol=1e-6)
    vec, val = np.array(m["eigvec"]), np.array(m["eigval"])
    assert np.all(np.diff(val) <= 0) and np.allclose(vec.T @ vec, np.eye(3), atol=1e-9)
    cov = np.cov(px.T, bias=True)
    assert np.allclose(vec @ np.diag(val) @ vec.T, cov, rtol=1e-6, atol=1e-6)  # columns are eigvecs


def test_stats_sample_is_limited_and_reported(tmp_path):
    src = tmp_path / "src"
    make_tree(src, "folders")
    m = convert.convert(src, str(tmp_path / "out"), shard_mb=0.01, stats_sample=3)
    # the sample: the 3 training files of lowest key hash, less those that cannot be decoded
    lowest = sorted(convert.scan(src).items["train"], key=lambda i: convert.key_hash(i.key))[:3]
    unusable = {s["key"] for s in m["skipped"]}
    assert m["stats"]["images"] == sum(i.key not in unusable for i in lowest) >= 1
    assert m["stats"]["sampled"] and m["stats"]["sample_limit"] == 3


def test_both_val_layouts_agree(tmp_path):
    labels = {}
    for layout in ("folders", "flat"):
        make_tree(tmp_path / layout, layout)
        out = str(tmp_path / f"out_{layout}")
        convert.convert(tmp_path / layout, out, shard_mb=0.01, stats_sample=0 + 10)
        labels[layout] = sorted((k.rsplit("/", 1)[-1], lab) for k, (_, lab) in all_rows(out, "val").items())
    assert labels["folders"] == labels["flat"]


def test_kaggle_nested_layout(tmp_path):
    make_tree(tmp_path / "ILSVRC" / "Data" / "CLS-LOC", "flat")
    for name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):  # the Kaggle zip's top level
        (tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / name).rename(tmp_path / name)
    src = convert.scan(tmp_path)
    assert len(src.items["val"]) == 5 and src.classes[1]["name"].startswith("goldfish")
    assert src.items["train"][0].key.startswith("ILSVRC/Data/CLS-LOC/train/")


def test_flat_val_without_csv_names_the_file(tmp_path):
    make_tree(tmp_path, "flat")
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        convert.scan(tmp_path)
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        convert.scan(tmp_path / "val")


def test_rerun_writes_nothing_and_gives_the_same_manifest(converted, tmp_path):
    src, out, _, m = converted
    mtimes = {p: os.stat(p).st_mtime_ns for s in ("train", "val") for p in shards.shard_paths(out, s)}
    logs = []
    assert convert.convert(src, out, shard_mb=0.01, stats_sample=1000, log=logs.append) == m
    assert any("0 to write" in line for line in logs)
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes


def test_interrupted_run_resumes_without_partial_or_duplicate_rows(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    want = make_tree(src, "flat")

    def dies_after_two(fn, args):
        for i, a in enumerate(args):
            if i == 2:
                # What a crash mid-write leaves: a temporary with half a shard in it.
                (Path(out) / a[2].split / f".{a[2].name}.tmp-dead").write_bytes(b"PAR1 half")
                raise KeyboardInterrupt
            yield fn(a)

    with pytest.raises(KeyboardInterrupt):
        convert.convert(src, out, shard_mb=0.01, map_fn=dies_after_two)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        shards.load_manifest(out)  # an interrupted output is not a dataset
    assert len(shards.shard_paths(out, "train")) == 2  # finished shards only; the temporary is hidden
    logs = []
    m = convert.convert(src, out, shard_mb=0.01, log=logs.append)
    assert any("2 already done" in line for line in logs)
    rows = {**all_rows(out, "train"), **all_rows(out, "val")}
    assert sum(m["counts"].values()) == len(rows) == sum(v is not None for v in want.values())
    assert not [p for p in (Path(out) / "val").iterdir() if ".tmp-" in p.name]
    # A different shard size is a different plan: the old shards go, nothing is duplicated.
    m2 = convert.convert(src, out, shard_mb=1)
    assert m2["shards"]["train"] == 1 and len(shards.shard_paths(out, "train")) == 1
    assert m2["counts"] == m["counts"]


def test_a_changed_or_added_source_file_rewrites_its_shard_only(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    make_tree(src, "folders")
    m = convert.convert(src, out, shard_mb=0.01)
    assert m["shards"]["train"] > 2

    def stamps():
        return {p: os.stat(p).st_mtime_ns for s in ("train", "val") for p in shards.shard_paths(out, s)}

    def shard_of(key):
        return next(p for p in shards.shard_paths(out, "train")
                    if key in pq.read_table(p, columns=["key"]).column("key").to_pylist())

    key = "train/n01443537/n01443537_2.JPEG"
    new = encode(picture("n01443537", 77))
    assert len(new) != (src / key).stat().st_size
    before = stamps()
    (src / key).write_bytes(new)
    logs = []
    assert convert.convert(src, out, shard_mb=0.01, log=logs.append)["counts"] == m["counts"]
    assert any("1 to write" in line for line in logs)
    after = stamps()
    assert [p for p in before if after[p] != before[p]] == [shard_of(key)]
    assert all_rows(out, "train")[key][0] == new
    # A new file joins the shard its key hashes to; every other shard stays as it was.
    added = "train/n02102040/n02102040_new.JPEG"
    (src / added).write_bytes(encode(picture("n02102040", 78)))
    before = stamps()
    m2 = convert.convert(src, out, shard_mb=0.01)
    after = stamps()
    assert m2["counts"]["train"] == m["counts"]["train"] + 1
    assert [p for p in before if after[p] != before[p]] == [shard_of(added)]
