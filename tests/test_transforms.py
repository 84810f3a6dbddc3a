"""The §3.1/§3.2 transforms alone (tests/test_data.py runs them again inside Ray Data)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vgg_ray import transforms as T


def jpeg(arr: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def smooth_image(w: int, h: int) -> np.ndarray:
    """A gradient image: resampling it at any scale gives predictable values."""
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128.0)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("w,h,s,expect", [(500, 375, 256, (341, 256)), (375, 500, 256, (256, 341)),
                                          (100, 100, 37, (37, 37)), (48, 160, 73, (73, 243))])
def test_rescaled_size_keeps_aspect(w, h, s, expect):
    assert T.rescaled_size(w, h, s) == expect


@pytest.mark.parametrize("s", [37, 64, 256, 512])
def test_decode_rescaled_smallest_side_and_content(s):
    src = smooth_image(500, 375)
    out = T.decode_rescaled(jpeg(src), s)
    assert out.dtype == np.uint8 and out.shape == (s, round(500 * s / 375), 3)
    # Draft-mode decode (s << 375) and full decode + resize see the same picture: compare with a plain
    # PIL resize of the original pixels, at the output size.
    ref = np.asarray(Image.fromarray(src).resize(out.shape[1::-1], Image.Resampling.BILINEAR))
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 3.0


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG")])
def test_decode_rescaled_any_mode_gives_rgb(mode, fmt):
    src = np.zeros((60, 90, 3), np.uint8)
    src[...] = (200, 40, 40)
    out = T.decode_rescaled(jpeg(src, mode, fmt), 32)
    assert out.shape == (32, 48, 3)
    want = np.asarray(Image.fromarray(src).convert(mode).convert("RGB"))[0, 0]
    assert np.abs(out.reshape(-1, 3).mean(0) - want).max() < 6


def test_decode_rescaled_raises_one_exception_type_for_what_is_not_an_image():
    for data, reason in [(b"not an image", "cannot identify image file"), (b"", "cannot identify"),
                         (jpeg(smooth_image(200, 150))[:800], "truncated")]:
        with pytest.raises(T.UndecodableImage, match=reason):
            T.decode_rescaled(data, 64)
    with pytest.raises(TypeError):  # a bug is not an undecodable image: it goes through
        T.decode_rescaled(jpeg(smooth_image(200, 150)), "64")


def test_random_crop_flip_is_a_window_or_its_mirror_and_uniform():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    flips, corners = 0, set()
    for _ in range(400):
        out = T.random_crop_flip(img, 32, rng)
        assert out.shape == (32, 32, 3) and out.flags.c_contiguous
        hits = [(y, x, f) for y in range(9) for x in range(19) for f in (0, 1)
                if np.array_equal((out[:, ::-1] if f else out), img[y:y + 32, x:x + 32])]
        assert len(hits) == 1
        y, x, f = hits[0]
        flips += f
        if (y, x) in ((0, 0), (8, 18)):
            corners.add((y, x))
    assert 150 < flips < 250  # p = 0.5: 400 draws put 200 +- 3 sigma (30) here
    assert corners == {(0, 0), (8, 18)}  # the extreme offsets are reachable


def test_random_crop_flip_needs_s_at_least_crop():
    with pytest.raises(ValueError, match="smaller than the crop"):
        T.random_crop_flip(np.zeros((30, 50, 3), np.uint8), 32, np.random.default_rng(0))


def test_center_crop_is_centred():
    img = np.arange(9 * 12 * 3, dtype=np.int64).reshape(9, 12, 3)
    out = T.center_crop(img, 5)
    assert np.array_equal(out, img[2:7, 3:8])


def test_draw_scale_fixed_and_jittered():
    rng = np.random.default_rng(0)
    assert {T.draw_scale(rng, (256, 256)) for _ in range(20)} == {256}
    draws = np.array([T.draw_scale(rng, (256, 512)) for _ in range(4000)])
    assert draws.min() == 256 and draws.max() == 512  # §3.1: both ends of [S_min, S_max]
    assert abs(draws.mean() - 384) < 6  # uniform: mean 384, std 74 / sqrt(4000) = 1.2


def test_train_sample_reproducible_and_sized():
    data = jpeg(smooth_image(160, 48))
    a = T.train_sample(data, (37, 73), 32, np.random.default_rng(7))
    b = T.train_sample(data, (37, 73), 32, np.random.default_rng(7))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)


def test_val_sample_is_the_centre_crop_of_the_rescale():
    data = jpeg(smooth_image(120, 80))
    diff = T.val_sample(data, 48, 32).astype(int) - T.center_crop(T.decode_rescaled(data, 48), 32).astype(int)
    # the window alone resampled: the same filter, fixed-point rounding apart
    assert np.abs(diff).max() <= 2 and np.abs(diff).mean() < 0.5


def test_to_float_nchw_subtracts_mean():
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    mean = torch.tensor([120.0, 110.0, 100.0])
    y = T.to_float_nchw(x, mean)
    assert y.shape == (2, 3, 8, 8)
    assert torch.allclose(y[1, 2], x[1, :, :, 2].float() - 100.0)
    z = T.to_float_nchw(x, mean, std_rgb=torch.tensor([2.0, 2.0, 2.0]), channels_last=True)
    assert z.is_contiguous(memory_format=torch.channels_last) and torch.allclose(z, y / 2)


def test_colour_shift_has_the_pca_covariance():
    # §3.1 / AlexNet, on [0, 1] pixels: shift = 255 V (alpha * lambda / 255^2), alpha ~ N(0, 0.1), so
    # Cov(shift) = V diag((0.1 lambda / 255)^2) V^T in 0-255 levels, the same for every pixel of an image.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    eigvec, eigval = torch.tensor(q, dtype=torch.float32), torch.tensor([3000.0, 600.0, 100.0])
    x = torch.zeros(20000, 3, 2, 2)
    y = T.colour_shift(x, eigval, eigvec, std=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y[:, :, 0, 0], y[:, :, 1, 1])
    cov = np.cov(y[:, :, 0, 0].numpy().T)
    want = q @ np.diag((0.1 * eigval.numpy() / 255) ** 2) @ q.T
    assert np.abs(cov - want).max() < 0.05 * want.max()


def photos(n: int = 8) -> list[bytes]:
    """ImageNet-sized JPEGs (300-500 px a side, sharp edges and noise) from the demo's renderer."""
    from vgg_ray.imagenet import demo

    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        demo.render(i % 10, rng, (300, 500)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("scale,crop", [((256, 256), 224), ((256, 512), 224), ((384, 384), 224), ((37, 73), 32)])
def test_resampling_only_the_window_equals_rescaling_then_cropping(scale, crop):
    # §3.1's usual two steps (rescale the whole image to S, crop, flip) against resampling the window
    # alone, on the same draws: the same pixels within interpolation rounding.
    for k, data in enumerate(photos()):
        window_first = T.train_sample(data, scale, crop, np.random.default_rng([k, 3]))
        rng = np.random.default_rng([k, 3])
        two_step = T.random_crop_flip(T.decode_rescaled(data, T.draw_scale(rng, scale)), crop, rng)
        assert window_first.shape == two_step.shape == (crop, crop, 3)
        assert np.abs(window_first.astype(int) - two_step.astype(int)).max() <= 1, (scale, k)


def test_a_crop_is_written_into_the_row_it_is_given_or_refused():
    data = photos(1)[0]
    win = T.train_window(T.image_size(data), (256, 512), 64, np.random.default_rng(1))
    batch = np.zeros((2, 64, 64, 3), np.uint8)
    T.render_window(data, win, 64, batch[1])
    assert np.array_equal(batch[1], T.render_window(data, win, 64)) and not batch[0].any()
    with pytest.raises(ValueError):  # a row that cannot hold the crop is an error, not a silent copy elsewhere
        T.render_window(data, win, 64, np.zeros((64, 64), np.uint8))


def test_windows_follow_section_3_1():
    rng = np.random.default_rng(0)
    wins = [T.train_window((500, 375), (256, 512), 224, rng) for _ in range(4000)]
    smallest = np.array([min(w.size_s) for w in wins])
    assert smallest.min() == 256 and smallest.max() == 512 and abs(smallest.mean() - 384) < 5  # S uniform
    assert all(0 <= w.x <= w.size_s[0] - 224 and 0 <= w.y <= w.size_s[1] - 224 for w in wins)
    assert abs(np.mean([w.flip for w in wins]) - 0.5) < 0.03
    assert T.centre_window((500, 375), 256, 224) == T.Window((341, 256), 58, 16, False)


def test_decoder_scales_in_the_dct_domain_only_by_powers_of_two():
    data = jpeg(smooth_image(480, 320))
    assert T.image_size(data) == (480, 320)
    assert T.decode(data).shape == (320, 480, 3)
    assert T.decode(data, (240, 160)).shape == (160, 240, 3)  # 1/2
    assert T.decode(data, (100, 70)).shape == (80, 120, 3)  # 1/4: the smallest still >= (100, 70)
    assert T.decode(data, (241, 100)).shape == (320, 480, 3)  # 1/2 would be too small: full size
    # the factor the device path box-reduces by, and the sizes libjpeg-turbo decodes at (rounded up)
    assert [T.dct_factor((481, 321), m) for m in ((0, 0), (242, 100), (241, 161), (100, 70), (10, 10))] == [1, 1, 2, 4, 8]
    assert T.dct_size((481, 321), (100, 70)) == (121, 81) and T.dct_size((481, 321), (242, 100)) == (0, 0)
    full = T.decode(data).astype(int)
    assert np.abs(T.decode(jpeg(smooth_image(480, 320), "RGB", "PNG")).astype(int) - full).mean() < 2  # Pillow
    cmyk = T.decode(jpeg(smooth_image(480, 320), "CMYK"))  # simplejpeg cannot: Pillow can
    assert cmyk.shape == (320, 480, 3) and np.abs(cmyk.astype(int) - full).mean() < 6
