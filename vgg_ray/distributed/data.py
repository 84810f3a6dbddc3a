"""The Ray Data input pipeline (§3.1 training augmentation, single-crop validation) over converted shards.

train_dataset: read_parquet (file order shuffled per epoch) -> decode + isotropic rescale to S -> random
crop -> random flip, in Ray Data tasks; uint8 NHWC batches go to the train workers, whose device applies
the colour shift and the mean subtraction (vgg_ray.transforms). val_dataset: one rank's contiguous slice of
the val split, every image exactly once across ranks.

Undecodable images (shards written by other tools; ours are checked at conversion) stay in their batch
as a zero image with `decoded` False, so every rank still gets the same number of batches; the train step and
the validation counts leave them out and count them, and the task that met one names it in the job's log.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import posixpath

import numpy as np
import ray
from ray.data import DataContext, FileShuffleConfig

from vgg_ray import transforms
from vgg_ray.imagenet import shards
from vgg_ray.storage import filesystem

log = logging.getLogger(__name__)

# Images decoded per call of the map function: the read task that holds a shard's rows decodes them in
# slices of this many and yields each slice's crops (128 crops of 224 px: 19 MB) as it goes, so memory
# stays bounded whatever the shard size (bench/README.md, "Pipeline settings").
MAP_BATCH = 128
BLOCK_BYTES = 16 * 2**20  # Ray Data's target block size for the training stream (train_dataset)
# Fewest images a training read task is given when the shards are smaller: each task costs its CPU
# ~0.25 s between the end of one shard and the next's first slice (Ray Data's completion poll, the
# next read). Converter shards (256 MB: ~2,300 ImageNet images) are one per task already.
TASK_IMAGES = 1024


# ---- training ----

def files_per_task(n_files: int, n_images: int, cpus: float) -> int:
    """How many consecutive shard files one training read task reads: enough for TASK_IMAGES images, as
    long as the cluster's `cpus` (what it has, or what its autoscaler can add) still get two read tasks
    each. The rows' order stays the same: the tasks read consecutive runs of the epoch's shuffled files."""
    if n_files <= 0 or n_images <= 0 or cpus <= 0:
        return 1
    want = -(-TASK_IMAGES * n_files // n_images)  # ceil(TASK_IMAGES / images per file)
    return max(1, min(want, int(n_files // (2 * cpus))))


def _epoch() -> int:
    # Ray Data counts finished executions of a dataset (its file shuffle reseeds from the same counter:
    # ray/data/_internal/execution/callbacks/execution_idx_update_callback.py); each epoch is one.
    return getattr(DataContext.get_current(), "_execution_idx", 0)


def _decode_all(datas, labels, keys, crop: int, with_keys: bool, sample) -> dict:
    """sample(data, key, row) per image, rendering into its row of the image column -> columns image,
    label, decoded (and key); an undecodable image becomes a zero image with decoded False, named here (Ray
    forwards a task's output to the job's log)."""
    n = len(datas)
    out = {"image": np.zeros((n, crop, crop, 3), np.uint8), "label": np.asarray(labels, dtype=np.int64),
           "decoded": np.ones(n, dtype=bool)}
    for i, (data, key) in enumerate(zip(datas, keys, strict=True)):
        try:
            sample(data, str(key), out["image"][i])
        except transforms.UndecodableImage as e:
            out["image"][i] = 0
            out["decoded"][i] = False
            print(f"vgg_ray: skipped undecodable image {key}: {e}", flush=True)
    if with_keys:
        out["key"] = np.asarray([str(k) for k in keys], dtype=object)
    return out


def _augment(batch: dict, train_scale_px: tuple[int, int], crop: int, seed: int, with_keys: bool) -> dict:
    epoch = _epoch()
    return _decode_all(batch["image"], batch["label"], batch["key"], crop, with_keys,
                       lambda data, key, row: transforms.train_sample(data, train_scale_px, crop,
                                                                      transforms.row_rng(seed, epoch, key), row))


def _draw_windows(batch: dict, train_scale_px: tuple[int, int], crop: int, seed: int, with_keys: bool) -> dict:
    """--decode gpu: the JPEG bytes travel on, with each image's window (S, crop, flip) drawn here from the
    same per-image generator as the CPU path's, for the train worker to decode and render on its device."""
    epoch = _epoch()
    wins, decoded = [], np.ones(len(batch["key"]), dtype=bool)
    for i, (data, key) in enumerate(zip(batch["image"], batch["key"], strict=True)):
        try:
            wins.append(transforms.train_window(transforms.image_size(data), train_scale_px, crop,
                                                transforms.row_rng(seed, epoch, str(key))))
        except transforms.UndecodableImage as e:
            wins.append(None)
            decoded[i] = False
            print(f"vgg_ray: skipped undecodable image {key}: {e}", flush=True)
    out = {"jpeg": np.asarray(list(batch["image"]), dtype=object), "win": transforms.window_array(wins),
           "label": np.asarray(batch["label"], dtype=np.int64), "decoded": decoded}
    if with_keys:
        out["key"] = np.asarray([str(k) for k in batch["key"]], dtype=object)
    return out


def block_order(paths, seed: int, epoch: int) -> np.ndarray:
    """The order in which a read task emits a block's rows in `epoch`, given each row's shard file: each
    file's rows permuted by a draw from (seed, epoch, file name), the files in the order read. Rows meet
    new batch-mates every epoch (the converter wrote each shard in one fixed order; with the file shuffle
    alone ~63% of an image's batch-mates came back the next epoch), and the stream stays reproducible from
    the seed whatever the number of files a task reads (files_per_task: it follows the cluster's CPUs)."""
    paths = np.asarray(paths, dtype=object)
    starts = [0, *[i for i in range(1, len(paths)) if paths[i] != paths[i - 1]], len(paths)]
    order = []
    for a, b in itertools.pairwise(starts):
        name = posixpath.basename(str(paths[a]))
        order.append(a + transforms.row_rng(seed, epoch, name).permutation(b - a))
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


def _in_slices(fn):
    """fn over a whole block, as a generator of fn's output on slices of MAP_BATCH rows, the block's rows
    in this epoch's order (block_order): with map_batches(batch_size=None) Ray Data fuses the map into the
    read task (a batch size would keep them apart: the read may change row counts, so Ray will not fuse a
    map that needs whole batches), and the JPEG bytes never pass through the object store."""
    def sliced(batch: dict, **kwargs):
        order = block_order(batch["path"], kwargs["seed"], _epoch())
        for i in range(0, len(order), MAP_BATCH):
            rows = order[i:i + MAP_BATCH]
            yield fn({k: v[rows] for k, v in batch.items() if k != "path"}, **kwargs)
    sliced.__name__ = fn.__name__
    return sliced


def cpu_capacity() -> float:
    """CPUs up now (0 when this process is not connected to Ray): what the tasks of a dataset made now
    can run on."""
    return float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0


def train_dataset(root: str, train_scale_px: tuple[int, int], crop: int, seed: int,
                  with_keys: bool = False, on_device: bool = False, first_epoch: int = 0) -> ray.data.Dataset:
    """§3.1: columns image (uint8 [crop, crop, 3]), label (int64) and decoded (bool: False for an undecodable
    image), augmented afresh every epoch (`with_keys` adds each image's source key, for tests). With
    `on_device` (--decode gpu) the columns are jpeg, win, label and decoded instead: see _draw_windows.

    The file order is reshuffled every epoch, and the rows within each read task's block (block_order),
    both reproducible from `seed`; the converter wrote each train shard in a fixed random order of all
    classes, so every block is already a class mix. S, crop and flip are drawn per image from (seed,
    epoch, key). The dataset's first execution is epoch `first_epoch` (a run resumed after epoch k-1
    passes k: see resume_epoch), so a restart draws what an uninterrupted run would have. Rows come out
    in a reproducible order only with preserve_order, set here; Ray Train replaces a dataset's execution
    options with its DataConfig's, so pass `dataset_config=train_data_config()` to the TorchTrainer to
    keep it (trainer_inputs gives both).
    """
    lo, hi = train_scale_px
    if lo < crop or hi < lo:
        raise ValueError(f"train scale {train_scale_px} px: need crop {crop} <= S_min <= S_max")
    files = shards.shard_files(root, "train")
    if not files:
        raise FileNotFoundError(f"no train shards under {shards.join(root, 'train')}")
    # Ray 2.60's datasource-V2 parquet reader starts fresh FooterReader actors at every execution, i.e.
    # every epoch; the V1 reader reads footers inside its read tasks. One read task per file: with fewer
    # than 200 files Ray would otherwise split each read into several blocks, and a split read is not
    # fused with the decode below; two operators then share the CPUs by reservation and the decode gets
    # half of them. Small shards are read several to a task (files_per_task). (Figures: bench/README.md,
    # "Pipeline settings".)
    per_task = files_per_task(len(files), shards.load_manifest(root).get("counts", {}).get("train", 0),
                              cpu_capacity())
    ctx = DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(files, shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True),
                                   override_num_blocks=-(-len(files) // per_task), include_paths=True)
    finally:
        ctx.use_datasource_v2 = v2
    ds = ds.select_columns(["image", "label", "key", "path"])  # path: each row's shard, for block_order
    ds = ds.map_batches(_in_slices(_draw_windows if on_device else _augment), batch_size=None,
                        batch_format="numpy",
                        fn_kwargs={"train_scale_px": (lo, hi), "crop": crop, "seed": seed,
                                   "with_keys": with_keys})
    ds.context.execution_options.preserve_order = True
    # Each slice leaves its task as a block of its own (128 crops of 224 px: 19 MB), as it is made: under
    # Ray's default 128 MiB a shard's crops waited for the end of its task, and so did each epoch's first
    # batch (2.3-2.8 s against 1.0-1.2 s on the bench's photos, bench/README.md "Pipeline settings").
    ds.context.target_max_block_size = BLOCK_BYTES
    # Ray Data counts executions from 0 in every new dataset (and in every split coordinator Ray Train
    # builds for a new worker group); the file shuffle and _epoch() read that counter.
    ds.context._execution_idx = first_epoch
    return _quiet(ds)


def resume_epoch(run_dir: str) -> int:
    """The epoch a (re)started worker group of the run in `run_dir` begins with: one past the epoch of
    the checkpoint Ray Train resumes from (the latest it registered, as its checkpoint manager's snapshot
    records it: ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py), or 0."""
    fs, base = filesystem(run_dir)
    try:
        with fs.open_input_stream(posixpath.join(base, "checkpoint_manager_snapshot.json")) as f:
            snapshot = json.loads(f.read())
    except FileNotFoundError:
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    epoch = (latest.get("metrics") or {}).get("epoch")
    if epoch is None:
        log.warning("%s: no epoch in Ray Train's checkpoint snapshot; augmentation restarts at epoch 0", run_dir)
        return 0
    return int(epoch) + 1


def _quiet(ds: ray.data.Dataset) -> ray.data.Dataset:
    """No progress bars or start-up lines from Ray Data for this dataset: the train loop reports each
    epoch in a bar of its own. Ray Data's bars (one per operator, redrawn with every block), forwarded
    from every train worker and every epoch's execution to the job's log, made the demo's log 115 MB
    and 3.5 million lines; a finished execution still logs one line."""
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def train_data_config():
    """Ray Train's DataConfig for train_dataset: ordered output (reproducible from the seed)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options={"train": options})


def trainer_inputs(root: str, train_scale_px: tuple[int, int], crop: int, seed: int, on_device: bool,
                   run_dir: str) -> dict:
    """The TorchTrainer arguments that carry the training stream, together: `datasets` (a factory: Ray
    Train calls it for every worker group it starts, so a restart (a lost worker or node, an elastic
    resize, a resubmission) begins the data's epoch count where the run in `run_dir` resumes) and the
    `dataset_config` without which its order would not be reproducible from the seed."""
    return {"datasets": {"train": functools.partial(_resumed_train_dataset, root, train_scale_px, crop, seed,
                                                    on_device, run_dir)},
            "dataset_config": train_data_config()}


def _resumed_train_dataset(root: str, train_scale_px, crop: int, seed: int, on_device: bool, run_dir: str):
    return train_dataset(root, train_scale_px, crop, seed, on_device=on_device, first_epoch=resume_epoch(run_dir))


# ---- validation ----

def _val_read(batch: dict, root: str, scale_px: int, crop: int, with_keys: bool) -> dict:
    parts = []
    for path, group, first, n in zip(batch["path"], batch["group"], batch["first"], batch["n"], strict=True):
        t = shards.read_row_group(root, str(path), int(group), ["image", "label", "key"]).slice(int(first), int(n))
        parts.append(_decode_all(t.column("image").to_pylist(), t.column("label").to_pylist(),
                                 t.column("key").to_pylist(), crop, with_keys,
                                 lambda data, _, row: transforms.val_sample(data, scale_px, crop, row)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
        return _quiet(ray.data.from_items([{"n": 0}]).map_batches(
            lambda _: _decode_all([], [], [], crop, with_keys, None), batch_format="numpy"))
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    return _quiet(ds.map_batches(_val_read, batch_size=1, batch_format="numpy",
                                 fn_kwargs={"root": root, "scale_px": scale_px, "crop": crop,
                                            "with_keys": with_keys}))
