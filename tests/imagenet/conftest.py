"""A small ILSVRC tree with every quirk ImageNet has, and its conversion, for the converter's and the
shard readers' tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgg_ray.imagenet import convert, shards

WNIDS = ["n01440764", "n01443537", "n02102040"]  # deliberately not in creation order below
COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30), "n02102040": (30, 30, 200)}


def encode(arr: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def picture(wnid: str, i: int) -> np.ndarray:
    # seeded from the name's characters (Python's hash() of a str changes with every process)
    rng = np.random.default_rng([*wnid.encode(), i])
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
    manifest = convert.convert(src, out, shard_mb=0.01, stats_sample=1000)
    return src, out, want, manifest
