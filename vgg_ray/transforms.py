"""Image transforms of §3.1 (training) and §3.2 (testing). Pure NumPy/PIL/PyTorch, no Ray.

CPU side (per image, inside Ray Data tasks): S, the crop window and the flip are drawn from the image's
header; the decoder scales in the DCT domain and only the window is resampled (render_window), producing
uint8 HWC arrays.

The rescale is bilinear without an antialiasing filter, as Caffe's image I/O does it (OpenCV's
INTER_LINEAR; the paper's implementation was derived from Caffe, §3.3). The decoder's DCT scaling first
brings any image to less than twice the target size, so every shrink is by a factor in (0.5, 1], where
bilinear's two taps per axis still see every source pixel. OpenCV samples a window in a fraction of
the time of an antialiased resize (bench/README.md, "Decoders").

Device side (per batch, on the training GPU): §3.1's PCA colour shift and §2.1's mean subtraction, on
float NCHW tensors.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import simplejpeg
from PIL import Image

if TYPE_CHECKING:
    import torch

# Per-image work runs one image per process (Ray Data tasks, DataLoader workers, evaluation actors):
# OpenCV's own thread pool would only contend with the other processes for the cores.
cv2.setNumThreads(1)
# What PIL raises on bytes that are not a readable image: truncated or empty files, HTML saved as .JPEG,
# decompression bombs. (SyntaxError too: PIL's parsers raise it on malformed headers.)
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UndecodableImage(ValueError):
    """Bytes that do not decode to an image. The one exception every reader (training, validation,
    evaluation, the converter, the benchmarks) counts, names and skips; any other exception is a bug
    and goes through."""


def rescaled_size(width: int, height: int, smallest_side: int) -> tuple[int, int]:
    """(w, h) after the isotropic rescale that makes the smallest side `smallest_side` pixels."""
    if width <= height:
        return smallest_side, max(smallest_side, int(round(height * smallest_side / width)))
    return max(smallest_side, int(round(width * smallest_side / height))), smallest_side


# ---- decoding ----

def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone: microseconds, no pixel decoded."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return w, h
    except ValueError:  # not a JPEG simplejpeg reads (a PNG, CMYK): Pillow's header parser
        pass
    try:
        return Image.open(io.BytesIO(data)).size
    except PIL_ERRORS as e:
        raise UndecodableImage(f"{type(e).__name__}: {e}") from None


def dct_factor(size: tuple[int, int], min_size: tuple[int, int]) -> int:
    """1, 2, 4 or 8: the largest reduction of `size` (w, h) libjpeg-turbo's DCT scaling makes while the image
    stays >= min_size (1: full size; also when no minimum is given). Its other scales (the eighths
    between) decode slower than full size (bench/README.md)."""
    (w, h), (mw, mh) = size, min_size
    if mw <= 0 or mh <= 0:
        return 1
    f = 1
    while f < 8 and -(-w // (2 * f)) >= mw and -(-h // (2 * f)) >= mh:
        f *= 2
    return f


def dct_size(size: tuple[int, int], min_size: tuple[int, int]) -> tuple[int, int]:
    """The size dct_factor reduces `size` to (rounding up, as libjpeg-turbo does), or (0, 0) for full size."""
    f = dct_factor(size, min_size)
    return (0, 0) if f == 1 else (-(-size[0] // f), -(-size[1] // f))


def decode(data: bytes, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """RGB uint8 HWC, at least `min_size` (w, h; (0, 0): full size): JPEGs go to libjpeg-turbo through simplejpeg, which
    decodes at 1/2, 1/4 or 1/8 size in the DCT domain when that is still at least `min_size`; what it
    cannot read (CMYK, PNG, a broken stream) goes to Pillow. Raises UndecodableImage when neither can."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        mw, mh = dct_size((w, h), min_size)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=mw, min_height=mh)
    except ValueError:
        pass
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG" and min(min_size) > 0:
            img.draft("RGB", min_size)  # libjpeg's own 1/2, 1/4, 1/8 scaling, keeping >= min_size
        return np.asarray(img.convert("RGB"))
    except PIL_ERRORS as e:
        raise UndecodableImage(f"{type(e).__name__}: {e}") from None


def decode_rescaled(data: bytes, smallest_side: int) -> np.ndarray:
    """The whole image rescaled isotropically so that its smallest side is `smallest_side`; uint8 HWC
    (§3.2's test images at scale Q). Bilinear, after the decoder's DCT scaling (module docstring)."""
    w, h = rescaled_size(*image_size(data), smallest_side)
    img = decode(data, (w, h))
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


# ---- §3.1's training crops and the validation centre crop, drawn as windows ----

@dataclass(frozen=True)
class Window:
    """A crop x crop window of the image rescaled to `size_s` (w, h: its smallest side is S), at column x
    and row y of that rescaled image, mirrored when `flip`. Drawn on the CPU from the image's header
    alone; rendered on the CPU (render_window) or on the training device (vgg_ray.device_decode)."""
    size_s: tuple[int, int]
    x: int
    y: int
    flip: bool


WINDOW_FIELDS = 5  # a window as int32: w_S, h_S, x, y, flip


def window_array(wins: Sequence[Window | None]) -> np.ndarray:
    """Windows as an int32 [N, 5] column for Ray Data (an undecodable image's row is zeros)."""
    return np.asarray([(w.size_s[0], w.size_s[1], w.x, w.y, int(w.flip)) if w else (0,) * WINDOW_FIELDS
                       for w in wins], dtype=np.int32).reshape(-1, WINDOW_FIELDS)


def row_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one training image's S, crop and flip in `epoch`: from what the image is (its
    key) rather than where it lands, so the same seed gives the same draws whatever the block layout or
    task scheduling, and a new epoch gives new ones."""
    return np.random.default_rng([zlib.crc32(key.encode()), epoch, seed])


def draw_scale(rng: np.random.Generator, train_scale: tuple[int, int]) -> int:
    """§3.1: a fixed S, or S drawn uniformly per image from [S_min, S_max] (scale jittering)."""
    s_min, s_max = train_scale
    return s_min if s_min == s_max else int(rng.integers(s_min, s_max + 1))


def train_window(size: tuple[int, int], train_scale: tuple[int, int], crop: int,
                 rng: np.random.Generator) -> Window:
    """§3.1: S (fixed or jittered), then a uniformly placed crop x crop window of the image rescaled to S,
    flipped with p = 0.5 (drawn in that order: the same draws as rescaling first and cropping after)."""
    w, h = rescaled_size(*size, draw_scale(rng, train_scale))
    if h < crop or w < crop:
        raise ValueError(f"image {w}x{h} is smaller than the crop {crop}: S must be >= the crop size")
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return Window((w, h), x, y, bool(rng.random() < 0.5))


def centre_window(size: tuple[int, int], scale: int, crop: int) -> Window:
    w, h = rescaled_size(*size, scale)
    return Window((w, h), (w - crop) // 2, (h - crop) // 2, False)


def render_window(data: bytes, win: Window, crop: int, out: np.ndarray | None = None) -> np.ndarray:
    """The window's crop x crop pixels, uint8 HWC: the pixels of rescaling the whole image to `win.size_s`
    and cropping (within rounding), for the work of the window alone. The decoder scales in the DCT
    domain when it can (decode); OpenCV then samples the window's pixels bilinearly, at the positions
    OpenCV's whole-image resize would (pixel centres, edges replicated). Written into `out` (a
    contiguous [crop, crop, 3] uint8 array, say a row of a batch) when given."""
    return resample_window(decode(data, win.size_s), win, crop, out)


def resample_window(img: np.ndarray, win: Window, crop: int, out: np.ndarray | None = None) -> np.ndarray:
    """`win` of `img` (uint8 HWC, any size: the decoder's output) rescaled to win.size_s: output pixel
    (u, v) samples the source at ((x + u + 0.5) * sx - 0.5, (y + v + 0.5) * sy - 0.5), sx and sy being
    the source's size over win.size_s, as OpenCV's INTER_LINEAR resize does; mirrored (u -> crop-1-u)
    when win.flip, in the same pass. Contiguous, written into `out` when given."""
    (w, h), (dh, dw) = win.size_s, img.shape[:2]
    sx, sy = dw / w, dh / h
    if win.flip:
        row_x = (-sx, 0.0, (win.x + crop - 0.5) * sx - 0.5)
    else:
        row_x = (sx, 0.0, (win.x + 0.5) * sx - 0.5)
    inverse = np.array([row_x, (0.0, sy, (win.y + 0.5) * sy - 0.5)])
    res = cv2.warpAffine(img, inverse, (crop, crop), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    if out is not None and res.ctypes.data != out.ctypes.data:
        out[...] = res  # OpenCV wrote a new array, silently: copy it in, or raise if `out` cannot hold it
    return res


def train_sample(data: bytes, train_scale: tuple[int, int], crop: int, rng: np.random.Generator,
                 out: np.ndarray | None = None) -> np.ndarray:
    return render_window(data, train_window(image_size(data), train_scale, crop, rng), crop, out)


def val_sample(data: bytes, scale: int, crop: int, out: np.ndarray | None = None) -> np.ndarray:
    """The single centre crop used to track validation accuracy during training (not the §3.2 protocol)."""
    return render_window(data, centre_window(image_size(data), scale, crop), crop, out)


# ---- the same, the classic way: rescale the whole image, then crop (the peer's way; kept for tests) ----

def random_crop_flip(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """One random crop x crop window of an already rescaled image, flipped horizontally with p = 0.5."""
    h, w = img.shape[:2]
    if h < crop or w < crop:
        raise ValueError(f"image {w}x{h} is smaller than the crop {crop}: S must be >= the crop size")
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    out = img[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def center_crop(img: np.ndarray, crop: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - crop) // 2, (w - crop) // 2
    return np.ascontiguousarray(img[y:y + crop, x:x + crop])


def to_float_nchw(images: torch.Tensor, mean_rgb: torch.Tensor, std_rgb: torch.Tensor | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC -> float NCHW with §2.1's mean RGB subtracted (units: 0-255 pixel values).

    `std_rgb` divides afterwards; the paper does not (None), torchvision's weights need it.
    """
    import torch  # here, not above: Ray Data's decode tasks import this module and never need torch (~3 s)

    x = images.permute(0, 3, 1, 2).float()
    x = x - mean_rgb.view(1, 3, 1, 1)
    if std_rgb is not None:
        x = x / std_rgb.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def colour_shift(x: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor, std: float = 0.1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """§3.1 / AlexNet's PCA colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel.

    eigval [3] and eigvec [3, 3] (columns are the p_i) come from the training set's RGB covariance in
    0-255 units; alpha_i ~ N(0, std) is drawn once per image per pass. The rule is not scale-free
    (lambda is a variance): like AlexNet and its re-implementations it is applied to pixels in [0, 1],
    i.e. lambda_01 = lambda / 255^2, and the shift is scaled back to 0-255 levels. On ImageNet that is
    a shift of a few levels (lambda_01 ~ 0.2 -> 0.02 * 255 ~ 5), not hundreds.
    """
    import torch

    n = x.shape[0]
    alpha = torch.randn(n, 3, generator=generator, device="cpu").to(x.device) * std
    lam01 = eigval.to(x.device) / 255.0**2
    shift = 255.0 * (alpha * lam01) @ eigvec.to(x.device).T  # [n, 3]: eigvec @ (alpha * lambda), in levels
    return x + shift.view(n, 3, 1, 1).to(x.dtype)
