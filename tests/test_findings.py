"""vgg_ray/findings.py: the paper's findings checked on results.json rows, as report.result_rows writes them."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_ray.evaluation import NETWORK_METHODS, PosteriorTable
from vgg_ray.findings import HOLDS, REVERSED, WITHIN_NOISE, Results, check_findings, findings_markdown, noise
from vgg_ray.report import result_rows

N, CLASSES = 400, 10
Q256 = (224, 256, 288)


def evaluation(accuracy: dict[str, dict], archs: dict[str, str], seed: int = 0):
    """Rows and meta of one evaluation in which model m is right, at each Q and method, on the images
    rng-chosen with probability accuracy[m][method] (other images: a wrong class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    table = PosteriorTable(N, {m: Q256 for m in accuracy}, NETWORK_METHODS, CLASSES)
    for m, by_method in accuracy.items():
        for method in NETWORK_METHODS:
            for q in Q256:
                right = rng.random(N) < by_method[method]
                guess = np.where(right, labels, (labels + 1 + rng.integers(0, CLASSES - 1, N)) % CLASSES)
                probs = np.full((N, CLASSES), 0.02, np.float32)
                probs[np.arange(N), guess] = 0.82
                table.add(m, method, q, 0, [f"k{i}" for i in range(N)], labels, probs)
    meta = {m: {"arch": archs[m], "train_scale": [256, 256], "scales": list(Q256), "preset": "smoke"}
            for m in accuracy}
    return result_rows(table), meta


def test_deeper_lrn_scales_methods_and_fusion_are_each_checked():
    rows, meta = evaluation({"A": {"dense": 0.70, "multi-crop": 0.72}, "B": {"dense": 0.85, "multi-crop": 0.86},
                             "A-LRN": {"dense": 0.71, "multi-crop": 0.71}},
                            {"A": "A", "B": "B", "A-LRN": "A-LRN"})
    found = check_findings(Results([(rows, meta)]))
    by = {(f["finding"], f["compared"].split(" vs ")[0].split()[0]): f for f in found}
    deeper = by["deeper nets err less", "B"]
    assert deeper["compared"] == "B S=256 Q=256 dense vs A S=256 Q=256 dense" and deeper["verdict"] == HOLDS
    assert deeper["paper"] == "Table 3: A 29.6 > B 28.7"
    assert by["LRN does not help", "A-LRN"]["verdict"] == HOLDS  # 1 point apart: within the noise
    assert {f["finding"] for f in found} >= {"several test scales help", "multi-crop & dense beats either alone",
                                             "fusion beats each member"}
    assert all(f["verdict"] in (HOLDS, WITHIN_NOISE, REVERSED) for f in found)
    text = findings_markdown(found)
    assert "| deeper nets err less | Table 3: A 29.6 > B 28.7 | B S=256 Q=256 dense vs A S=256 Q=256 dense |" in text


def test_a_deeper_net_that_errs_more_is_reported_reversed():
    rows, meta = evaluation({"A": {"dense": 0.90, "multi-crop": 0.9}, "B": {"dense": 0.60, "multi-crop": 0.6}},
                            {"A": "A", "B": "B"})
    (deeper,) = [f for f in check_findings(Results([(rows, meta)])) if f["finding"] == "deeper nets err less"]
    assert deeper["verdict"] == REVERSED and deeper["top1_err"][0] > deeper["top1_err"][1] + deeper["noise"]


def test_below_the_papers_crop_single_nets_are_compared_by_multi_crop():
    # at a 32-pixel crop dense evaluation's score map is mostly padding: here dense says B is worse,
    # multi-crop (crops the size the nets trained on) that it is better
    rows, meta = evaluation({"A": {"dense": 0.90, "multi-crop": 0.80}, "B": {"dense": 0.60, "multi-crop": 0.95}},
                            {"A": "A", "B": "B"})
    for m in meta.values():
        m["crop_size"] = 32
    (deeper,) = [f for f in check_findings(Results([(rows, meta)])) if f["finding"] == "deeper nets err less"]
    assert deeper["compared"] == "B S=256 Q=256 multi-crop vs A S=256 Q=256 multi-crop"
    assert deeper["verdict"] == HOLDS


def test_noise_is_one_standard_error_of_the_difference():
    assert noise(10, 10, 500) == pytest.approx(100 * (2 * 0.09 / 500) ** 0.5)
    assert noise(27, 27, 50_000) == pytest.approx(0.28, abs=0.01)


def test_models_without_a_training_scale_are_left_out():
    rows, meta = evaluation({"A": {"dense": 0.7, "multi-crop": 0.7}, "tv": {"dense": 0.9, "multi-crop": 0.9}},
                            {"A": "A", "tv": "B"})
    meta["tv"]["train_scale"] = None  # torchvision weights: no S to compare at
    found = check_findings(Results([(rows, meta)]))
    assert not any("tv" in f["compared"] or f["finding"] == "deeper nets err less" for f in found)
    assert "No finding" in findings_markdown([])
