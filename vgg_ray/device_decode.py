"""§3.1's training crops decoded where the model trains: the JPEG bytes and the windows drawn on the CPU
(vgg_ray.transforms.train_window) travel to the train worker, which decodes the batch on its device
(nvJPEG through torchvision on a GPU), and samples each window there as the CPU path does: a box
reduction by 2, 4 or 8 where the CPU decoder would have scaled in the DCT domain, then bilinear samples
at OpenCV's pixel positions (vgg_ray.transforms.resample_window), all windows' sampling grids built at
once on the host. Pure PyTorch; the same code runs on the CPU, which is how the tests check it against
the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from vgg_ray.transforms import UndecodableImage, Window, dct_size, render_window

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
    if device.type == "cuda":
        # nvJPEG's hardware engine (A100, H100) writes its output before the work already queued on the
        # stream has run, into blocks the caching allocator may have just handed back from tensors that
        # queued kernels still read: silent corruption, NaN losses in code that never touched the
        # decoder (pytorch/vision#9606, meta-pytorch/torchcodec#1634). Drain the stream first. The
        # bench's --decode gpu path ended in NaN losses on an H100 on 2026-11-22 without this.
        torch.cuda.current_stream(device).synchronize()
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
    out = torch.zeros(n, 3, crop, crop, dtype=torch.float32, device=device)
    good = torch.as_tensor(np.asarray(ok, dtype=bool)).clone()
    idx = [i for i in range(n) if good[i]]
    images = _decode_all([torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in idx], device)
    sources, rows = [], []
    for i, img in zip(idx, images, strict=True):
        win = _window(wins[i])
        if img is None:
            try:
                out[i] = torch.as_tensor(render_window(jpegs[i], win, crop)).to(device).permute(2, 0, 1)
            except UndecodableImage:
                good[i] = False
            continue
        sources.append(_dct_like(img, win.size_s))
        rows.append(i)
    if rows:
        grids = torch.from_numpy(_grids([(wins[i], src.shape[-1], src.shape[-2]) for i, src in zip(rows, sources,
                                                                                                    strict=True)],
                                        crop)).to(device, non_blocking=True)
        for k, (i, src) in enumerate(zip(rows, sources, strict=True)):
            out[i] = F.grid_sample(src[None], grids[k:k + 1], mode="bilinear", padding_mode="border",
                                   align_corners=True)[0]
    images = out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return images, good.to(device)


def _dct_like(img: torch.Tensor, size_s: tuple[int, int]) -> torch.Tensor:
    """img (uint8 CHW, full size) as float, box-reduced by the factor the CPU decoder would have decoded
    at (transforms.decode: 1/2, 1/4 or 1/8 in the DCT domain, while still >= size_s)."""
    x = img.float()
    h, w = img.shape[-2:]
    mw, _ = dct_size((w, h), size_s)
    if mw:
        f = round(w / mw)
        f = 1 << (f.bit_length() - 1)  # 2, 4 or 8
        x = F.avg_pool2d(x[None], f, ceil_mode=True)[0]
    return x


def _grids(rows: list[tuple[np.ndarray, int, int]], crop: int) -> np.ndarray:
    """grid_sample's [N, crop, crop, 2] grids (align_corners=True) for (window row, source w, source h):
    transforms.resample_window's sampling positions, normalised to [-1, 1] over each source."""
    u = np.arange(crop, dtype=np.float64) + 0.5
    out = np.empty((len(rows), crop, crop, 2), dtype=np.float32)
    for k, (row, sw, sh) in enumerate(rows):
        w, h, x, y, flip = (int(v) for v in row)
        xs = (x + u) * (sw / w) - 0.5
        ys = (y + u) * (sh / h) - 0.5
        if flip:
            xs = xs[::-1]
        out[k, :, :, 0] = (xs / max(sw - 1, 1) * 2 - 1)[None, :]
        out[k, :, :, 1] = (ys / max(sh - 1, 1) * 2 - 1)[:, None]
    return out
