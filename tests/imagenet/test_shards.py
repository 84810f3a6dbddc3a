"""vgg_ray/imagenet/shards.py: reading rows across shards and row groups, URIs, footers."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from vgg_ray.imagenet import shards


def test_read_rows_crosses_shards_and_row_groups(converted):
    _, out, _, m = converted
    n = m["counts"]["train"]
    keys = shards.read_rows(out, "train", 0, n, ["key"]).column("key").to_pylist()
    assert len(keys) == n == len(set(keys))
    assert len(shards.row_groups(out, "train")) > m["shards"]["train"]  # several row groups per shard
    for a, b in [(0, 1), (3, n - 2), (n - 1, n), (5, 5)]:
        assert shards.read_rows(out, "train", a, b, ["key"]).column("key").to_pylist() == keys[a:b]
    with pytest.raises(ValueError, match="past the"):
        shards.read_rows(out, "train", 0, n + 1)


@pytest.mark.parametrize("n,parts", [(0, 2), (1, 3), (10, 3), (50000, 8), (7, 7), (5, 1)])
def test_row_ranges_cover_once_and_balance(n, parts):
    r = shards.row_ranges(n, parts)
    assert len(r) == parts and r[0][0] == 0 and r[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
    sizes = [b - a for a, b in r]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 0


def test_load_manifest_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/manifest.json"):
        shards.load_manifest(str(tmp_path))


def test_shard_files_accept_uris(converted):
    _, out, _, m = converted
    uri = "file://" + out
    assert shards.split_rows(uri, "val") == m["counts"]["val"]
    assert all(f.startswith("file://") for f in shards.shard_files(uri, "val"))
    assert shards.load_manifest(uri) == m


def test_shard_footer_records_its_contents(converted):
    _, out, _, _ = converted
    path = shards.shard_paths(out, "val")[0]
    info = json.loads(pq.read_metadata(path).metadata[shards.SHARD_META_KEY])
    assert info["rows"] == pq.read_metadata(path).num_rows and len(info["items_sha"]) == 64
