"""The converter's pure part (scan, quirks, statistics, shards, re-runs) and shards.py's readers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vgg_ray import demo, imagenet, shards

WNIDS = ["n01440764", "n01443537", "n02102040"]  # deliberately not in creation order below
COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30), "n02102040": (30, 30, 200)}


def encode(arr: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def picture(wnid: str, i: int) -> np.ndarray:
    rng = np.random.default_rng(hash((wnid, i)) % 2**32)
    h, w = rng.integers(30, 70, size=2)
    base = np.array(COLOURS[wnid], np.float64)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def make_tree(root: Path, val_layout: str) -> dict:
    """A small ILSVRC tree with every quirk; returns {key: expected label or None (skipped)}."""
    want: dict[str, int | None] = {}
    for wnid in reversed(WNIDS):
        d = root / "train" / wnid
        d.mkdir(parents=True)
        for i in range(4):
            (d / f"{wnid}_{i}.JPEG").write_bytes(encode(picture(wnid, i)))
            want[f"train/{wnid}/{wnid}_{i}.JPEG"] = WNIDS.index(wnid)
    quirks = {
        "n01440764_grey.JPEG": encode(picture("n01440764", 9), "L"),
        "n01440764_cmyk.JPEG": encode(picture("n01440764", 10), "CMYK"),
        "n01443537_png.JPEG": encode(picture("n01443537", 11), "RGB", "PNG"),
        "n01443537_trunc.JPEG": encode(picture("n01443537", 12))[:400],
        "n02102040_empty.JPEG": b"",
        "n02102040_text.JPEG": b"<html>404</html>",
    }
    for name, data in quirks.items():
        wnid = name.split("_")[0]
        (root / "train" / wnid / name).write_bytes(data)
        ok = not any(t in name for t in ("trunc", "empty", "text"))
        want[f"train/{wnid}/{name}"] = WNIDS.index(wnid) if ok else None
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn02102040 English springer\n")
    val_labels = [2, 0, 1, 1, 0]
    if val_layout == "folders":
        for i, c in enumerate(val_labels):
            d = root / "val" / WNIDS[c]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(encode(picture(WNIDS[c], 100 + i)))
            want[f"val/{WNIDS[c]}/ILSVRC2012_val_{i + 1:08d}.JPEG"] = c
    else:
        (root / "val").mkdir()
        rows = ["ImageId,PredictionString"]
        for i, c in enumerate(val_labels):
            stem = f"ILSVRC2012_val_{i + 1:08d}"
            (root / "val" / f"{stem}.JPEG").write_bytes(encode(picture(WNIDS[c], 100 + i)))
            rows.append(f"{stem},{WNIDS[c]} 10 10 40 40 {WNIDS[(c + 1) % 3]} 1 1 5 5")
            want[f"val/{stem}.JPEG"] = c
        (root / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes(encode(picture(WNIDS[0], 99)))
        want["val/ILSVRC2012_val_00000099.JPEG"] = None  # no row in the CSV
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return want


def all_rows(out: str, split: str) -> dict:
    t = shards.read_rows(out, split, 0, shards.split_rows(out, split))
    return {k: (img, lab) for k, img, lab in zip(t.column("key").to_pylist(), t.column("image").to_pylist(),
                                                 t.column("label").to_pylist(), strict=True)}


@pytest.fixture(scope="module", params=["folders", "flat"])
def converted(request, tmp_path_factory):
    src = tmp_path_factory.mktemp(f"src_{request.param}")
    want = make_tree(src, request.param)
    out = str(tmp_path_factory.mktemp(f"out_{request.param}"))
    manifest = imagenet.convert(src, out, shard_mb=0.01, stats_sample=1000)
    return src, out, want, manifest


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
    train_keys = shards.read_rows(out, "train", 0, m["counts"]["train"], ["key"]).column("key").to_pylist()
    assert train_keys != sorted(train_keys)  # a fixed permutation, not class by class
    val_keys = shards.read_rows(out, "val", 0, m["counts"]["val"], ["key"]).column("key").to_pylist()
    assert val_keys == sorted(val_keys)


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
    m = imagenet.convert(src, str(tmp_path / "out"), shard_mb=0.01, stats_sample=3)
    assert m["stats"]["images"] == 3 and m["stats"]["sampled"] and m["stats"]["sample_limit"] == 3


def test_both_val_layouts_agree(tmp_path):
    labels = {}
    for layout in ("folders", "flat"):
        make_tree(tmp_path / layout, layout)
        out = str(tmp_path / f"out_{layout}")
        imagenet.convert(tmp_path / layout, out, shard_mb=0.01, stats_sample=0 + 10)
        labels[layout] = sorted((k.rsplit("/", 1)[-1], lab) for k, (_, lab) in all_rows(out, "val").items())
    assert labels["folders"] == labels["flat"]


def test_kaggle_nested_layout(tmp_path):
    make_tree(tmp_path / "ILSVRC" / "Data" / "CLS-LOC", "flat")
    for name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):  # the Kaggle zip's top level
        (tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / name).rename(tmp_path / name)
    src = imagenet.scan(tmp_path)
    assert len(src.items["val"]) == 5 and src.classes[1]["name"].startswith("goldfish")
    assert src.items["train"][0].key.startswith("ILSVRC/Data/CLS-LOC/train/")


def test_flat_val_without_csv_names_the_file(tmp_path):
    make_tree(tmp_path, "flat")
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        imagenet.scan(tmp_path)
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        imagenet.scan(tmp_path / "val")


def test_rerun_writes_nothing_and_gives_the_same_manifest(converted, tmp_path):
    src, out, _, m = converted
    mtimes = {p: os.stat(p).st_mtime_ns for s in ("train", "val") for p in shards.shard_paths(out, s)}
    logs = []
    assert imagenet.convert(src, out, shard_mb=0.01, stats_sample=1000, log=logs.append) == m
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
        imagenet.convert(src, out, shard_mb=0.01, map_fn=dies_after_two)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        shards.load_manifest(out)  # an interrupted output is not a dataset
    assert len(shards.shard_paths(out, "train")) == 2  # finished shards only; the temporary is hidden
    logs = []
    m = imagenet.convert(src, out, shard_mb=0.01, log=logs.append)
    assert any("2 already done" in line for line in logs)
    rows = {**all_rows(out, "train"), **all_rows(out, "val")}
    assert sum(m["counts"].values()) == len(rows) == sum(v is not None for v in want.values())
    assert not [p for p in (Path(out) / "val").iterdir() if ".tmp-" in p.name]
    # A different shard size is a different plan: the old shards go, nothing is duplicated.
    m2 = imagenet.convert(src, out, shard_mb=1)
    assert m2["shards"]["train"] == 1 and len(shards.shard_paths(out, "train")) == 1
    assert m2["counts"] == m["counts"]


def test_a_changed_source_file_rewrites_its_shard_only(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    make_tree(src, "folders")
    m = imagenet.convert(src, out, shard_mb=0.01)
    key = "train/n01443537/n01443537_2.JPEG"
    new = encode(picture("n01443537", 77))
    assert len(new) != (src / key).stat().st_size
    (src / key).write_bytes(new)
    logs = []
    assert imagenet.convert(src, out, shard_mb=0.01, log=logs.append)["counts"] == m["counts"]
    total = m["shards"]["train"] + m["shards"]["val"]
    assert any(f"{total - 1} already done, 1 to write" in line for line in logs)
    assert all_rows(out, "train")[key][0] == new


def test_read_rows_crosses_shards_and_row_groups(converted):
    _, out, _, m = converted
    n = m["counts"]["train"]
    keys = shards.read_rows(out, "train", 0, n, ["key"]).column("key").to_pylist()
    assert len(keys) == n == len(set(keys))
    assert len(shards.row_groups(out, "train")) > m["shards"]["train"]  # several row groups per shard
    for a, b in [(0, 1), (3, n - 2), (n - 1, n), (5, 5)]:
        assert shards.read_rows(out, "train", a, b, ["key"]).column("key").to_pylist() == keys[a:b]
    with pytest.raises(ValueError, match="past the"):
        shards.read_rows(out, "train", 0, n + 1)


@pytest.mark.parametrize("n,parts", [(0, 2), (1, 3), (10, 3), (50000, 8), (7, 7), (5, 1)])
def test_row_ranges_cover_once_and_balance(n, parts):
    r = shards.row_ranges(n, parts)
    assert len(r) == parts and r[0][0] == 0 and r[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
    sizes = [b - a for a, b in r]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 0


def test_load_manifest_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/manifest.json"):
        shards.load_manifest(str(tmp_path))


def test_shard_files_accept_uris(converted):
    _, out, _, m = converted
    uri = "file://" + out
    assert shards.split_rows(uri, "val") == m["counts"]["val"]
    assert all(f.startswith("file://") for f in shards.shard_files(uri, "val"))
    assert shards.load_manifest(uri) == m


def test_shard_footer_records_its_contents(converted):
    _, out, _, _ = converted
    path = shards.shard_paths(out, "val")[0]
    info = json.loads(pq.read_metadata(path).metadata[shards.SHARD_META_KEY])
    assert info["rows"] == pq.read_metadata(path).num_rows and len(info["items_sha"]) == 64


def test_demo_tree_is_deterministic_with_quirks(tmp_path):
    a = demo.make_tree(tmp_path / "a", train_per_class=2, val_per_class=1, seed=3)
    b = demo.make_tree(tmp_path / "b", train_per_class=2, val_per_class=1, seed=3)
    assert a == b and len(a["quirks"]) == 4 and a["train"] == 24 and a["val"] == 10
    for p in (tmp_path / "a").rglob("*.JPEG"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
    sizes = {Image.open(p).size for p in (tmp_path / "a" / "train").rglob("*_0.JPEG")}
    assert len(sizes) > 5 and all(48 <= s <= 160 for wh in sizes for s in wh)


def test_demo_shards_fixture(demo_shards):
    m = shards.load_manifest(demo_shards)
    assert m["num_classes"] == 10 and m["counts"] == {"train": 203, "val": 60}
    assert [s["key"].rsplit("_", 1)[-1] for s in m["skipped"]] == ["truncated.JPEG"]
    assert len(m["converted"]) == 3 and m["shards"]["train"] > 2


def test_pure_modules_do_not_import_ray():
    code = ("import sys, vgg_ray.shards, vgg_ray.imagenet, vgg_ray.demo, vgg_ray.transforms; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
