"""vgg_ray/storage.py: paths and URIs alike, and outputs published without re-uploading what did not change."""

from __future__ import annotations

import os
from pathlib import Path

from vgg_ray import storage


def test_paths_and_uris(tmp_path):
    (tmp_path / "run" / "A").mkdir(parents=True)
    (tmp_path / "run" / "A" / "best.pt").write_bytes(b"w")
    uri = "file://" + str(tmp_path / "run")
    assert storage.join("s3://b/runs/", "x", "A") == "s3://b/runs/x/A"  # never s3:/b/...
    assert storage.join(str(tmp_path), "x") == str(tmp_path / "x")
    for base in (str(tmp_path / "run"), uri):
        assert storage.is_dir(base) and storage.list_dirs(base) == ["A"]
        assert storage.is_file(storage.join(base, "A", "best.pt")) and storage.exists(storage.join(base, "A"))
        assert storage.read_bytes(storage.join(base, "A", "best.pt")) == b"w"
        assert not storage.exists(storage.join(base, "B"))


def test_publish_to_a_uri_uploads_only_what_changed(tmp_path):
    target = "file://" + str(tmp_path / "remote" / "A")
    remote = tmp_path / "remote" / "A"
    with storage.publish_dir(target) as out:
        Path(out, "best.pt").write_bytes(b"x" * 1000)
        Path(out, "metrics.csv").write_text("epoch\n0\n")
        Path(out, "tensorboard").mkdir()
        Path(out, "tensorboard", "events.1").write_bytes(b"e1")
    assert (remote / "best.pt").read_bytes() == b"x" * 1000 and (remote / "tensorboard" / "events.1").is_file()
    # mark the uploaded copies: a second upload would overwrite the mark
    for p in (remote / "best.pt", remote / "tensorboard" / "events.1"):
        os.utime(p, ns=(1, 1))
    with storage.publish_dir(target) as out:
        Path(out, "metrics.csv").write_text("epoch\n0\n1\n")
        Path(out, "tensorboard", "events.2").write_bytes(b"e2")
    assert (remote / "metrics.csv").read_text() == "epoch\n0\n1\n" and (remote / "tensorboard" / "events.2").is_file()
    assert os.stat(remote / "best.pt").st_mtime_ns == 1 and os.stat(remote / "tensorboard" / "events.1").st_mtime_ns == 1
