"""The evaluation fan-out (vgg_ray/distributed/evaluate.py) and jobs/eval_ensemble.py on a real local Ray
instance."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from vgg_ray.checkpoints import load_model, model_record, save_atomic
from vgg_ray.config import EvalConfig
from vgg_ray.distributed.evaluate import ACTOR_MACS, Evaluator, pool_size, run_pieces
from vgg_ray.distributed.session import Capacity, capacity
from vgg_ray.evaluation import (
    BOTH,
    DENSE,
    MULTI_CROP,
    PosteriorTable,
    evaluate_images,
    fusion,
    plan_pieces,
    topk_errors,
    work_macs,
)
from vgg_ray.imagenet import shards
from vgg_ray.models import build_vgg
from vgg_ray.transforms import decode_rescaled

from ..jobs import job

pytestmark = pytest.mark.ray

SMOKE = {"crop_size": 32, "train_scale": [256, 256], "preset": "smoke", "width": 1 / 16, "fc_width": 64}


@pytest.fixture(scope="module")
def models(demo_shards, tmp_path_factory) -> dict[str, str]:
    """Two tiny nets (A and B) saved as our checkpoint files, with the demo's mean RGB."""
    manifest = shards.load_manifest(demo_shards)
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for seed, arch in enumerate(("A", "B")):
        torch.manual_seed(seed)
        net = build_vgg(arch, num_classes=manifest["num_classes"], width=1 / 16, fc_width=64, crop_size=32)
        path = folder / f"{arch}.pt"
        save_atomic(model_record(net, SMOKE, manifest["mean_rgb"]), path)
        out[arch] = str(path)
    return out


def test_every_image_once_per_model_method_and_scale_with_a_killed_actor(ray_local, demo_shards, models, tmp_path):
    marker = tmp_path / "killed"

    class DiesOnce(Evaluator):
        """The actor process exits without cleanup, as on a lost node, the first time it gets piece 0."""

        def run(self, piece, model_ref):
            if piece["index"] == 0 and not marker.exists():
                marker.write_text("evaluation actor killed at piece 0\n")
                os._exit(1)
            return Evaluator.run(self, piece, model_ref)

    n = shards.split_rows(demo_shards, "val")
    net, info = load_model(models["A"])
    scales = {256: 37, 384: 55}
    cfg = EvalConfig(models={"A": models["A"]}, workers=2, cpus_per_worker=1, max_retries=2)
    pieces = plan_pieces(n, {"A": scales}, cfg.methods, slice_images=12)
    assert len(pieces) == 2 * 2 * 5  # methods x Q x 60 / 12 slices
    table = PosteriorTable(n, {"A": tuple(scales)}, cfg.methods, net.num_classes)
    refs = {"A": ray.put({"model": net.eval(), "mean_rgb": info["mean_rgb"], "std_rgb": None})}
    run_pieces(cfg, pieces, refs, demo_shards, table, actor_cls=DiesOnce)
    assert marker.exists(), "the fault was never injected"
    assert all((seen == 1).all() for seen in table.seen.values())
    table.check_complete()
    rows = shards.read_rows(demo_shards, "val", 0, n, columns=["image", "label", "key"])
    assert table.keys == rows.column("key").to_pylist()
    assert len(set(table.keys)) == n
    # The assembled posteriors equal the same protocol run in this process, image by image.
    images = rows.column("image").to_pylist()
    for method in (DENSE, MULTI_CROP):
        by_hand = sum(evaluate_images(net, [decode_rescaled(b, px) for b in images], [method],
                                      info["mean_rgb"])[method] for px in scales.values()) / 2
        torch.testing.assert_close(table.posteriors("A", method), by_hand, rtol=1e-4, atol=1e-5)


def test_cpu_pool_is_sized_by_the_work(ray_local, models):
    """On CPUs: one actor per 2 CPUs (8 logical here: 4), but a small evaluation gets only the actors its
    work pays for; an explicit --workers is never cut."""
    net, _ = load_model(models["A"])
    pieces = plan_pieces(60, {"A": {256: 37, 384: 55}}, (DENSE, MULTI_CROP), slice_images=12)
    work = work_macs(pieces, {"A": net})  # by hand in tests/test_evaluation.py
    cfg = EvalConfig(models={"A": models["A"]}, device="cpu")
    cap = capacity()  # this machine's Ray: 8 CPUs, no GPU
    assert pool_size(cfg, len(pieces), cap, False) == (4, {"num_cpus": 2})
    assert pool_size(cfg, len(pieces), cap, False, work)[0] == 1  # the tiny net: ~4.7e9 MACs in all
    assert pool_size(cfg, len(pieces), cap, False, 2.5 * ACTOR_MACS)[0] == 3
    assert pool_size(cfg, len(pieces), cap, False, 100 * ACTOR_MACS)[0] == 4
    assert pool_size(cfg, 2, cap, False, 100 * ACTOR_MACS)[0] == 2  # never more actors than pieces
    explicit = EvalConfig(models={"A": models["A"]}, device="cpu", workers=3, cpus_per_worker=1)
    assert pool_size(explicit, len(pieces), cap, False, work) == (3, {"num_cpus": 1})


def test_gpu_pool_has_one_actor_per_gpu_the_cluster_can_have():
    # cluster/aws.yaml's node types, no GPU node up yet: 32 actors, which wait for the autoscaler
    cap = Capacity(gpus=32, cpus=384, nodes=5, known=True, source="the launcher's node types")
    cfg = EvalConfig(models={"A": "runs/A"}, device="auto")
    assert pool_size(cfg, 500, cap, True) == (32, {"num_gpus": 1, "num_cpus": 8, "max_concurrency": 2})
    assert pool_size(cfg, 10, cap, True)[0] == 10
    unknown = Capacity(gpus=0, cpus=0, nodes=2, known=False, source="the nodes up (KubeRay)")
    given = EvalConfig(models={"A": "runs/A"}, device="gpu", workers=16)
    assert pool_size(given, 500, unknown, True) == (16, {"num_gpus": 1, "num_cpus": 1, "max_concurrency": 2})


def test_eval_ensemble_end_to_end_with_two_models(ray_local, demo_shards, models, tmp_path, capsys):
    out = tmp_path / "eval"
    job("eval_ensemble").main(["--model", f"A={models['A']}", "--model", f"B={models['B']}", "--data", demo_shards,
                 "--out", str(out), "--limit", "20", "--workers", "1"])
    printed = capsys.readouterr().out
    assert "results.md" in printed
    # progress in images (20 images x 3 Q x 2 methods x 2 models), with the pieces done
    assert "evaluating: 100%" in printed and "240/240" in printed and "pieces" in printed
    rows = json.loads((out / "results.json").read_text())
    # Smoke models trained at S = 256: §3.2's Q = {224, 256, 288}.
    full = {(tuple(r["models"]), r["method"]): r for r in rows if len(r["scales"]) == 3}
    assert set(full) == {(m, meth) for m in (("A",), ("B",), ("A", "B")) for meth in (DENSE, MULTI_CROP, BOTH)}
    assert all(r["scales"] == [224, 256, 288] and r["n_images"] == 20 for r in full.values())
    per_q = [r for r in rows if len(r["scales"]) == 1]
    assert len(per_q) == 2 * 2 * 3  # models x network methods x Q
    assert len(rows) == len(full) + len(per_q)

    tables = {p.stem: pq.read_table(p).to_pylist() for p in (out / "posteriors").glob("*.parquet")}
    assert set(tables) == {"A", "B"}
    for name, recs in tables.items():
        for method in (DENSE, MULTI_CROP, BOTH):
            mine = [r for r in recs if r["method"] == method]
            assert len(mine) == 20 and len({r["key"] for r in mine}) == 20
            assert all(r["model"] == name and len(r["probs"]) == 10 for r in mine)
            np.testing.assert_allclose([sum(r["probs"]) for r in mine], 1.0, rtol=1e-5)
    # Table 6's row recomputed from the posteriors files: fusion = mean of the two models' posteriors.
    for method in (DENSE, BOTH):
        a, b = ([r for r in tables[m] if r["method"] == method] for m in ("A", "B"))
        assert [r["key"] for r in a] == [r["key"] for r in b]
        fused = fusion([torch.tensor([r["probs"] for r in a]), torch.tensor([r["probs"] for r in b])])
        top1, top5 = topk_errors(fused, torch.tensor([r["label"] for r in a]))
        assert full[("A", "B"), method]["top1_err"] == pytest.approx(top1, abs=1e-3)
        assert full[("A", "B"), method]["top5_err"] == pytest.approx(top5, abs=1e-3)
    md = (out / "results.md").read_text()
    assert "Table 5" in md and "| A + B | 224,256,288 | multi-crop+dense |" in md
