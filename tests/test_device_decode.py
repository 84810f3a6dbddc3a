"""vgg_ray/device_decode.py on the CPU: the device path renders the same crops as the CPU path from the
same windows, and undecodable images come out with `decoded` False."""

from __future__ import annotations

import io

import numpy as np
import torch

from vgg_ray import device_decode
from vgg_ray import transforms as T
from vgg_ray.device_decode import decode_batch, decode_windows
from vgg_ray.transforms import window_array

from .test_transforms import jpeg, photos, smooth_image


def test_device_path_renders_the_cpu_paths_crops():
    datas = photos()
    for scale, crop in (((256, 256), 224), ((256, 512), 224)):
        wins = [T.train_window(T.image_size(d), scale, crop, np.random.default_rng([k, 5]))
                for k, d in enumerate(datas)]
        images, decoded = decode_windows(datas, window_array(wins), np.ones(len(datas), bool), crop, "cpu")
        assert images.dtype == torch.uint8 and images.shape == (len(datas), crop, crop, 3) and decoded.all()
        for k, d in enumerate(datas):
            diff = np.abs(images[k].numpy().astype(int) - T.render_window(d, wins[k], crop).astype(int))
            assert diff.max() <= 1, (scale, k)  # the same bilinear samples: OpenCV's and grid_sample's


def test_a_batch_in_several_chunks_with_a_failed_row_keeps_each_image_in_its_row(monkeypatch):
    # batches are sampled CHUNK windows at a time; rows the device decoder skipped stay where they are
    datas = photos()[:7]
    wins = [T.train_window(T.image_size(d), (256, 512), 224, np.random.default_rng([k, 9])) for k, d in enumerate(datas)]
    whole, _ = decode_windows(datas, window_array(wins), np.ones(7, bool), 224, "cpu")
    monkeypatch.setattr(device_decode, "CHUNK", 3)
    decoded = np.ones(7, bool)
    decoded[4] = False
    batch = decode_batch({"jpeg": datas, "win": window_array(wins), "decoded": decoded,
                          "label": np.arange(10, 17)}, 224, "cpu")
    assert batch["label"].tolist() == list(range(10, 17)) and batch["decoded"].tolist() == decoded.tolist()
    assert not batch["image"][4].any()
    keep = [k for k in range(7) if k != 4]
    assert (batch["image"][keep].int() - whole[keep].int()).abs().max() <= 1  # each chunk pads to its own size


def test_unreadable_rows_and_formats_the_device_decoder_cannot_read():
    good = jpeg(smooth_image(300, 200))
    png = jpeg(smooth_image(300, 200), "RGB", "PNG")  # not a JPEG: rendered on the CPU instead
    datas = [good, b"garbage", png, good]
    decoded = np.array([True, True, True, False])  # the last was found undecodable upstream
    win = T.centre_window((300, 200), 64, 32)
    images, decoded_rows = decode_windows(datas, window_array([win] * 4), decoded, 32, "cpu")
    assert decoded_rows.tolist() == [True, False, True, False]
    assert not images[1].any() and not images[3].any()
    assert np.abs(images[2].numpy().astype(int) - T.render_window(png, win, 32).astype(int)).max() <= 1
    assert np.abs(images[0].numpy().astype(int) - images[2].numpy().astype(int)).mean() < 2


def test_device_path_reduces_large_images_as_the_dct_decoder_does():
    # 1100-1600 px JPEGs: the CPU decoder decodes them at 1/4 or 1/2 size in the DCT domain; the device
    # path decodes them whole and box-reduces by the same factor. Not bit-identical (a scaled IDCT is
    # not a box filter), but the same crops: within a level on average, off by more than 8 levels at
    # sharp edges only.
    from vgg_ray.imagenet import demo

    rng = np.random.default_rng(7)
    datas = []
    for i in range(4):
        buf = io.BytesIO()
        demo.render(i, rng, (1100, 1600)).save(buf, format="JPEG", quality=90)
        datas.append(buf.getvalue())
    for scale in ((256, 256), (256, 512)):
        wins = [T.train_window(T.image_size(d), scale, 224, np.random.default_rng([k, 5]))
                for k, d in enumerate(datas)]
        assert all(T.decode(d, w.size_s).shape[1] < T.image_size(d)[0] for d, w in zip(datas, wins, strict=True))
        images, decoded = decode_windows(datas, window_array(wins), np.ones(len(datas), bool), 224, "cpu")
        for k, d in enumerate(datas):
            diff = np.abs(images[k].numpy().astype(int) - T.render_window(d, wins[k], 224).astype(int))
            assert diff.mean() < 1.0 and (diff > 8).mean() < 0.01, (scale, k, diff.mean(), (diff > 8).mean())
