"""The pure part of the ImageNet converter: scan a source tree, normalise image bytes, plan and write shards,
and compute the training set's RGB statistics (§2.1's mean, §3.1's PCA colour shift). No Ray here:
`convert(..., map_fn=...)` takes the parallel map from its caller (Ray tasks in jobs/prepare_imagenet.py,
the builtin `map` in tests and for the demo).

Layouts read (keys in the shards and in `skipped` are paths relative to `--src`):
  - `train/<wnid>/*.JPEG`; the classes are the sorted wnid folders (index 0 = n01440764 on ImageNet, the
    order torchvision's weights use);
  - `val/<wnid>/*.JPEG`, or a flat `val/*.JPEG` labelled by `LOC_val_solution.csv` (Kaggle: the first
    wnid of PredictionString is the label);
  - `LOC_synset_mapping.txt` (`<wnid> <names>` per line) for class names, when present;
  - the Kaggle tree `ILSVRC/Data/CLS-LOC/{train,val}` below `--src` is found as well.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from vgg_ray.imagenet import shards
from vgg_ray.transforms import PIL_ERRORS, UndecodableImage

FORMAT = "vgg_ray-imagenet-shards/1"
# Object stores serve 100-500 MB objects at full per-request throughput while keeping request counts low;
# 256 MB gives ImageNet's 140 GB of training JPEGs 1024 shards of ~137 MB (see shard_count): enough files
# for parallel reads on hundreds of CPUs and for a per-epoch file shuffle, few enough that listing and
# footers cost nothing.
DEFAULT_SHARD_MB = 256
# Row groups of 1/8 shard (~32 MB, ~300 ImageNet images): read_rows and Ray Data read this finely.
ROW_GROUPS_PER_SHARD = 8
# RGB statistics on a uniform sample: the mean and 3x3 covariance of ~2e9 pixels from 20k images are
# stable to well under one 0-255 level; the full 1.28M images would cost 60x the decoding for nothing.
DEFAULT_STATS_SAMPLE = 20_000
STATS_SIDE_PX = 256  # decode for statistics at (at least) the paper's S = 256, the scale the net sees
CSV_NAME, SYNSETS_NAME = "LOC_val_solution.csv", "LOC_synset_mapping.txt"


@dataclass(frozen=True, slots=True)  # 1.28M of them in the driver for ImageNet: no per-object dict
class Item:
    key: str  # path relative to --src, posix
    label: int
    size: int  # bytes on disk


@dataclass
class Source:
    root: Path
    classes: list[dict]  # [{"wnid", "name"}] in sorted-wnid order
    items: dict[str, list[Item]]
    skipped: list[dict] = field(default_factory=list)  # files found but not usable as data, with reason
    val_layout: str = ""


# ---- scanning ----

def _split_dir(src: Path, split: str) -> Path | None:
    for d in (src / split, src / "ILSVRC" / "Data" / "CLS-LOC" / split):
        if d.is_dir():
            return d
    return None


def _find(src: Path, near: Path, name: str) -> Path | None:
    """`name` in the split folder, or in any folder between it and --src (the Kaggle zip's top level)."""
    d = near
    while True:
        if (d / name).is_file():
            return d / name
        if d == src or d.parent == d:
            return None
        d = d.parent


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_synset_names(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip() or wnid
    return names


def read_val_solution(path: Path) -> dict[str, str]:
    """ImageId -> wnid, the first wnid of PredictionString (the Kaggle release's label)."""
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or {"ImageId", "PredictionString"} - set(rows.fieldnames):
            raise ValueError(f"{path}: expected the columns ImageId,PredictionString, got {rows.fieldnames}")
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows if r["PredictionString"].strip()}


def scan(src: str | Path) -> Source:
    src = Path(src).resolve()
    train_dir = _split_dir(src, "train")
    val_dir = _split_dir(src, "val")
    if train_dir is None or val_dir is None:
        raise FileNotFoundError(f"--src {src}: expected train/ and val/ folders (or ILSVRC/Data/CLS-LOC/"
                                "{train,val} as in the Kaggle release)")
    wnids = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not wnids:
        raise FileNotFoundError(f"{train_dir}: no class folders (train/<wnid>/*.JPEG)")
    names = read_synset_names(_find(src, train_dir, SYNSETS_NAME))
    classes = [{"wnid": w, "name": names.get(w, w)} for w in wnids]
    index = {w: i for i, w in enumerate(wnids)}
    skipped: list[dict] = []

    def item(p: Path, label: int) -> Item:
        return Item(p.relative_to(src).as_posix(), label, p.stat().st_size)

    train = [item(p, index[w]) for w in wnids for p in _files(train_dir / w)]
    val: list[Item] = []
    sub = sorted(d for d in val_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if sub:
        layout = "class folders val/<wnid>/"
        for d in sub:
            if d.name not in index:
                skipped += [{"key": p.relative_to(src).as_posix(),
                             "reason": f"val class {d.name} has no train/{d.name} folder"} for p in _files(d)]
                continue
            val += [item(p, index[d.name]) for p in _files(d)]
        skipped += [{"key": p.relative_to(src).as_posix(), "reason": "in val/ but not in a class folder"}
                    for p in _files(val_dir)]
    else:
        solution = _find(src, val_dir, CSV_NAME)
        if solution is None:
            raise FileNotFoundError(f"{val_dir} is flat (no <wnid>/ folders) and no {CSV_NAME} was found "
                                    f"there or above it up to {src}: it holds the val labels")
        layout = f"flat val/ labelled by {solution.relative_to(src).as_posix()}"
        labels = read_val_solution(solution)
        for p in _files(val_dir):
            wnid = labels.get(p.stem)
            if wnid is None:
                skipped.append({"key": p.relative_to(src).as_posix(), "reason": f"no row in {CSV_NAME}"})
            elif wnid not in index:
                skipped.append({"key": p.relative_to(src).as_posix(),
                                "reason": f"{CSV_NAME} labels it {wnid}, which has no train/ folder"})
            else:
                val.append(item(p, index[wnid]))
    if not train:
        raise FileNotFoundError(f"{train_dir}: no image files in the class folders")
    return Source(src, classes, {"train": train, "val": val}, skipped, layout)


# ---- image bytes ----

def normalise_image(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """(RGB JPEG bytes, what was done, (width, height)); raises UndecodableImage.

    RGB JPEGs are kept byte for byte (re-encoding would lose quality for nothing). Greyscale and CMYK
    JPEGs and other formats (ImageNet has a PNG named .JPEG) are re-encoded as RGB JPEG, quality 95, so
    every reader sees one format. The whole entropy-coded stream is decoded, at 1/8 scale for kept JPEGs
    (draft mode), so a truncated file is caught here and not in the middle of training.
    """
    try:
        img = Image.open(io.BytesIO(data))
        fmt, mode, size = img.format, img.mode, img.size
        if fmt == "JPEG" and mode == "RGB":
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return data, "kept", size
        img.load()
        if img.mode in ("RGBA", "LA", "P", "PA"):
            # Transparent pixels over white, as browsers show them (convert("RGB") would make them black).
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        rgb = img.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=95)
    except PIL_ERRORS as e:
        raise UndecodableImage(f"cannot decode: {type(e).__name__}: {e}") from None
    what = {"L": "greyscale", "CMYK": "CMYK"}.get(mode, mode)
    return buf.getvalue(), f"{fmt} {what} -> RGB JPEG", size


def pixel_moments(data: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """(pixels, sum [3], sum of outer products [3, 3]) of the RGB values, 0-255, float64."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    f = STATS_SIDE_PX / min(w, h)
    if f < 1:
        img.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
    x = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    return len(x), x.sum(0), x.T @ x


def rgb_statistics(pixels: int, s: np.ndarray, ss: np.ndarray) -> dict:
    """Mean RGB and the eigen-decomposition of the RGB covariance (0-255 units), eigenvalues descending,
    eigenvectors as columns (what vgg_ray.transforms.colour_shift expects), each with a positive sum."""
    mean = s / pixels
    cov = ss / pixels - np.outer(mean, mean)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = val[order], vec[:, order]
    vec = vec * np.where(vec.sum(0) < 0, -1.0, 1.0)  # an eigenvector's sign is arbitrary: fix it
    return {"mean_rgb": mean.tolist(), "eigval": np.clip(val, 0, None).tolist(), "eigvec": vec.tolist()}


# ---- planning and converting shards ----

@dataclass(frozen=True)
class ShardJob:
    split: str
    name: str
    items: tuple[Item, ...]
    stats_keys: frozenset  # keys of this shard in the statistics sample
    row_group_rows: int

    @property
    def items_sha(self) -> str:
        """What the shard must hold: a re-run keeps a finished shard only when this matches its footer
        (same files, sizes, labels and statistics sample; a changed source file changes its size)."""
        text = FORMAT + "\n" + "".join(f"{i.key}\t{i.label}\t{i.size}\t{int(i.key in self.stats_keys)}\n"
                                       for i in self.items)
        return hashlib.sha256(text.encode()).hexdigest()


def key_hash(key: str) -> int:
    """A stable 64-bit hash of an image's key (Python's hash() of a str changes with every process)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def shard_count(total_bytes: int, shard_bytes: int) -> int:
    """The power of two at or above total / shard_bytes: shards hold half to all of shard_bytes, and a
    changed file changes the count only when its split's size crosses a power of two of shard_bytes."""
    n = max(1, math.ceil(total_bytes / max(1, shard_bytes)))
    return 1 << (n - 1).bit_length()


def plan(source: Source, shard_bytes: int, stats_sample: int) -> list[ShardJob]:
    """Put each image in the shard its key hashes to, so that one changed, added or removed file changes
    that file's shard only (the others keep their contents and are not rewritten). Train rows are in
    hash order, a fixed random mix of classes (a shard of one class would make the per-epoch file shuffle
    useless); val rows are in key order within each shard. The statistics sample is the `stats_sample`
    training images of lowest hash: uniform, and as stable as the shards."""
    jobs = []
    for split in shards.SPLITS:
        items = sorted(source.items[split], key=lambda i: key_hash(i.key) if split == "train" else i.key)
        sample: set[str] = set()
        if split == "train":
            sample = {i.key for i in items[:stats_sample]}
        n = shard_count(sum(i.size for i in items), shard_bytes)
        groups: dict[int, list[Item]] = {}
        for it in items:
            groups.setdefault(key_hash(it.key) % n, []).append(it)
        for index, g in sorted(groups.items()):
            mean_size = max(1, sum(i.size for i in g) // len(g))
            rg_rows = max(1, math.ceil(shard_bytes / ROW_GROUPS_PER_SHARD / mean_size))
            jobs.append(ShardJob(split, shards.shard_name(index), tuple(g),
                                 frozenset(i.key for i in g if i.key in sample), rg_rows))
    return jobs


def convert_shard(src: str | Path, out: str, job: ShardJob) -> dict:
    """Read, normalise and write one shard; returns (and stores in the shard's footer) its summary."""
    src = Path(src)
    cols: dict[str, list] = {"image": [], "label": [], "key": [], "width": [], "height": []}
    skipped, converted = [], []
    pixels, s, ss, n_stats = 0, np.zeros(3), np.zeros((3, 3)), 0
    for it in job.items:
        try:
            data, what, (w, h) = normalise_image((src / it.key).read_bytes())
        except (UndecodableImage, OSError) as e:  # OSError: the file itself
            skipped.append({"key": it.key, "reason": str(e)})
            continue
        if what != "kept":
            converted.append({"key": it.key, "what": what})
        if it.key in job.stats_keys:
            n, a, b = pixel_moments(data)
            pixels, s, ss, n_stats = pixels + n, s + a, ss + b, n_stats + 1
        for k, v in (("image", data), ("label", it.label), ("key", it.key), ("width", w), ("height", h)):
            cols[k].append(v)
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("key", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32())])
    table = pa.Table.from_pydict(cols, schema=schema)
    info = {"split": job.split, "name": job.name, "items_sha": job.items_sha, "rows": table.num_rows,
            "skipped": skipped, "converted": converted,
            "stats": {"images": n_stats, "pixels": pixels, "sum": s.tolist(), "sumsq": ss.tolist()}}
    shards.write_shard(out, job.split, job.name, table, info, job.row_group_rows)
    return info


def _run(args: tuple[str, str, ShardJob]) -> dict:
    return convert_shard(*args)


MapFn = Callable[[Callable, list], Iterable]


def convert(src: str | Path, out: str, shard_mb: float = DEFAULT_SHARD_MB,
            stats_sample: int = DEFAULT_STATS_SAMPLE, map_fn: MapFn = map,
            log: Callable[[str], None] = lambda _: None) -> dict:
    """Convert `src` into shards under `out` (a path or URI) and write `out/manifest.json` last.

    Safe to re-run: a shard whose footer matches its planned contents is kept, any other is rewritten;
    temporaries of an interrupted run and shards of an earlier, different plan are deleted; the manifest
    is removed before any shard is written, so a half-converted `out` is never taken for a dataset.
    `map_fn(fn, args)` runs the shard jobs (in any order); builtin `map` runs them here, one by one.
    """
    if shard_mb <= 0 or stats_sample < 0:
        raise ValueError(f"--shard-mb {shard_mb} must be > 0 and --stats-sample {stats_sample} >= 0")
    source = scan(src)
    jobs = plan(source, int(shard_mb * 2**20), stats_sample)
    infos: dict[tuple[str, str], dict] = {}
    todo = []
    for split in shards.SPLITS:
        mine = [j for j in jobs if j.split == split]
        removed = shards.remove_stale(out, split, keep={j.name for j in mine})
        if removed:
            log(f"{split}: removed {len(removed)} stale file(s) of an earlier run")
        for j in mine:
            done = shards.shard_info(out, split, j.name)
            if done and done.get("items_sha") == j.items_sha:
                infos[(split, j.name)] = done
            else:
                todo.append(j)
    log(f"{len(jobs)} shards planned, {len(jobs) - len(todo)} already done, {len(todo)} to write")
    if todo:
        shards.remove_manifest(out)
        for info in map_fn(_run, [(str(source.root), out, j) for j in todo]):
            infos[(info["split"], info["name"])] = info
    manifest = build_manifest(source, [infos[(j.split, j.name)] for j in jobs], shard_mb, stats_sample)
    shards.write_manifest(out, manifest)
    return manifest


def build_manifest(source: Source, infos: list[dict], shard_mb: float, stats_sample: int) -> dict:
    counts = {s: sum(i["rows"] for i in infos if i["split"] == s) for s in shards.SPLITS}
    st = [i["stats"] for i in infos if i["split"] == "train"]
    pixels = sum(x["pixels"] for x in st)
    if pixels == 0:
        raise ValueError(f"{source.root}: no training image could be decoded for the RGB statistics")
    stats = rgb_statistics(pixels, sum(np.array(x["sum"]) for x in st), sum(np.array(x["sumsq"]) for x in st))
    n_stats = sum(x["images"] for x in st)
    return {
        "format": FORMAT,
        "source": str(source.root),
        "classes": source.classes,
        "num_classes": len(source.classes),
        "counts": counts,
        "shards": {s: sum(1 for i in infos if i["split"] == s) for s in shards.SPLITS},
        "columns": {"image": "RGB JPEG bytes", "label": "int64, index into classes",
                    "key": "source path relative to --src", "width": "pixels", "height": "pixels"},
        "val_layout": source.val_layout,
        "skipped": source.skipped + [s for i in infos for s in i["skipped"]],
        "converted": [c for i in infos for c in i["converted"]],
        **stats,
        "stats": {"units": "RGB 0-255; eigvec columns are the eigenvectors, eigval descending",
                  "images": n_stats, "train_images": counts["train"], "sample_limit": stats_sample,
                  "sampled": n_stats < counts["train"], "pixels": pixels,
                  "decoded_smallest_side_px": f">= {STATS_SIDE_PX} (JPEG draft mode), or the image's own"},
        "shard_mb": shard_mb,
    }
