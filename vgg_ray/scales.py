"""§3.1's training scale S and §3.2's test scales Q. Pure Python.

Scales are given in the paper's units (pixels at a 224 crop: S=256, Q=384, ...). A model with a smaller
crop scales them by crop/224, so the smoke preset keeps the paper's geometry: crop 32, S=256 -> 37 px.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PAPER_CROP = 224
# A torchvision .pth carries no training scale. torchvision's reference recipe evaluates at a 256-pixel
# resize, so such weights are treated as S = 256 (Q = {224, 256, 288} by §3.2); --test-scales overrides.
FALLBACK_TRAIN_SCALE = (256, 256)


def parse_pair(text: str | int | tuple | list, seps: str = "-") -> tuple[int, int] | None:
    """'N' -> (N, N); 'LO-HI' -> (LO, HI) (any of `seps` between); an int or a pair passes through; None
    when `text` is none of these."""
    if isinstance(text, (tuple, list)):
        return tuple(int(v) for v in text) if len(text) == 2 else None
    if isinstance(text, int):
        return text, text
    parts = str(text)
    for sep in seps[1:]:
        parts = parts.replace(sep, seps[0])
    parts = parts.split(seps[0])
    try:
        return (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else None
    except ValueError:
        return None


def parse_scale(text: str | int | tuple | list) -> tuple[int, int]:
    """'256' -> (256, 256); '256-512' or '256:512' -> (256, 512); a pair passes through."""
    pair = parse_pair(text, "-:")
    if pair is None:
        raise ValueError(f"train scale {text!r}: expected S (e.g. 256) or S_min-S_max (e.g. 256-512)")
    lo, hi = pair
    if lo < PAPER_CROP or hi < lo:
        raise ValueError(f"train scale {text!r}: need {PAPER_CROP} <= S_min <= S_max (§3.1: S >= 224)")
    return lo, hi


def parse_test_scales(text: str | Sequence[int]) -> tuple[int, ...]:
    """'256,384,512' -> (256, 384, 512), each Q >= 224 (paper units); '' -> () (the default per model)."""
    try:
        scales = tuple(int(q) for q in (text.split(",") if isinstance(text, str) else text) if str(q).strip())
    except ValueError:
        raise ValueError(f"--test-scales {text!r}: expected Q values like 256,384,512") from None
    bad = [q for q in scales if q < PAPER_CROP]
    if bad:
        raise ValueError(f"--test-scales {text!r}: Q must be >= {PAPER_CROP} (the crop, in paper units)")
    return tuple(sorted(set(scales)))


def default_test_scales(train_scale: tuple[int, int]) -> tuple[int, ...]:
    """§3.2: Q = {S-32, S, S+32} for a fixed S; {S_min, (S_min+S_max)/2, S_max} for jittered S."""
    lo, hi = train_scale
    return (lo - 32, lo, lo + 32) if lo == hi else (lo, (lo + hi) // 2, hi)


def single_test_scale(train_scale: tuple[int, int]) -> int:
    """§3.2: single-scale evaluation uses Q = S, or Q = (S_min + S_max)/2 for jittered S."""
    return (train_scale[0] + train_scale[1]) // 2


def scale_to_px(scale: int, crop_size: int) -> int:
    """A paper-unit scale (at crop 224) in pixels for this crop size, never below the crop."""
    return max(crop_size, int(round(scale * crop_size / PAPER_CROP)))


def scales_px(scales: Sequence[int], crop_size: int) -> tuple[int, ...]:
    """Paper-unit Q values in pixels for a model of this crop size (crop 32: Q = 256 -> 37 px)."""
    return tuple(scale_to_px(q, crop_size) for q in scales)


def train_scale_of(config: Mapping | None) -> tuple[int, int] | None:
    """S (or [S_min, S_max]) in paper units from a saved TrainConfig dict; None when it has none."""
    if not config or config.get("train_scale") is None:
        return None
    return parse_scale(config["train_scale"])


def resolve_test_scales(config: Mapping | None, override: Sequence[int] = ()) -> tuple[int, ...]:
    """The Q set (paper units) a model is evaluated at: `override` (--test-scales) when given, else §3.2's
    default for its training scale."""
    if override:
        return parse_test_scales(override)
    return default_test_scales(train_scale_of(config) or FALLBACK_TRAIN_SCALE)
