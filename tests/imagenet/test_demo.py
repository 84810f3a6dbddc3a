"""vgg_ray/imagenet/demo.py: the generated tree, its conversion, and the cached demo dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vgg_ray import transforms as T
from vgg_ray.imagenet import demo, shards

CROP = 32


def split_table(root: str, split: str):
    return shards.read_rows(root, split, 0, shards.split_rows(root, split))


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


def test_demo_builds_once_with_a_learnable_signal(tmp_path, monkeypatch):
    monkeypatch.setenv("VGG_RAY_CACHE", str(tmp_path))
    root = demo.resolve_data("demo")
    m = shards.load_manifest(root)
    assert m["num_classes"] == 10 and m["counts"] == {"train": 2003, "val": 500}
    assert [c["wnid"] for c in m["classes"]] == sorted(c["wnid"] for c in m["classes"])
    assert len(m["skipped"]) == 1 and len(m["converted"]) == 3
    stamp = (tmp_path / f"demo-v{demo.DEMO_VERSION}" / "shards" / "manifest.json").stat().st_mtime_ns
    assert demo.resolve_data("demo") == root  # cached: not rebuilt
    assert (tmp_path / f"demo-v{demo.DEMO_VERSION}" / "shards" / "manifest.json").stat().st_mtime_ns == stamp

    def colours(split):
        t = split_table(root, split)
        x = np.stack([T.val_sample(d, 37, CROP).reshape(-1, 3).mean(0) for d in t.column("image").to_pylist()])
        return x, np.array(t.column("label").to_pylist())

    xt, yt = colours("train")
    means = np.stack([xt[yt == c].mean(0) for c in range(10)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=2)[~np.eye(10, dtype=bool)]
    assert gaps.min() > 20  # class-mean colours are tens of levels apart (0-255)
    xv, yv = colours("val")
    nearest = np.linalg.norm(xv[:, None] - means[None], axis=2).argmin(1)
    assert (nearest == yv).mean() > 0.8  # even a nearest-mean-colour rule learns it from 32-px crops


def test_resolve_data_names_a_path_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--data '{tmp_path}'.*manifest.json"):
        demo.resolve_data(str(tmp_path))
