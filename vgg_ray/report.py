"""What an evaluation reports: result rows (each model at each Q, over its Q set, and every fusion), the
Markdown tables in the layout of Tables 3-6, and the per-image posterior files. No Ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgg_ray.evaluation import (
    BOTH,
    METHODS,
    PosteriorTable,
    available_methods,
    fusion,
    topk_errors,
)
from vgg_ray.paper import paper_fusion, paper_result
from vgg_ray.scales import train_scale_of


def result_rows(table: PosteriorTable) -> list[dict]:
    """Rows for results.json: each model alone at each single Q (Table 3) and over its Q set (Tables 4-5),
    per method; and every fusion of two or more models over their Q sets (Table 6)."""
    names = list(table.scales)
    labels = table.decoded_labels()
    n_decoded, n_undecodable = int(table.decoded.sum()), int(table.undecodable.sum())

    def row(models, method, errs):
        scales = sorted({q for m in models for q in table.scales[m]})
        return {"models": list(models), "method": method, "scales": scales,
                "model_scales": {m: list(table.scales[m]) for m in models},
                "top1_err": round(errs[0], 4), "top5_err": round(errs[1], 4),
                "n_images": n_decoded, "n_undecodable": n_undecodable}

    rows = []
    methods = available_methods(table.methods)
    for name in names:
        qs = table.scales[name]
        if len(qs) > 1:
            for method in table.methods:
                for q in qs:
                    rows.append({**row([name], method, table.single_scale_errors(name, method, q)),
                                 "scales": [q], "model_scales": {name: [q]}})
        for method in methods:
            rows.append(row([name], method, topk_errors(table.posteriors(name, method), labels)))
    for size in range(2, len(names) + 1):
        for group in itertools.combinations(names, size):
            for method in methods:
                fused = fusion([table.posteriors(m, method) for m in group])
                rows.append(row(group, method, topk_errors(fused, labels)))
    return rows


# ---- results.md in the layout of Tables 3-6 ----

def _s(train_scale) -> str:
    if not train_scale:
        return "-"
    lo, hi = train_scale
    return str(lo) if lo == hi else f"[{lo};{hi}]"


def _q(scales) -> str:
    return ",".join(str(q) for q in scales)


def _paper_figure(models: Sequence[str], method: str, scales: Sequence[int], model_scales: Mapping,
                  meta: Mapping[str, Mapping]) -> str:
    """The paper's 'top-1 / top-5' for the same configuration, S, Q and method (Tables 3-6), or '-'.
    Only paper-preset models compare: a smoke run beside the paper's figure would mislead."""
    if not all(meta[m].get("preset") == "paper" for m in models):
        return "-"
    if len(models) == 1:
        m = meta[models[0]]
        fig = paper_result(m.get("arch"), m.get("train_scale"), scales, method)
    else:
        fig = paper_fusion([(meta[m].get("arch"), meta[m].get("train_scale"), model_scales[m]) for m in models],
                           method)
    return "-" if fig is None else f"{fig[0]:.1f} / {fig[1]:.1f}"


def _row_paper(r: Mapping, meta: Mapping[str, Mapping]) -> str:
    return _paper_figure(r["models"], r["method"], r["scales"], r.get("model_scales") or {}, meta)


def results_markdown(rows: Sequence[Mapping], meta: Mapping[str, Mapping], title: str = "") -> str:
    """Markdown tables in the paper's layout, each row beside the paper's figure where one of Tables 3-6
    has the same configuration, S, Q and method. `meta[name]` has `arch`, `train_scale` (or None),
    `scales` and `preset`."""
    def err(r):
        return f"{r['top1_err']:.1f}", f"{r['top5_err']:.1f}"

    def model_cells(name):
        return f"{name} | {meta[name].get('arch', '?')} | {_s(meta[name].get('train_scale'))}"

    single = [r for r in rows if len(r["models"]) == 1]
    full = [r for r in single if r["scales"] == list(meta[r["models"][0]]["scales"])]
    lines = [f"# {title or 'Evaluation'}", ""]
    n = rows[0]["n_images"] if rows else 0
    undecodable = rows[0].get("n_undecodable", 0) if rows else 0
    lines += [f"{n} validation images" + (f" ({undecodable} undecodable, left out)" if undecodable else "")
              + "; errors in percent, top-1 / top-5. S and Q in paper units (pixels at a 224 crop). "
              "'paper': the paper's figure for the same configuration, S, Q and method (Tables 3-6, on "
              "ILSVRC-2012's 50,000 validation images), '-' where it has none.", ""]
    not_paper = [name for name in meta if meta[name].get("preset") != "paper"]
    if not_paper:
        lines += ["Not comparable with the paper (not trained with the paper preset): "
                  + ", ".join(f"{name} ({meta[name].get('preset') or 'unknown'} preset)" for name in not_paper)
                  + ".", ""]

    per_q = [r for r in single if len(r["scales"]) == 1]
    multi = [r for r in full if r["method"] != BOTH and len(r["scales"]) > 1]
    for heading, chosen in (("Single test scale (layout of Table 3)", per_q),
                            ("Multiple test scales (layout of Table 4)", multi)):
        if chosen:
            lines += [f"## {heading}", "",
                      "| model | arch | S | Q | method | top-1 err | top-5 err | paper top-1 / top-5 |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {model_cells(r['models'][0])} | {_q(r['scales'])} | {r['method']} | "
                      f"{' | '.join(err(r))} | {_row_paper(r, meta)} |" for r in chosen]
            lines.append("")
    methods = [m for m in METHODS if any(r["method"] == m for r in full)]
    if full:
        shown = [m.replace("+", " & ") for m in methods]
        lines += ["## Evaluation methods (layout of Table 5)", "",
                  "| model | arch | S | Q | " + " | ".join(shown) + " | "
                  + " | ".join(f"paper {m}" for m in shown) + " |",
                  "|---|---|---|---|" + "---|" * (2 * len(methods))]
        for name in meta:
            cells = {r["method"]: "{} / {}".format(*err(r)) for r in full if r["models"] == [name]}
            qs = list(meta[name]["scales"])
            paper = [_paper_figure([name], m, qs, {name: qs}, meta) for m in methods]
            lines.append(f"| {model_cells(name)} | {_q(qs)} | "
                         + " | ".join(cells.get(m, "-") for m in methods) + " | " + " | ".join(paper) + " |")
        lines.append("")
    fused = [r for r in rows if len(r["models"]) > 1]
    if fused:
        lines += ["## ConvNet fusion (layout of Table 6)", "",
                  "| models | Q | method | top-1 err | top-5 err | paper top-1 / top-5 |", "|---|---|---|---|---|---|"]
        lines += [f"| {' + '.join(r['models'])} | {_q(r['scales'])} | {r['method']} | {' | '.join(err(r))} | "
                  f"{_row_paper(r, meta)} |" for r in fused]
        lines.append("")
    return "\n".join(lines)


def model_meta(info: Mapping, scales: Sequence[int]) -> dict:
    """What results.md shows of a model: arch, training scale S (None for torchvision weights), Q set."""
    cfg = info.get("config") or {}
    ts = train_scale_of(cfg)
    return {"arch": info.get("arch"), "train_scale": list(ts) if ts else None, "scales": list(scales),
            "crop_size": int(cfg.get("crop_size", 224)), "preset": cfg.get("preset")}



def write_posteriors(folder: Path, table: PosteriorTable) -> list[str]:
    """posteriors/<model>.parquet: per image key, label, model, method, scales, probs (list<float>)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, labels = table.decoded_keys(), table.decoded_labels().numpy()
    paths = []
    for name, qs in table.scales.items():
        parts = []
        for method in available_methods(table.methods):
            probs = table.posteriors(name, method).numpy().astype(np.float32)
            n, k = probs.shape
            parts.append(pa.table({
                "key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.int64()),
                "model": pa.array([name] * n, pa.string()), "method": pa.array([method] * n, pa.string()),
                "scales": pa.array([list(qs)] * n, pa.list_(pa.int32())),
                "probs": pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                                  pa.array(probs.reshape(-1))),
            }))
        path = folder / f"{name}.parquet"
        pq.write_table(pa.concat_tables(parts), path)
        paths.append(str(path))
    return paths
