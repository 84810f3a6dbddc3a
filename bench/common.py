"""What the benchmarks share: the data they run on (demo, ImageNet-sized photos, or user shards), the
peer's file-based input (the shards' images written out as files, read by a torchvision ImageFolder), and
the peer's per-image transform, as users write it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from vgg_ray.imagenet import convert, demo, shards
from vgg_ray.storage import cache_dir

PHOTOS_VERSION = 2  # bump when build_photos or the converter changes what the cached photos hold


def result_path(out: str | None, stem: str) -> Path | None:
    """--out of a benchmark, checked before any work starts: None (no file), a file, or a folder that gets
    `<stem>.json` (`auto`: bench/results/; a name ending in "/", or an existing folder). Exits with one
    line naming --out when the folder cannot be made or written to."""
    if not out:
        return None
    path = Path("bench/results/" if out == "auto" else out)
    if out == "auto" or out.endswith("/") or path.is_dir():
        path = path / f"{re.sub(r'[^A-Za-z0-9]+', '-', stem).strip('-').lower()}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot make the folder {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise SystemExit(f"--out {out}: the folder {path.parent} is not writable")
    return path


def resolve(data: str) -> str:
    """--data of a benchmark: demo, photos (ImageNet-sized JPEGs, built once and cached), or shards."""
    if data == "photos":
        return build_photos(cache_dir() / f"photos-v{PHOTOS_VERSION}")
    return demo.resolve_data(data)


def build_photos(folder: Path, unique_per_class: int = 100, copies: int = 10) -> str:
    """ImageNet-sized demo photos (300-500 px a side), each written `copies` times: 10,000 training images
    whose JPEG decode costs what ImageNet's does, built in about a minute once and cached."""
    out = folder / "shards"
    if (out / shards.MANIFEST).is_file():
        return str(out)
    src = folder / "src"
    demo.make_tree(src, train_per_class=unique_per_class, val_per_class=2, seed=0, side_px=(300, 500))
    for f in sorted(src.glob("train/*/*.JPEG")):
        if re.fullmatch(r"n\d+_\d+\.JPEG", f.name):
            for k in range(1, copies):
                shutil.copyfile(f, f.with_name(f"{f.stem}c{k}.JPEG"))
    convert.convert(src, str(out), shard_mb=32, stats_sample=1000)
    shutil.rmtree(src)
    return str(out)


def write_images(root: str, folder: Path, limit: int | None = None) -> int:
    """The first `limit` (default all) training images of the shards as <folder>/<label>/<i>.JPEG, an
    ImageFolder tree for the peer (untimed)."""
    n = shards.split_rows(root, "train")
    n = n if limit is None else min(limit, n)
    for a, b in shards.row_ranges(n, max(1, n // 512)):
        t = shards.read_rows(root, "train", a, b, ["image", "label"])
        for i, (img, label) in enumerate(zip(t.column("image").to_pylist(), t.column("label").to_pylist(),
                                             strict=True)):
            d = folder / f"{label:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{a + i}.JPEG").write_bytes(img)
    return n


def peer_transform(scale: tuple[int, int], crop: int):
    """The per-image transform users write with torchvision (to be given PIL images by ImageFolder's
    default loader): transforms.v2 ToImage, Resize(S) (RandomResize for a jittered S; antialiased), a
    random crop and a random flip, giving uint8 CHW tensors. Ours are ours, not the peer's."""
    from torchvision.transforms import v2

    resize = v2.Resize(scale[0]) if scale[0] == scale[1] else v2.RandomResize(scale[0], scale[1] + 1)
    return v2.Compose([v2.ToImage(), resize, v2.RandomCrop(crop), v2.RandomHorizontalFlip()])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
