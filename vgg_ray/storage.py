"""Local paths and object-storage URIs (s3://, gs://, ...) behind one small interface. No Ray.

Runs write small files (metrics.csv, curves.png, best.pt) every epoch. For a URI they are written to a
local mirror first and then copied up with pyarrow's filesystem layer, the same one Ray Train uses for
its checkpoints, so both land side by side under <storage>/<name>/<arch>/.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """Ray Train and Tune need an absolute storage path (or a URI): resolve relative paths here."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


@contextlib.contextmanager
def publish_dir(target: str) -> Iterator[str]:
    """Yield a local directory whose contents end up in `target` (itself, when it is local)."""
    if not is_uri(target):
        Path(target).mkdir(parents=True, exist_ok=True)
        yield target
        return
    import pyarrow.fs as pafs

    mirror = Path.home() / ".cache" / "vgg_ray" / "mirror" / hashlib.sha1(target.encode()).hexdigest()[:16]
    mirror.mkdir(parents=True, exist_ok=True)
    yield str(mirror)
    fs, path = pafs.FileSystem.from_uri(target)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(mirror), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound
