"""The paper's results on ILSVRC-2012 validation (Tables 3-6) as data, for results.md to set beside ours.

Top-1 / top-5 error in percent; S and Q in paper units. Tables 3 and 4 are dense evaluation (§4.1, §4.2:
Table 5's dense column repeats Table 4's figures). Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vgg_ray.evaluation import BOTH, DENSE, MULTI_CROP

S256, S384, JITTERED = (256, 256), (384, 384), (256, 512)
Q_FIXED_256, Q_FIXED_384, Q_JITTERED = (224, 256, 288), (352, 384, 416), (256, 384, 512)

# (arch, S, Q set, method) -> (top-1 err, top-5 err)
SINGLE_MODEL: dict[tuple[str, tuple[int, int], tuple[int, ...], str], tuple[float, float]] = {
    # Table 3: single test scale, Q = S (fixed S) or 384 (S in [256;512])
    ("A", S256, (256,), DENSE): (29.6, 10.4),
    ("A-LRN", S256, (256,), DENSE): (29.7, 10.5),
    ("B", S256, (256,), DENSE): (28.7, 9.9),
    ("C", S256, (256,), DENSE): (28.1, 9.4),
    ("C", S384, (384,), DENSE): (28.1, 9.3),
    ("C", JITTERED, (384,), DENSE): (27.3, 8.8),
    ("D", S256, (256,), DENSE): (27.0, 8.8),
    ("D", S384, (384,), DENSE): (26.8, 8.7),
    ("D", JITTERED, (384,), DENSE): (25.6, 8.1),
    ("E", S256, (256,), DENSE): (27.3, 9.0),
    ("E", S384, (384,), DENSE): (26.9, 8.7),
    ("E", JITTERED, (384,), DENSE): (25.5, 8.0),
    # Table 4: several test scales, dense
    ("B", S256, Q_FIXED_256, DENSE): (28.2, 9.6),
    ("C", S256, Q_FIXED_256, DENSE): (27.7, 9.2),
    ("C", S384, Q_FIXED_384, DENSE): (27.8, 9.2),
    ("C", JITTERED, Q_JITTERED, DENSE): (26.3, 8.2),
    ("D", S256, Q_FIXED_256, DENSE): (26.6, 8.6),
    ("D", S384, Q_FIXED_384, DENSE): (26.5, 8.6),
    ("D", JITTERED, Q_JITTERED, DENSE): (24.8, 7.5),
    ("E", S256, Q_FIXED_256, DENSE): (26.9, 8.7),
    ("E", S384, Q_FIXED_384, DENSE): (26.7, 8.6),
    ("E", JITTERED, Q_JITTERED, DENSE): (24.8, 7.5),
    # Table 5: evaluation methods, S in [256;512], Q = {256, 384, 512}
    ("D", JITTERED, Q_JITTERED, MULTI_CROP): (24.6, 7.5),
    ("D", JITTERED, Q_JITTERED, BOTH): (24.4, 7.2),
    ("E", JITTERED, Q_JITTERED, MULTI_CROP): (24.6, 7.4),
    ("E", JITTERED, Q_JITTERED, BOTH): (24.4, 7.1),
}

# Table 6, post-submission: D and E, both S in [256;512] and Q = {256, 384, 512}. (The 7-net ILSVRC
# submission mixed nets vgg_ray does not name, so it has no row here.)
FUSION: dict[tuple[frozenset, tuple[int, ...], str], tuple[float, float]] = {
    (frozenset({("D", JITTERED), ("E", JITTERED)}), Q_JITTERED, DENSE): (24.0, 7.1),
    (frozenset({("D", JITTERED), ("E", JITTERED)}), Q_JITTERED, MULTI_CROP): (23.9, 7.2),
    (frozenset({("D", JITTERED), ("E", JITTERED)}), Q_JITTERED, BOTH): (23.7, 6.8),
}


def _s(train_scale: Sequence[int] | None) -> tuple[int, int] | None:
    return None if not train_scale else (int(train_scale[0]), int(train_scale[-1]))


def paper_result(arch: str, train_scale: Sequence[int] | None, scales: Iterable[int],
                 method: str) -> tuple[float, float] | None:
    """The paper's (top-1, top-5) error for one net evaluated this way, or None if no table has it."""
    return SINGLE_MODEL.get((arch, _s(train_scale), tuple(sorted(scales)), method))


def paper_fusion(members: Iterable[tuple[str, Sequence[int] | None, Iterable[int]]],
                 method: str) -> tuple[float, float] | None:
    """The paper's fusion figure for nets given as (arch, S, Q set), all at the same Q set, or None."""
    members = list(members)
    qsets = {tuple(sorted(q)) for _, _, q in members}
    if len(qsets) != 1:
        return None
    key = frozenset((arch, _s(s)) for arch, s, _ in members)
    return FUSION.get((key, qsets.pop(), method)) if len(key) == len(members) else None
