"""Local paths and object-storage URIs (s3://, gs://, ...) behind one small interface. No Ray.

Everything a run reads or writes goes through pyarrow's file systems, the layer Ray Train uses for its
checkpoints, so a user may give a path or a URI anywhere. Runs write small files (metrics.csv, curves.png,
best.pt) every epoch: for a URI they are written to a local mirror first and the changed ones copied up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posixpath
import shutil
import tempfile
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


def delete_dir(path: str) -> None:
    """Delete a directory and everything under it; nothing if it does not exist."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        fs.delete_dir(p)


def cache_dir() -> Path:
    """vgg_ray's cache on this machine: the demo data and the benchmark photos."""
    return Path(os.environ.get("VGG_RAY_CACHE") or Path.home() / ".cache" / "vgg_ray")


# URI targets of this process: target -> (local mirror, {relative path: (size, mtime_ns) last uploaded}).
_mirrors: dict[str, tuple[Path, dict[str, tuple[int, int]]]] = {}


@contextlib.contextmanager
def publish_dir(target: str) -> Iterator[str]:
    """Yield a local directory whose contents end up in `target` (itself, when it is local).

    For a URI the directory is a mirror of this process's, kept across calls: files are written there and
    on the way out only those that are new or changed since their last upload are copied up, so a run
    that rewrites metrics.csv every epoch does not upload its unchanged best.pt again.
    """
    if not is_uri(target):
        Path(target).mkdir(parents=True, exist_ok=True)
        yield target
        return
    if target not in _mirrors:
        mirror = Path(tempfile.mkdtemp(prefix="vgg_ray_mirror_"))
        atexit.register(shutil.rmtree, mirror, True)
        _mirrors[target] = (mirror, {})
    mirror, uploaded = _mirrors[target]
    yield str(mirror)
    fs, base = filesystem(target)
    for f in sorted(p for p in mirror.rglob("*") if p.is_file()):
        rel, st = f.relative_to(mirror).as_posix(), f.stat()
        if uploaded.get(rel) == (st.st_size, st.st_mtime_ns):
            continue
        dest = posixpath.join(base, rel)
        fs.create_dir(posixpath.dirname(dest), recursive=True)
        with f.open("rb") as src, fs.open_output_stream(dest) as out:
            shutil.copyfileobj(src, out, 8 * 2**20)
        uploaded[rel] = (st.st_size, st.st_mtime_ns)
