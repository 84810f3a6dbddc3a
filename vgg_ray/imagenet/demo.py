"""A generated ImageNet-layout tree with a learnable signal, for `--data demo` and for tests. Pure, no Ray.

Layout as the Kaggle ILSVRC release has it: `train/<wnid>/<wnid>_<i>.JPEG`, a flat `val/` with
`LOC_val_solution.csv`, and `LOC_synset_mapping.txt` with class names. Each class has its own background
colour and its own foreground shape: at the smoke preset's 32-pixel crop of a 37-pixel rescale the colour
alone separates the classes, and the shape is there for a net that looks at more than the mean colour.
Sides of 48-160 px with varied aspect ratios exercise the isotropic rescale and draft-mode decode. A few
files carry ImageNet's quirks (greyscale, CMYK, PNG named .JPEG, truncated) so the converter's handling
shows in the manifest. Everything follows from `seed`. `resolve_data("demo")` builds it once per machine,
converted, under ~/.cache/vgg_ray.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vgg_ray.imagenet import convert, shards
from vgg_ray.storage import cache_dir

# (name, background RGB, foreground RGB, shape): backgrounds far apart in colour so that the
# class-mean colours differ by tens of levels (0-255) even after noise and per-image jitter.
CLASSES: list[tuple[str, tuple[int, int, int], tuple[int, int, int], str]] = [
    ("red circle", (200, 40, 40), (250, 230, 60), "circle"),
    ("green square", (40, 170, 50), (240, 240, 240), "square"),
    ("blue triangle", (40, 60, 200), (250, 160, 40), "triangle"),
    ("yellow stripes", (220, 210, 40), (60, 20, 90), "hstripes"),
    ("purple bars", (130, 40, 170), (120, 230, 120), "vstripes"),
    ("cyan ring", (40, 190, 200), (200, 30, 120), "ring"),
    ("orange cross", (240, 130, 30), (30, 30, 120), "cross"),
    ("grey checker", (128, 128, 128), (20, 20, 20), "checker"),
    ("pink dots", (240, 150, 190), (20, 110, 60), "dots"),
    ("dark diamond", (40, 40, 50), (230, 120, 200), "diamond"),
]
SIDE_PX = (48, 160)  # range of each image side, pixels
NOISE_STD = 12.0  # per-pixel Gaussian noise, 0-255 levels
JITTER = 25  # per-image uniform shift of the class colours, +- levels
# 200 train and 50 val images a class: 63 SGD steps an epoch at the smoke preset's batch of 32 (with 50 a
# class, 15 steps: the plateau rule judged epochs too short to learn in and stopped B at chance), and
# top-1 on 500 images moves by 0.2 points an image, not 1.
TRAIN_PER_CLASS, VAL_PER_CLASS = 200, 50
DEMO_VERSION = 3  # bump when this module or the converter changes what the cached demo holds


def wnid(index: int) -> str:
    return f"n{index:08d}"


def render(label: int, rng: np.random.Generator, side_px: tuple[int, int] = SIDE_PX) -> Image.Image:
    """One RGB image of class `label`, each side uniform in `side_px`."""
    _, bg, fg, shape = CLASSES[label]
    w, h = (int(v) for v in rng.integers(side_px[0], side_px[1] + 1, size=2))
    shift = rng.integers(-JITTER, JITTER + 1, size=3)
    bg_c = tuple(int(v) for v in np.clip(np.array(bg) + shift, 0, 255))
    fg_c = tuple(int(v) for v in np.clip(np.array(fg) + shift, 0, 255))
    img = Image.new("RGB", (w, h), bg_c)
    d = ImageDraw.Draw(img)
    r = int(min(w, h) * rng.uniform(0.2, 0.35))  # shape radius, pixels
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    box = (cx - r, cy - r, cx + r, cy + r)
    step = max(4, r // 3)  # period of the textures, pixels
    if shape == "circle":
        d.ellipse(box, fill=fg_c)
    elif shape == "square":
        d.rectangle(box, fill=fg_c)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg_c)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg_c)
    elif shape == "ring":
        d.ellipse(box, outline=fg_c, width=max(3, r // 3))
    elif shape == "cross":
        t = max(3, r // 3)
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fg_c)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fg_c)
    elif shape == "hstripes":
        for y in range(0, h, 2 * step):
            d.rectangle((0, y, w, y + step - 1), fill=fg_c)
    elif shape == "vstripes":
        for x in range(0, w, 2 * step):
            d.rectangle((x, 0, x + step - 1, h), fill=fg_c)
    elif shape == "checker":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                d.rectangle((x, y, x + step - 1, y + step - 1), fill=fg_c)
    elif shape == "dots":
        for y in range(step // 2, h, 2 * step):
            for x in range(step // 2, w, 2 * step):
                d.ellipse((x - step // 2, y - step // 2, x + step // 2, y + step // 2), fill=fg_c)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, NOISE_STD, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def make_tree(root: str | Path, train_per_class: int = 50, val_per_class: int = 10, seed: int = 0,
              side_px: tuple[int, int] = SIDE_PX) -> dict:
    """Write the demo tree under `root`; returns {"train": n, "val": n, "quirks": {key: what}}.
    `side_px` (300, 500) makes ImageNet-sized photos (~100 KB JPEGs), for benchmarks."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "val").mkdir(parents=True, exist_ok=True)
    quirks: dict[str, str] = {}
    n_train = 0
    for c in range(len(CLASSES)):
        folder = root / "train" / wnid(c)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class):
            (folder / f"{wnid(c)}_{i}.JPEG").write_bytes(_jpeg(render(c, rng, side_px)))
            n_train += 1
    # ImageNet's quirks, one each, in training classes 1, 3, 5, 7 (keys relative to root).
    grey = render(3, rng).convert("L")
    cmyk = render(5, rng).convert("CMYK")
    png = io.BytesIO()
    render(7, rng).save(png, format="PNG")
    good = _jpeg(render(1, rng))
    for c, name, data, what in [
        (3, "grey", _jpeg(grey), "greyscale JPEG"),
        (5, "cmyk", _jpeg(cmyk), "CMYK JPEG"),
        (7, "png", png.getvalue(), "PNG named .JPEG"),
        (1, "truncated", good[: len(good) // 2], "truncated JPEG"),
    ]:
        path = root / "train" / wnid(c) / f"{wnid(c)}_{name}.JPEG"
        path.write_bytes(data)
        quirks[path.relative_to(root).as_posix()] = what
        n_train += 1
    # Flat val/ in shuffled class order, labelled by LOC_val_solution.csv as in the Kaggle release.
    labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), val_per_class))
    rows = ["ImageId,PredictionString"]
    for i, c in enumerate(labels, start=1):
        stem = f"ILSVRC2012_val_{i:08d}"
        (root / "val" / f"{stem}.JPEG").write_bytes(_jpeg(render(int(c), rng, side_px)))
        rows.append(f"{stem},{wnid(int(c))} 1 1 20 20")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid(c)} {name}\n" for c, (name, *_) in enumerate(CLASSES)))
    return {"train": n_train, "val": len(labels), "quirks": quirks}


def resolve_data(data: str) -> str:
    """'demo' -> the cached demo shards (built on first use); a path or URI -> itself, once it is checked
    to hold manifest.json."""
    if data == "demo":
        return build_demo(cache_dir() / f"demo-v{DEMO_VERSION}")
    try:
        shards.load_manifest(data)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--data {data!r}: {e}") from None
    return data


def build_demo(folder: Path) -> str:
    """Generate and convert the demo once. The manifest is written last, so a build interrupted by
    anything (or raced by another process) is finished by the next call; the converter is idempotent."""
    out = folder / "shards"
    if (out / shards.MANIFEST).is_file():
        return str(out)
    src = folder / "src"
    if not src.is_dir():  # generated aside and renamed: `src` is complete whenever it exists
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="src-", dir=folder))
        make_tree(tmp, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=0)
        try:
            tmp.rename(src)
        except OSError:  # another process finished first: its tree is identical
            pass
    # 0.5 MB shards of ~6 KB images: several train and val files, so 2-3 workers get different files.
    convert.convert(src, str(out), shard_mb=0.5, stats_sample=1000)
    return str(out)
