"""vgg_ray/report.py: result rows against hand-computed errors, and the tables in the paper's layout."""

from __future__ import annotations

import json

import numpy as np

from vgg_ray.evaluation import BOTH, DENSE, MULTI_CROP, PosteriorTable
from vgg_ray.report import result_rows, results_markdown

from .test_evaluation import _filled_table


def test_result_rows_and_tables_against_hand_computed_errors():
    table, post = _filled_table()
    rows = result_rows(table)
    by = {(tuple(r["models"]), r["method"], tuple(r["scales"])): r for r in rows}
    # D dense at Q=256 alone: both right; at 384 both wrong; averaged over Q: [.3,.6,.1] right,
    # [.45,.1,.45] -> argmax 0 (first of the tie), wrong.
    assert (by[("D",), DENSE, (256,)]["top1_err"], by[("D",), DENSE, (384,)]["top1_err"]) == (0.0, 100.0)
    assert by[("D",), DENSE, (256, 384)]["top1_err"] == 50.0
    # D multi-crop+dense: a: ([.3,.6,.1] + [.2,.6,.2]) / 2 right; b: ([.45,.1,.45] + [.6,.3,.1]) / 2 wrong.
    assert by[("D",), BOTH, (256, 384)]["top1_err"] == 50.0
    # Fusion D+E, dense: a: ([.3,.6,.1] + [.7,.2,.1]) / 2 = [.5,.4,.1] wrong; b: [.325,.15,.525] right.
    fused = by[("D", "E"), DENSE, (256, 384)]
    assert fused["top1_err"] == 50.0 and fused["n_images"] == 2
    # Fusion D+E, multi-crop: a: [.3,.45,.25] right; b: [.5,.2,.3] wrong.
    assert by[("D", "E"), MULTI_CROP, (256, 384)]["top1_err"] == 50.0
    assert all(r["top5_err"] == 0.0 for r in rows)  # 3 classes
    # Every model alone per method and Q set, per single Q, and the fusion for each of three methods.
    assert len(rows) == 2 * (2 * 2 + 3) + 3
    assert json.loads(json.dumps(rows)) == rows
    meta = {m: {"arch": m, "train_scale": [256, 512], "scales": [256, 384]} for m in ("D", "E")}
    md = results_markdown(rows, meta, "demo")
    for heading in ("Table 3", "Table 4", "Table 5", "Table 6"):
        assert heading in md
    assert "| D | D | [256;512] | 256,384 | 50.0 / 0.0 |" in md
    assert "| D + E | 256,384 | multi-crop+dense |" in md


def test_undecodable_images_are_counted_and_left_out_of_the_errors():
    table = PosteriorTable(3, {"A": (256,)}, [DENSE], 3)
    probs = np.array([[.8, .1, .1], [0, 0, 0], [.1, .1, .8]], np.float32)  # row 1: its image did not decode
    table.add("A", DENSE, 256, 0, ["a", "b", "c"], [0, 1, 1], probs, undecodable=[1])
    table.check_complete()
    assert table.decoded_keys() == ["a", "c"] and table.decoded_labels().tolist() == [0, 1]
    (row,) = result_rows(table)
    assert (row["n_images"], row["n_undecodable"], row["top1_err"]) == (2, 1, 50.0)
    md = results_markdown([row], {"A": {"arch": "A", "train_scale": [256, 256], "scales": [256]}})
    assert "2 validation images (1 undecodable, left out)" in md


def _row(models, method, scales, top1, top5=5.0):
    return {"models": list(models), "method": method, "scales": list(scales),
            "model_scales": {m: list(scales) for m in models}, "top1_err": top1, "top5_err": top5,
            "n_images": 50_000, "n_undecodable": 0}


def test_results_sit_beside_the_papers_figure_for_the_same_net_s_q_and_method():
    meta = {"D": {"arch": "D", "train_scale": [256, 512], "scales": [256, 384, 512], "preset": "paper"},
            "E": {"arch": "E", "train_scale": [256, 512], "scales": [256, 384, 512], "preset": "paper"},
            "A": {"arch": "A", "train_scale": [256, 256], "scales": [256], "preset": "paper"},
            "tiny": {"arch": "A", "train_scale": [256, 256], "scales": [256], "preset": "smoke"}}
    rows = [_row(["D"], DENSE, [384], 25.0), _row(["D"], DENSE, [512], 26.0),
            _row(["D"], DENSE, [256, 384, 512], 24.0), _row(["D"], MULTI_CROP, [256, 384, 512], 24.1),
            _row(["D"], BOTH, [256, 384, 512], 23.5), _row(["E"], DENSE, [256, 384, 512], 24.2),
            _row(["A"], DENSE, [256], 30.0), _row(["tiny"], DENSE, [256], 70.0),
            _row(["D", "E"], DENSE, [256, 384, 512], 23.0), _row(["D", "A"], DENSE, [256, 384, 512], 40.0)]
    md = results_markdown(rows, meta, "paper")
    # Table 3: D, S in [256;512], Q = 384 -> 25.6 / 8.1; Q = 512 is in no table; A at S = Q = 256 -> 29.6 / 10.4
    assert "| D | D | [256;512] | 384 | dense | 25.0 | 5.0 | 25.6 / 8.1 |" in md
    assert "| D | D | [256;512] | 512 | dense | 26.0 | 5.0 | - |" in md
    assert "| A | A | 256 | 256 | dense | 30.0 | 5.0 | 29.6 / 10.4 |" in md
    # a smoke run is never set beside the paper, though A, S = 256, Q = 256 is in Table 3
    assert "| tiny | A | 256 | 256 | dense | 70.0 | 5.0 | - |" in md
    assert "Not comparable with the paper (not trained with the paper preset): tiny (smoke preset)." in md
    # Table 4 and Table 5: D over Q = {256, 384, 512}: dense 24.8 / 7.5, multi-crop 24.6 / 7.5, both 24.4 / 7.2
    assert "| D | D | [256;512] | 256,384,512 | dense | 24.0 | 5.0 | 24.8 / 7.5 |" in md
    assert ("| D | D | [256;512] | 256,384,512 | 24.0 / 5.0 | 24.1 / 5.0 | 23.5 / 5.0 | "
            "24.8 / 7.5 | 24.6 / 7.5 | 24.4 / 7.2 |") in md
    # Table 6: D + E post-submission, dense 24.0 / 7.1; D + A is in no table
    assert "| D + E | 256,384,512 | dense | 23.0 | 5.0 | 24.0 / 7.1 |" in md
    assert "| D + A | 256,384,512 | dense | 40.0 | 5.0 | - |" in md
