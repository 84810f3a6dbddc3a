"""The on-disk layout of converted ImageNet: `<root>/manifest.json` and `<root>/<split>/part-NNNNN.parquet`.

Pure pyarrow + json (no Ray): the converter writes through it, the Ray Data pipeline and the evaluation
job read through it. `root` is a local path or a URI pyarrow can open (`s3://bucket/imagenet`, `gs://...`, `file://...`).

A shard becomes data only when complete: on file systems it is written under a hidden temporary name and
then moved to its final name, and readers list only visible `*.parquet` names; on object storage it is
uploaded straight to its name, since an object is visible only once its upload completes. Either way an
interrupted conversion never leaves a partial file that a reader would take for data.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vgg_ray.storage import filesystem, join

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
OBJECT_STORES = {"s3", "gcs", "abfs"}  # pyarrow file system type names whose uploads are atomic
# Key of the parquet footer's key-value metadata that carries what the converter needs to resume.
SHARD_META_KEY = b"vgg_ray"


def load_manifest(root: str) -> dict:
    fs, base = filesystem(root)
    path = posixpath.join(base, MANIFEST)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join(root, MANIFEST)} not found: {root!r} is not a converted dataset "
            "(write one with jobs/prepare_imagenet.py --src IMAGENET_DIR --out DIR, or use --data demo)"
        ) from None


def write_manifest(root: str, manifest: dict) -> None:
    _write_atomic(root, MANIFEST, json.dumps(manifest, indent=1).encode())


def remove_manifest(root: str) -> None:
    """Mark `root` incomplete while a conversion (re)writes it."""
    fs, base = filesystem(root)
    path = posixpath.join(base, MANIFEST)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def _is_shard(name: str) -> bool:
    # Hidden (".") and underscore-prefixed names are temporaries or side files, never data.
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def shard_paths(root: str, split: str) -> list[str]:
    """The shard files of `split`, sorted by name, as paths inside `filesystem(root)[0]`."""
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(base, split), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and _is_shard(i.base_name))


def shard_files(root: str, split: str) -> list[str]:
    """Like shard_paths, as paths or URIs that Ray Data's read_parquet accepts without a filesystem."""
    if "://" not in str(root):
        return shard_paths(root, split)
    return [join(root, split, posixpath.basename(p)) for p in shard_paths(root, split)]


def _metadata(fs: pafs.FileSystem, path: str) -> pq.FileMetaData:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata


def shard_row_counts(root: str, split: str) -> list[int]:
    fs, _ = filesystem(root)
    return [_metadata(fs, p).num_rows for p in shard_paths(root, split)]


def split_rows(root: str, split: str) -> int:
    return sum(shard_row_counts(root, split))


def read_rows(root: str, split: str, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows [start, stop) of `split`, counting through the shards in sorted-name order.

    Only the row groups that overlap the range are read (a val shard of 256 MB holds ~10 row groups), so
    a worker reading its slice of the validation set fetches about its share of the bytes.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"read_rows: need 0 <= start <= stop, got [{start}, {stop})")
    fs, _ = filesystem(root)
    pieces: list[pa.Table] = []
    offset = 0  # global index of the current row group's first row
    for path in shard_paths(root, split):
        if offset >= stop:
            break
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            if offset + md.num_rows <= start:
                offset += md.num_rows
                continue
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                lo, hi = max(start, offset), min(stop, offset + n)
                if lo < hi:
                    t = pf.read_row_group(g, columns=columns)
                    pieces.append(t.slice(lo - offset, hi - lo))
                offset += n
    if offset < stop:
        raise ValueError(f"read_rows: [{start}, {stop}) is past the {offset} rows of {join(root, split)}")
    if not pieces:
        return _empty(root, split, columns)
    return pa.concat_tables(pieces)


def row_groups(root: str, split: str) -> list[tuple[str, int, int, int]]:
    """(shard path, row-group index, global index of its first row, rows) for every row group of `split`."""
    fs, _ = filesystem(root)
    out, offset = [], 0
    for path in shard_paths(root, split):
        md = _metadata(fs, path)
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            out.append((path, g, offset, n))
            offset += n
    return out


def read_row_group(root: str, path: str, group: int, columns: list[str] | None = None) -> pa.Table:
    fs, _ = filesystem(root)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group, columns=columns)


def _empty(root: str, split: str, columns: list[str] | None) -> pa.Table:
    fs, _ = filesystem(root)
    paths = shard_paths(root, split)
    if not paths:
        raise FileNotFoundError(f"no *.parquet shards under {join(root, split)}")
    with fs.open_input_file(paths[0]) as f:
        schema = pq.ParquetFile(f).schema_arrow
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return schema.empty_table()


def row_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering [0, n) exactly once; sizes differ by at most one row."""
    if parts < 1 or n < 0:
        raise ValueError(f"row_ranges: need n >= 0 and parts >= 1, got n={n}, parts={parts}")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


# ---- writing (the converter) ----

def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_info(root: str, split: str, name: str) -> dict | None:
    """The converter's metadata of a finished shard, or None when it does not exist."""
    fs, base = filesystem(root)
    path = posixpath.join(base, split, name)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    kv = _metadata(fs, path).metadata or {}
    return json.loads(kv[SHARD_META_KEY]) if SHARD_META_KEY in kv else {}


def write_shard(root: str, split: str, name: str, table: pa.Table, info: dict,
                row_group_rows: int) -> None:
    """Write one shard under a temporary name, then move it to `name` (see the module docstring)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           SHARD_META_KEY: json.dumps(info).encode()})
    # JPEG bytes do not compress: storing them raw saves the CPU of a useless codec on every read.
    compression = {c: ("NONE" if c == "image" else "ZSTD") for c in table.column_names}

    def write(f) -> None:  # streamed: a 256 MB shard is not copied into a second buffer first
        pq.write_table(table, f, row_group_size=max(1, row_group_rows), compression=compression,
                       use_dictionary=[c for c in table.column_names if c != "image"])

    _write_atomic(root, f"{split}/{name}", write)


def _write_atomic(root: str, rel: str, data: bytes | Callable) -> None:
    fs, base = filesystem(root)
    final = posixpath.join(base, rel)
    folder = posixpath.dirname(final)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    if fs.type_name in OBJECT_STORES:
        tmp = final  # an object is visible only once its upload completes; a move would copy 256 MB
    with fs.open_output_stream(tmp) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    if tmp != final:
        fs.move(tmp, final)


def remove_stale(root: str, split: str, keep: set[str]) -> list[str]:
    """Delete temporaries of an interrupted run and shards not in `keep` (a previous, different plan)."""
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(base, split), allow_not_found=True))
    removed = []
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        stale_tmp = i.base_name.startswith(".") and ".tmp-" in i.base_name
        if stale_tmp or (_is_shard(i.base_name) and i.base_name not in keep):
            fs.delete_file(i.path)
            removed.append(i.base_name)
    return removed
