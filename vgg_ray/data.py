"""The Ray Data input pipeline (§3.1 training augmentation, single-crop validation) over converted shards.

train_dataset: read_parquet (file order shuffled per epoch) -> decode + isotropic rescale to S -> random
crop -> random flip, in Ray Data tasks; uint8 NHWC batches go to the train workers, whose device applies
the colour shift and the mean subtraction (vgg_ray.transforms). val_dataset: one rank's contiguous slice of
the val split, every image exactly once across ranks.

Corrupt images (shards written by other tools; ours are checked at conversion) are dropped from their
batch and counted by a named actor of this Ray job, `corrupt_images()` reads the count (see there).
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import ray
from ray.data import DataContext, FileShuffleConfig

from vgg_ray import demo, imagenet, shards, transforms
from vgg_ray.shards import load_manifest  # noqa: F401  (the train loop imports it from here)

# Images per Ray Data map task: a task costs a few ms of scheduling and object-store traffic whatever its
# size, so it should carry ~0.5 s of decoding (128 ImageNet images at S = 256, 3-4 ms each); its output,
# 128 crops of 224 px, is a 19 MB block. On 2 cores 128 gave 1.4x the images/s of 16 (jobs/bench_data.py).
MAP_BATCH = 128
COUNTER_NAME = "vgg_ray.corrupt_images"
KEYS_KEPT = 100  # corrupt keys remembered for the log; the count has no limit
DEMO_VERSION = 1  # bump when vgg_ray.demo or the converter changes what the cached demo holds


# ---- data location ----

def cache_dir() -> Path:
    return Path(os.environ.get("VGG_RAY_CACHE") or Path.home() / ".cache" / "vgg_ray")


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
        tmp = Path(tempfile.mkdtemp(prefix="src-", dir=_mkdir(folder)))
        demo.make_tree(tmp, train_per_class=50, val_per_class=10, seed=0)
        try:
            tmp.rename(src)
        except OSError:  # another process finished first: its tree is identical
            pass
    # 0.5 MB shards of ~6 KB images: ~6 train and 2 val files, so 2-3 workers get different files.
    imagenet.convert(src, str(out), shard_mb=0.5, stats_sample=1000)
    return str(out)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- corrupt-image counter ----

@ray.remote(num_cpus=0)
class _CorruptCounter:
    def __init__(self) -> None:
        self.count = 0
        self.keys: list[str] = []

    def add(self, keys: list[str]) -> None:
        self.count += len(keys)
        self.keys += [k for k in keys if k not in self.keys][: KEYS_KEPT - len(self.keys)]

    def get(self) -> dict:
        return {"count": self.count, "keys": list(self.keys)}


_held: list = []  # this process's handle: Ray ends an actor (named or not) once no handle is left


def _counter():
    """The job's counter, created if missing. Named in the job's namespace, so the driver, Ray Data
    tasks and Train workers of one job share it; train_dataset/val_dataset create it in the process
    that builds the dataset (the driver or a Train worker), which outlives every task reporting to it."""
    try:
        return ray.get_actor(COUNTER_NAME)
    except ValueError:
        pass
    # Keep the creating handle: dropping it would end the actor even while get_actor handles live.
    handle = _CorruptCounter.options(name=COUNTER_NAME, get_if_exists=True).remote()
    _held[:] = [handle]
    return handle


def corrupt_images() -> dict:
    """{"count": images dropped so far by this job's pipelines (every epoch counts again),
    "keys": the first 100 distinct keys}; {"count": 0, "keys": []} when nothing was dropped."""
    try:
        actor = ray.get_actor(COUNTER_NAME)
    except ValueError:
        return {"count": 0, "keys": []}
    return ray.get(actor.get.remote())


def _report_corrupt(keys: list[str]) -> None:
    if not keys:
        return
    ray.get(_counter().add.remote(keys))  # waited for, so the count is current once the batch is out


# ---- training ----

def _epoch() -> int:
    # Ray Data counts finished executions of a dataset (its file shuffle reseeds from the same counter:
    # ray/data/_internal/execution/callbacks/execution_idx_update_callback.py); each epoch is one.
    return getattr(DataContext.get_current(), "_execution_idx", 0)


def _row_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    # Per image, from what the image is rather than where it lands: the same seed gives the same S, crop
    # and flip whatever the block layout or task scheduling, and a new epoch gives new ones.
    return np.random.default_rng([zlib.crc32(key.encode()), epoch, seed])


def _output(images: list, labels: list, keys: list, crop: int, with_keys: bool) -> dict:
    out = {"image": np.stack(images) if images else np.zeros((0, crop, crop, 3), np.uint8),
           "label": np.asarray(labels, dtype=np.int64)}
    if with_keys:
        out["key"] = np.asarray(keys, dtype=object)
    return out


def _augment(batch: dict, train_scale_px: tuple[int, int], crop: int, seed: int, with_keys: bool) -> dict:
    epoch = _epoch()
    images, labels, keys, bad = [], [], [], []
    for data, label, key in zip(batch["image"], batch["label"], batch["key"], strict=True):
        key = str(key)
        try:
            images.append(transforms.train_sample(data, train_scale_px, crop, _row_rng(seed, epoch, key)))
        except Exception:  # PIL raises OSError, SyntaxError, ValueError, ...: count it, never crash
            bad.append(key)
            continue
        labels.append(label)
        keys.append(key)
    _report_corrupt(bad)
    return _output(images, labels, keys, crop, with_keys)


def train_dataset(root: str, train_scale_px: tuple[int, int], crop: int, seed: int,
                  with_keys: bool = False) -> ray.data.Dataset:
    """§3.1: columns image (uint8 [crop, crop, 3]) and label (int64), augmented afresh every epoch
    (`with_keys` adds each image's source key, for tests and debugging).

    The file order is reshuffled every epoch (and reproducible from `seed`); the converter wrote each
    train shard in a fixed random order of all classes, so every block is already a class mix. S, crop
    and flip are drawn per image from (seed, epoch, key). Rows come out in a reproducible order only with
    preserve_order, set here; Ray Train replaces a dataset's execution options with its DataConfig's, so
    pass `dataset_config=train_data_config()` to the TorchTrainer to keep it.
    """
    lo, hi = train_scale_px
    if lo < crop or hi < lo:
        raise ValueError(f"train scale {train_scale_px} px: need crop {crop} <= S_min <= S_max")
    files = shards.shard_files(root, "train")
    if not files:
        raise FileNotFoundError(f"no train shards under {shards.join(root, 'train')}")
    _counter()  # owned by this (long-lived) process, see _counter
    # Ray 2.60's datasource-V2 parquet reader starts fresh FooterReader actors at every execution, i.e.
    # every epoch (~10 s on 2 cores, the whole of a demo epoch); the V1 reader reads footers inside its
    # read tasks. One read task per file: with fewer than 200 files Ray would otherwise split each read
    # into several blocks, and a split read is not fused with the decode below; two operators then
    # share the CPUs by reservation and the decode got half of them (1.5x images/s fused, 2 cores).
    ctx = DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(files, shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True),
                                   override_num_blocks=len(files))
    finally:
        ctx.use_datasource_v2 = v2
    ds = ds.select_columns(["image", "label", "key"])
    ds = ds.map_batches(_augment, batch_size=MAP_BATCH, batch_format="numpy",
                        fn_kwargs={"train_scale_px": (lo, hi), "crop": crop, "seed": seed,
                                   "with_keys": with_keys})
    ds.context.execution_options.preserve_order = True
    return ds


def train_data_config():
    """Ray Train's DataConfig for train_dataset: ordered output (reproducible from the seed)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options={"train": options})


# ---- validation ----

def _val_read(batch: dict, root: str, scale_px: int, crop: int, with_keys: bool) -> dict:
    images, labels, keys, bad = [], [], [], []
    for path, group, first, n in zip(batch["path"], batch["group"], batch["first"], batch["n"], strict=True):
        t = shards.read_row_group(root, str(path), int(group), ["image", "label", "key"])
        t = t.slice(int(first), int(n))
        for data, label, key in zip(t.column("image").to_pylist(), t.column("label").to_pylist(),
                                    t.column("key").to_pylist(), strict=True):
            try:
                images.append(transforms.val_sample(data, scale_px, crop))
            except Exception:
                bad.append(key)
                continue
            labels.append(label)
            keys.append(key)
    _report_corrupt(bad)
    return _output(images, labels, keys, crop, with_keys)


def val_pieces(root: str, rank: int, world_size: int) -> list[dict]:
    """The row-group pieces of rank's contiguous, balanced slice of the val split (row_ranges)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"val_dataset: rank {rank} is not in [0, {world_size})")
    groups = shards.row_groups(root, "val")
    total = groups[-1][2] + groups[-1][3] if groups else 0
    start, stop = shards.row_ranges(total, world_size)[rank]
    pieces = []
    for path, g, g0, n in groups:
        lo, hi = max(start, g0), min(stop, g0 + n)
        if lo < hi:
            pieces.append({"path": path, "group": g, "first": lo - g0, "n": hi - lo})
    return pieces


def val_dataset(root: str, rank: int, world_size: int, scale_px: int, crop: int,
                with_keys: bool = False) -> ray.data.Dataset:
    """Rank's share of the val split, centre crop after rescale to `scale_px`: every val image exactly
    once across ranks (unlike streaming_split(equal=True), which drops up to world_size-1 rows)."""
    if scale_px < crop:
        raise ValueError(f"val scale {scale_px} px is smaller than the crop {crop}")
    pieces = val_pieces(root, rank, world_size)
    if not pieces:  # more ranks than val images: an empty dataset of the right columns
        return ray.data.from_items([{"n": 0}]).map_batches(
            lambda _: _output([], [], [], crop, with_keys), batch_format="numpy")
    _counter()
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    return ds.map_batches(_val_read, batch_size=1, batch_format="numpy",
                          fn_kwargs={"root": root, "scale_px": scale_px, "crop": crop,
                                     "with_keys": with_keys})
