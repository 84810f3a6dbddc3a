"""Local paths and object-storage URIs (s3://, gs://, ...) behind one small interface. No Ray.

Everything a run reads or writes goes through pyarrow's file systems, the layer Ray Train uses for its
checkpoints, so a user may give a path or a URI anywhere. Runs write small files (metrics.csv, curves.png,
best.pt) every epoch: for a URI they are written to a local mirror first and then copied up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or a URI with a scheme."""
    root = str(root)
    if is_uri(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))


def absolute(path: str) -> str:
    """Ray Train and Tune need an absolute storage path (or a URI): resolve relative paths here."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """A path or URI below `base` (a string join keeps a URI's scheme and its double slash intact)."""
    return "/".join([str(base).rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def list_dirs(path: str) -> list[str]:
    """Names of the folders directly in `path` (on object stores: the common prefixes)."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def cache_dir() -> Path:
    """vgg_ray's cache on this machine: the demo data, the benchmark photos, mirrors of URI outputs."""
    return Path(os.environ.get("VGG_RAY_CACHE") or Path.home() / ".cache" / "vgg_ray")


@contextlib.contextmanager
def publish_dir(target: str) -> Iterator[str]:
    """Yield a local directory whose contents end up in `target` (itself, when it is local)."""
    if not is_uri(target):
        Path(target).mkdir(parents=True, exist_ok=True)
        yield target
        return
    mirror = cache_dir() / "mirror" / hashlib.sha1(target.encode()).hexdigest()[:16]
    mirror.mkdir(parents=True, exist_ok=True)
    yield str(mirror)
    fs, path = filesystem(target)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(mirror), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
