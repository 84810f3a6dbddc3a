"""The paper's qualitative findings, checked on an evaluation's results: does this run show what Tables 3-6
show? Pure Python.

Each finding compares two top-1 errors measured on the same validation images and says whether the run
agrees: `holds` (the paper's direction, by more than the noise), `within noise`, or `reversed` (the other
direction, by more than the noise). The noise is one standard error of the difference of two top-1 errors
on n images, sqrt((p1(1-p1) + p2(1-p2)) / n): 1.9 points for two nets at 10% error on 500 images, 0.3 on
ILSVRC-2012's 50,000 at 27%. A small preset is not tuned until it agrees: the table reports what it shows.

Tables 3 and 4 are dense evaluation. Below the paper's 224-pixel crop the findings that compare nets or
test scales use multi-crop instead (when it was run): the net's 32-pixel stride does not shrink with the
crop, so at a 32-pixel crop dense evaluation at Q = S averages a score map whose cells are mostly padding
(on the demo, A errs 3.0% dense at Q = 224, 12.8% at Q = 256, and 0.0% multi-crop).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence

from vgg_ray.evaluation import BOTH, DENSE, MULTI_CROP
from vgg_ray.paper import paper_result

HOLDS, WITHIN_NOISE, REVERSED = "holds", "within noise", "reversed"
DEPTH_ORDER = ("A", "B", "D")  # Table 3: A (11 layers) > B (13) > D (16) in error
JITTERED_ARCHS = ("C", "D", "E")


def noise(err1: float, err2: float, n: int) -> float:
    """One standard error of the difference of two top-1 errors (percent) on the same n images."""
    p1, p2 = err1 / 100, err2 / 100
    return 100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def verdict(better: float, worse: float, n: int) -> str:
    """Whether `better` (the error the paper finds lower) is lower than `worse`, beyond the noise."""
    gap, se = worse - better, noise(better, worse, n)
    return HOLDS if gap > se else REVERSED if gap < -se else WITHIN_NOISE


class Results:
    """Single-model and fusion rows of one or more evaluations (results.json rows with each evaluation's
    model meta: arch, train_scale, scales), indexed by what the paper's tables vary: the configuration,
    its training scale S, the test scales Q and the method."""

    def __init__(self, evaluations: Iterable[tuple[Sequence[Mapping], Mapping[str, Mapping]]]):
        self.single: dict[tuple, Mapping] = {}
        self.fused: list[tuple[list[tuple], Mapping]] = []
        self.models: list[tuple] = []  # (arch, S, Q set) of every evaluated model, in order
        self.crops: set[int] = set()
        for rows, meta in evaluations:
            ident = {name: (m.get("arch"), _s(m.get("train_scale"))) for name, m in meta.items()}
            for name, m in meta.items():
                if ident[name][1] is not None:
                    self.models.append((*ident[name], tuple(m["scales"])))
                    self.crops.add(int(m.get("crop_size", 224)))
            for r in rows:
                if any(ident.get(name, (None, None))[1] is None for name in r["models"]):
                    continue  # torchvision weights and the like: no S, no place in the paper's comparisons
                if len(r["models"]) == 1:
                    self.single[(*ident[r["models"][0]], tuple(r["scales"]), r["method"])] = r
                else:
                    self.fused.append(([ident[name] for name in r["models"]], r))

    def get(self, arch: str, s: tuple[int, int], scales: Sequence[int], method: str) -> Mapping | None:
        return self.single.get((arch, s, tuple(scales), method))

    @property
    def probe(self) -> str:
        """The method single nets are compared by: dense as in Tables 3-4, or multi-crop below the paper's
        crop, where it was run (module docstring)."""
        if min(self.crops, default=224) >= 224 or not any(k[3] == MULTI_CROP for k in self.single):
            return DENSE
        return MULTI_CROP

    def single_scale(self, arch: str, s: tuple[int, int]) -> Mapping | None:
        """Table 3's row: the probe method at Q = S (fixed S) or Q = (S_min + S_max) / 2 (jittered)."""
        return self.get(arch, s, [(s[0] + s[1]) // 2], self.probe)

    def q_set(self, arch: str, s: tuple[int, int]) -> tuple[int, ...] | None:
        return next((q for a, t, q in self.models if (a, t) == (arch, s)), None)


def _s(train_scale) -> tuple[int, int] | None:
    return None if not train_scale else (int(train_scale[0]), int(train_scale[-1]))


def _label(arch: str, s: tuple[int, int], scales: Sequence[int] = (), method: str = "") -> str:
    text = f"{arch} S={s[0] if s[0] == s[1] else f'[{s[0]};{s[1]}]'}"
    if scales:
        text += f" Q={','.join(map(str, scales))}"
    return text + (f" {method}" if method else "")


def _finding(claim: str, paper: str, better: tuple[str, Mapping], worse: tuple[str, Mapping],
             expect_lower: bool = True) -> dict:
    (b_name, b), (w_name, w) = better, worse
    n = min(b["n_images"], w["n_images"])
    if expect_lower:
        v = verdict(b["top1_err"], w["top1_err"], n)
    else:  # the paper finds no gain: it holds unless `better` is lower beyond the noise
        v = REVERSED if verdict(b["top1_err"], w["top1_err"], n) == HOLDS else HOLDS
    return {"finding": claim, "paper": paper, "compared": f"{b_name} vs {w_name}",
            "top1_err": [b["top1_err"], w["top1_err"]], "noise": round(noise(b["top1_err"], w["top1_err"], n), 2),
            "n_images": n, "verdict": v}


def check_findings(results: Results) -> list[dict]:
    """Every finding of the paper these results can test (a finding needs both sides evaluated)."""
    out = []
    s256 = (256, 256)
    # Table 3: deeper nets err less (A > B > D, single scale, S = 256)
    present = [a for a in DEPTH_ORDER if results.single_scale(a, s256)]
    for shallow, deep in itertools.pairwise(present):
        paper = {a: paper_result(a, s256, [256], DENSE)[0] for a in (shallow, deep)}
        out.append(_finding("deeper nets err less", f"Table 3: {shallow} {paper[shallow]} > {deep} {paper[deep]}",
                            (_label(deep, s256, [256], results.probe), results.single_scale(deep, s256)),
                            (_label(shallow, s256, [256], results.probe), results.single_scale(shallow, s256))))
    # Table 3: LRN does not help
    lrn, a = results.single_scale("A-LRN", s256), results.single_scale("A", s256)
    if lrn and a:
        out.append(_finding("LRN does not help", "Table 3: A-LRN 29.7, A 29.6",
                            (_label("A-LRN", s256, [256], results.probe), lrn), (_label("A", s256, [256], results.probe), a), expect_lower=False))
    # Table 3: scale jittering at training helps (jittered S at Q = 384 vs S = 256 at Q = 256)
    for arch in JITTERED_ARCHS:
        jit, fixed = results.single_scale(arch, (256, 512)), results.single_scale(arch, s256)
        if jit and fixed:
            out.append(_finding("scale jittering helps", "Table 3: e.g. D 25.6 (S in [256;512]) vs 27.0 (S = 256)",
                                (_label(arch, (256, 512), [384], results.probe), jit),
                                (_label(arch, s256, [256], results.probe), fixed)))
    # Table 4: several test scales help (dense over the Q set vs dense at the single Q)
    for arch, s, qs in results.models:
        one, several = results.single_scale(arch, s), results.get(arch, s, qs, results.probe)
        if len(qs) > 1 and one and several:
            mid = (s[0] + s[1]) // 2
            out.append(_finding("several test scales help", "Tables 3-4: e.g. D [256;512] 24.8 (Q = 256,384,512) "
                                "vs 25.6 (Q = 384)", (_label(arch, s, qs, results.probe), several),
                                (_label(arch, s, [mid], results.probe), one)))
    # Table 5: multi-crop & dense beats either alone
    for arch, s, qs in results.models:
        both = results.get(arch, s, qs, BOTH)
        alone = [(m, r) for m in (DENSE, MULTI_CROP) if (r := results.get(arch, s, qs, m))]
        if both and len(alone) == 2:
            m, best = min(alone, key=lambda mr: mr[1]["top1_err"])
            out.append(_finding("multi-crop & dense beats either alone", "Table 5: D 24.4 vs 24.8 dense, 24.6 "
                                "multi-crop", (_label(arch, s, qs, BOTH), both), (_label(arch, s, qs, m), best)))
    # Table 6: the fusion of two nets beats each of them, by the paper's headline method (multi-crop &
    # dense) where both were run, else by the probe
    methods = {r["method"] for _, r in results.fused}
    fusion_method = BOTH if BOTH in methods else results.probe
    for members, r in results.fused:
        if len(members) != 2 or r["method"] != fusion_method:
            continue
        alone = [(a, s, results.get(a, s, results.q_set(a, s) or (), r["method"])) for a, s in members]
        if all(x[2] for x in alone):
            a, s, best = min(alone, key=lambda x: x[2]["top1_err"])
            names = " + ".join(f"{m[0]}" for m in members)
            out.append(_finding("fusion beats each member", "Table 6: D+E 23.7 vs D 24.4, E 24.4 (multi-crop & dense)",
                                (f"{names} {r['method']}", r), (_label(a, s, method=r["method"]), best)))
    return out


def findings_markdown(findings: Sequence[Mapping], title: str = "") -> str:
    lines = [f"# {title or 'The paper' + chr(39) + 's findings, checked on this run'}", ""]
    if not findings:
        return "\n".join(lines + ["No finding of the paper can be checked on these models (each needs both "
                                  "sides of a comparison evaluated).", ""])
    lines += ["Top-1 error in percent, on the same validation images (single nets compared by the method "
              "shown: dense as in Tables 3-4, multi-crop below the paper's 224-pixel crop, where dense "
              "evaluation is mostly padding). `holds`: the paper's direction by more "
              "than one standard error of the difference (the noise column); `within noise`; `reversed`: the "
              "other direction beyond the noise. 'LRN does not help' holds unless A-LRN is better beyond the "
              "noise.", "",
              "| finding | paper | compared | top-1 err | noise | images | verdict |",
              "|---|---|---|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f['finding']} | {f['paper']} | {f['compared']} | {f['top1_err'][0]:.1f} vs "
                     f"{f['top1_err'][1]:.1f} | {f['noise']:.1f} | {f['n_images']} | {f['verdict']} |")
    return "\n".join(lines + [""])


def findings_json(findings: Sequence[Mapping]) -> str:
    return json.dumps(list(findings), indent=1) + "\n"
