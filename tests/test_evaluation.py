"""§3.2's test protocol (vgg_ray/evaluation.py) on tiny nets, and the plan of its fan-out, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vgg_ray.evaluation import (
    DENSE,
    MULTI_CROP,
    PosteriorTable,
    average,
    dense_posteriors,
    evaluate_images,
    fusion,
    grid_positions,
    multi_crop_and_dense,
    multi_crop_posteriors,
    multi_crop_views,
    plan_pieces,
    topk_errors,
    work_macs,
)
from vgg_ray.models import build_vgg, forward_macs
from vgg_ray.scales import scales_px

CROP = 32
MEAN = [120.0, 110.0, 100.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_vgg("A", num_classes=7, width=1 / 16, fc_width=64, crop_size=CROP).eval()


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _input_shapes(model):
    """Record the [N, C, H, W] of every batch entering the net (hook on its first layer)."""
    shapes = []
    handle = model.features.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def test_dense_equals_crop_evaluation_on_a_crop_sized_image(model):
    img = _image(CROP, CROP)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] - torch.tensor(MEAN).view(1, 3, 1, 1)
    by_hand = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    got = evaluate_images(model, [img], [DENSE, MULTI_CROP], MEAN)
    # On a crop-sized image the score map is 1x1 and all 25 grid crops are the image itself.
    torch.testing.assert_close(got[DENSE], by_hand)
    torch.testing.assert_close(got[MULTI_CROP], by_hand)


def test_dense_runs_each_image_whole_once_per_flip_never_per_crop(model):
    images = [_image(37, 49, 1), _image(37, 49, 2), _image(44, 37, 3)]
    shapes, handle = _input_shapes(model)
    try:
        dense = evaluate_images(model, images, [DENSE], MEAN)[DENSE]
    finally:
        handle.remove()
    # Two shapes -> two batches, each image and its mirror image once, whole.
    assert sorted(shapes) == [(2, 3, 44, 37), (4, 3, 37, 49)]
    assert dense.shape == (3, 7)
    torch.testing.assert_close(dense.sum(1), torch.ones(3))
    # Against the rule by hand: spatially averaged score map, soft-max, mean over the two flips.
    x = torch.from_numpy(images[2]).permute(2, 0, 1).float()[None] - torch.tensor(MEAN).view(1, 3, 1, 1)
    by_hand = sum(model.score_map(v).mean((2, 3)).softmax(1) for v in (x, x.flip(-1))) / 2
    torch.testing.assert_close(dense[2:], by_hand)
    # A larger image has a score map larger than 1x1: dense is not a centre crop.
    # 73 -> 37 -> 19 -> 10 -> 5 -> 3 with pools rounding up (Caffe's); fc6 is 1x1 at a 32 crop.
    assert model.score_map(torch.zeros(1, 3, 73, 73)).shape[-2:] == (3, 3)


def test_grid_is_5x5_regular_and_spans_the_image():
    pos = grid_positions(60, 45, 32)
    assert len(pos) == 25 and len(set(pos)) == 25
    tops, lefts = sorted({t for t, _ in pos}), sorted({left for _, left in pos})
    assert tops == [0, 7, 14, 21, 28] and lefts == [0, 3, 6, 9, 13]
    assert pos[0] == (0, 0) and pos[-1] == (60 - 32, 45 - 32)
    assert pos[:5] == [(0, left) for left in lefts]  # row by row
    with pytest.raises(ValueError, match="smaller than the crop"):
        grid_positions(31, 45, 32)


def test_multi_crop_views_are_the_grid_crops_then_their_mirrors():
    img = torch.arange(3 * 41 * 50, dtype=torch.float32).view(3, 41, 50)
    views = multi_crop_views(img, 32)
    assert views.shape == (50, 3, 32, 32)
    for i, (t, left) in enumerate(grid_positions(41, 50, 32)):
        torch.testing.assert_close(views[i], img[:, t:t + 32, left:left + 32])
        torch.testing.assert_close(views[25 + i], img[:, t:t + 32, left:left + 32].flip(-1))


def test_multi_crop_is_50_crops_per_scale_and_150_over_three(model):
    px = scales_px((256, 384, 512), CROP)
    assert px == (37, 55, 73)
    shapes, handle = _input_shapes(model)
    try:
        per_scale = [evaluate_images(model, [_image(q, q + 9, q)], [MULTI_CROP], MEAN, max_batch=20)[MULTI_CROP]
                     for q in px]
    finally:
        handle.remove()
    assert all(s[1:] == (3, CROP, CROP) for s in shapes)  # every forward pass sees crops only
    assert sum(s[0] for s in shapes) == 150
    assert max(s[0] for s in shapes) <= 20  # batched by max_batch
    # The average of the 50 crop posteriors, by hand, at the largest scale.
    x = torch.from_numpy(_image(73, 82, 73)).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)
    by_hand = model(multi_crop_views(x, CROP)).softmax(1).mean(0, keepdim=True)
    torch.testing.assert_close(per_scale[2], by_hand)


def test_multi_crop_batches_crops_of_differently_sized_images(model):
    imgs = [torch.randn(3, 37, 40), torch.randn(3, 50, 37)]
    together = multi_crop_posteriors(model, imgs, max_batch=64)
    alone = torch.cat([multi_crop_posteriors(model, [i]) for i in imgs])
    torch.testing.assert_close(together, alone)


def test_training_mode_is_refused():
    net = build_vgg("A", num_classes=3, width=1 / 16, fc_width=8, crop_size=CROP)  # train() by default
    with pytest.raises(ValueError, match="eval"):
        dense_posteriors(net, torch.zeros(1, 3, CROP, CROP))


P_DENSE = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
P_CROP = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])


def test_combination_and_fusion_are_averages_of_posteriors():
    torch.testing.assert_close(multi_crop_and_dense(P_DENSE, P_CROP),
                               torch.tensor([[0.4, 0.5, 0.1], [0.15, 0.2, 0.65]]))
    torch.testing.assert_close(fusion([P_DENSE, P_CROP, torch.ones(2, 3) / 3]),
                               (P_DENSE + P_CROP + 1 / 3) / 3)
    with pytest.raises(ValueError, match="different shapes"):
        average([P_DENSE, P_CROP[:1]])


def test_topk_errors_by_hand():
    probs = torch.tensor([[.50, .20, .10, .08, .07, .05],   # label 0: top-1 right
                          [.50, .20, .10, .08, .07, .05],   # label 4: 5th -> top-5 right only
                          [.50, .20, .10, .08, .07, .05],   # label 5: 6th -> both wrong
                          [.05, .07, .08, .10, .20, .50]])  # label 5: top-1 right
    top1, top5 = topk_errors(probs, torch.tensor([0, 4, 5, 5]))
    assert (top1, top5) == (50.0, 25.0)
    # Fewer classes than 5: every label is in the top 5.
    assert topk_errors(P_DENSE, torch.tensor([2, 0])) == (100.0, 0.0)


def test_pieces_tile_every_model_method_and_q_most_expensive_first():
    scales = {"A": {256: 37, 384: 55}, "B": {256: 37}}
    pieces = plan_pieces(60, scales, (DENSE, MULTI_CROP), slice_images=12)
    assert len(pieces) == (2 + 1) * 2 * 5  # (model, Q) x methods x 60 / 12 slices
    assert [p["index"] for p in pieces] == list(range(len(pieces)))
    for m, qs in scales.items():
        for meth in (DENSE, MULTI_CROP):
            for q, px in qs.items():
                mine = sorted((p["start"], p["stop"]) for p in pieces
                              if (p["model"], p["method"], p["scale"], p["scale_px"]) == (m, meth, q, px))
                assert mine == [(a, a + 12) for a in range(0, 60, 12)]  # [0, 60) once
    # multi-crop (50 crops an image) before dense at Q = 384 (2 x 4/3 x (384/224)^2 ~ 7.8 crops)
    assert [p["method"] for p in pieces[:15]] == [MULTI_CROP] * 15
    assert (pieces[15]["method"], pieces[15]["scale"]) == (DENSE, 384)
    # slices uneven where 12 does not divide the images; 0 = auto (at least 8 images a slice)
    assert sorted({p["stop"] - p["start"] for p in plan_pieces(50, {"A": {256: 37}}, [DENSE], 12)}) == [10]
    assert len(plan_pieces(20, {"A": {256: 37}}, [DENSE])) == 3


def test_work_is_each_piece_s_crop_forwards_times_one_crop_s_macs(model):
    pieces = plan_pieces(60, {"A": {256: 37, 384: 55}}, (DENSE, MULTI_CROP), slice_images=12)
    # 60 images x 2 Q x (50 crops + 2 whole images of ~4/3 x (px/32)^2 crops each)
    expected = 60 * forward_macs(model, CROP) * sum(50 + 2 * 4 / 3 * (px / CROP) ** 2 for px in (37, 55))
    assert work_macs(pieces, {"A": model}) == pytest.approx(expected)


def _filled_table():
    """Two models, two methods, Q = {256, 384}, two images, with posteriors chosen by hand."""
    scales = {"D": (256, 384), "E": (256, 384)}
    table = PosteriorTable(2, scales, [DENSE, MULTI_CROP], 3)
    keys, labels = ["a", "b"], [1, 2]
    post = {("D", DENSE, 256): [[.1, .8, .1], [.1, .1, .8]], ("D", DENSE, 384): [[.5, .4, .1], [.8, .1, .1]],
            ("D", MULTI_CROP, 256): [[.2, .6, .2], [.6, .3, .1]],
            ("D", MULTI_CROP, 384): [[.2, .6, .2], [.6, .3, .1]],
            ("E", DENSE, 256): [[.7, .2, .1], [.2, .2, .6]], ("E", DENSE, 384): [[.7, .2, .1], [.2, .2, .6]],
            ("E", MULTI_CROP, 256): [[.4, .3, .3], [.4, .1, .5]],
            ("E", MULTI_CROP, 384): [[.4, .3, .3], [.4, .1, .5]]}
    for (m, meth, q), p in post.items():
        p = np.array(p, dtype=np.float32)
        table.add(m, meth, q, 0, keys[:1], labels[:1], p[:1])  # two slices per piece
        table.add(m, meth, q, 1, keys[1:], labels[1:], p[1:])
    return table, post


def test_posterior_table_counts_each_image_once_and_averages_scales():
    table, post = _filled_table()
    table.check_complete()
    multi_scale = (torch.tensor(post["D", DENSE, 256]) + torch.tensor(post["D", DENSE, 384])) / 2
    torch.testing.assert_close(table.posteriors("D", DENSE), multi_scale)
    with pytest.raises(RuntimeError, match="already counted"):
        table.add("D", DENSE, 256, 0, ["a"], [1], np.ones((1, 3), np.float32) / 3)
    partial = PosteriorTable(3, {"D": (256,)}, [DENSE], 3)
    partial.add("D", DENSE, 256, 0, ["a", "b"], [0, 1], np.ones((2, 3), np.float32) / 3)
    with pytest.raises(RuntimeError, match="1 images never evaluated"):
        partial.check_complete()
