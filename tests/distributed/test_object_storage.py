"""Everything a user gives as a location, on object storage: the shards, the runs, `--init from:` and
`--model`, and the evaluation's outputs, through an S3-compatible server on loopback (moto)."""

from __future__ import annotations

import io
import json

import pyarrow.fs as pafs
import pytest
import ray
import torch

from vgg_ray import storage
from vgg_ray.imagenet import convert, shards
from vgg_ray.metrics import read_metrics_csv

from ..jobs import job

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.s3]


@pytest.fixture(scope="module")
def s3_ray(s3_bucket):
    """A local Ray started once the S3 variables are set, so its workers reach the same server."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        yield s3_bucket
    finally:
        ray.shutdown()


def listing(uri: str) -> set[str]:
    fs, base = storage.filesystem(uri)
    return {i.path[len(base) + 1:] for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))}


def test_convert_train_init_from_and_evaluate_all_on_s3(s3_ray, demo_tree, tmp_path):
    bucket = s3_ray
    data, runs = f"{bucket}/imagenet", f"{bucket}/runs"
    manifest = convert.convert(demo_tree, data, shard_mb=0.2, stats_sample=100)
    assert shards.load_manifest(data) == manifest and shards.split_rows(data, "val") == 60

    smoke = ["--preset", "smoke", "--data", data, "--device", "cpu", "--workers", "2", "--storage", runs]
    a_dir = job("train").main([*smoke, "--arch", "A", "--name", "s3a", "--max-epochs", "2"])["A"]
    assert a_dir == f"{runs}/s3a/A"
    files = listing(a_dir)
    assert {"metrics.csv", "curves.png", "best.pt", "config.json", "done.json"} <= files
    assert any(f.startswith("checkpoint_epoch001/") for f in files)
    local = tmp_path / "metrics.csv"
    local.write_bytes(storage.read_bytes(f"{a_dir}/metrics.csv"))
    assert [r["epoch"] for r in read_metrics_csv(local)] == [0, 1]

    # §3.1: B from A's run on S3 (the path that pathlib turned into s3:/vgg/... before)
    # (at lr 1e-9 an epoch leaves float32 weights where they started, so the copy shows exactly)
    b_dir = job("train").main([*smoke, "--arch", "B", "--name", "s3b", "--max-epochs", "1", "--lr", "1e-9",
                               "--init", f"from:{runs}/s3a/A"])["B"]
    a = torch.load(io.BytesIO(storage.read_bytes(f"{a_dir}/best.pt")), weights_only=True)["model"]
    b = torch.load(io.BytesIO(storage.read_bytes(f"{b_dir}/best.pt")), weights_only=True)["model"]
    for layer in ("features.0", "classifier.0", "classifier.6"):  # conv1_1, fc6, fc8: §3.1's copies
        torch.testing.assert_close(b[f"{layer}.weight"], a[f"{layer}.weight"], rtol=0, atol=1e-4)

    out = f"{bucket}/eval/AB"
    result = job("eval_ensemble").main(["--model", f"A={a_dir}", "--model", f"B={b_dir}", "--data", data,
                                        "--out", out, "--limit", "20", "--workers", "1"])
    assert {"results.md", "results.json", "eval_config.json", "posteriors/A.parquet",
            "posteriors/B.parquet"} <= listing(out)
    rows = json.loads(storage.read_bytes(f"{out}/results.json"))
    assert rows == result["rows"] and {tuple(r["models"]) for r in rows} == {("A",), ("B",), ("A", "B")}
