"""§3.1's training crops decoded where the model trains: the JPEG bytes and the windows drawn on the CPU
(vgg_ray.transforms.train_window) travel to the train worker, which decodes the batch on its device
(nvJPEG through torchvision on a GPU), rescales each image with antialiasing, crops and flips there. Pure
PyTorch; the same code runs on the CPU, which is how the tests check it against the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from vgg_ray.transforms import UndecodableImage, Window, render_window

WINDOW_FIELDS = 5  # a window as int32: w_S, h_S, x, y, flip


def window_array(wins: Sequence[Window | None]) -> np.ndarray:
    """Windows as an int32 [N, 5] column for Ray Data (an undecodable image's row is zeros)."""
    return np.asarray([(w.size_s[0], w.size_s[1], w.x, w.y, int(w.flip)) if w else (0,) * WINDOW_FIELDS
                       for w in wins], dtype=np.int32).reshape(-1, WINDOW_FIELDS)


def _window(row) -> Window:
    w, h, x, y, flip = (int(v) for v in row)
    return Window((w, h), x, y, bool(flip))


def _decode_all(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as RGB uint8 CHW on `device`; one batched call, or one by one when the batch fails."""
    try:
        return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for j in jpegs:
            try:
                out.append(decode_jpeg(j, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)  # the CPU path decides (Pillow reads what nvJPEG cannot)
        return out


def decode_windows(jpegs: Sequence[bytes], wins: np.ndarray, ok: np.ndarray, crop: int,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N, crop, crop, 3] on `device`, bool [N] ok) for a batch of JPEG bytes and their windows.

    Rows already marked not ok stay zeros; an image the device decoder cannot read is rendered on the
    CPU (vgg_ray.transforms), and one that nothing can read becomes not ok.
    """
    device = torch.device(device)
    n = len(jpegs)
    out = torch.zeros(n, crop, crop, 3, dtype=torch.uint8, device=device)
    good = torch.as_tensor(np.asarray(ok, dtype=bool)).clone()
    idx = [i for i in range(n) if good[i]]
    images = _decode_all([torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in idx], device)
    for i, img in zip(idx, images, strict=True):
        win = _window(wins[i])
        if img is None:
            try:
                out[i] = torch.tensor(render_window(jpegs[i], win, crop), device=device)
            except UndecodableImage:
                good[i] = False
            continue
        w, h = win.size_s
        # bilinear with antialiasing, as Pillow's resize: the filter widens with the downscale factor
        scaled = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True,
                               align_corners=False)[0, :, win.y:win.y + crop, win.x:win.x + crop]
        if win.flip:
            scaled = scaled.flip(-1)
        out[i] = scaled.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out, good.to(device)
