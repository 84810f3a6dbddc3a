"""vgg_ray/report.py: result rows against hand-computed errors, and the tables in the paper's layout."""

from __future__ import annotations

import json

from vgg_ray.evaluation import BOTH, DENSE, MULTI_CROP
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
