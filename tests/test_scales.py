"""vgg_ray/scales.py: §3.1's S and §3.2's Q rules."""

from __future__ import annotations

import pytest

from vgg_ray.scales import parse_scale, parse_test_scales, resolve_test_scales, scale_to_px, scales_px


def test_default_scales_follow_section_3_2():
    assert resolve_test_scales({"train_scale": [256, 256]}) == (224, 256, 288)
    assert resolve_test_scales({"train_scale": [384, 384]}) == (352, 384, 416)
    assert resolve_test_scales({"train_scale": [256, 512]}) == (256, 384, 512)
    assert resolve_test_scales({"train_scale": [256, 512]}, override=[512, 256]) == (256, 512)
    assert resolve_test_scales({}) == (224, 256, 288)  # torchvision weights: treated as S = 256
    with pytest.raises(ValueError, match="--test-scales"):
        resolve_test_scales({}, override=[200])


def test_train_scale_parsing_and_pixels_at_a_smaller_crop():
    assert parse_scale("256") == (256, 256) and parse_scale("256-512") == parse_scale("256:512") == (256, 512)
    for bad in ("200", "512-256", "a-b", "1-2-3"):
        with pytest.raises(ValueError, match="train scale"):
            parse_scale(bad)
    # the smoke preset's 32-pixel crop keeps the paper's geometry: S = 256 -> 37 px, never below the crop
    assert scale_to_px(256, 32) == 37 and scales_px((256, 384, 512), 32) == (37, 55, 73)
    assert scale_to_px(224, 32) == 32
    assert parse_test_scales("512,256,256") == (256, 512) and parse_test_scales("") == ()
    with pytest.raises(ValueError, match="--test-scales"):
        parse_test_scales("256,x")
