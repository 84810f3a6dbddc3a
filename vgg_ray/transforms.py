"""Image transforms of §3.1 (training) and §3.2 (testing). Pure NumPy/PIL/PyTorch, no Ray.

CPU side (per image, inside Ray Data tasks): decode -> isotropic rescale to smallest side S -> crop -> flip,
producing uint8 HWC arrays. Device side (per batch, on the training GPU): §3.1's PCA colour shift and
§2.1's mean subtraction, on float NCHW tensors.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.BILINEAR
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


def decode_rescaled(data: bytes, smallest_side: int) -> np.ndarray:
    """Decode image bytes to RGB and rescale isotropically to `smallest_side`; uint8 HWC.

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is at least that much
    larger than needed, so a 500x375 ImageNet photo rescaled to S=256 decodes ~1x, but S=64 (smoke) ~1/4
    of the pixels. Raises UndecodableImage on bytes that are not an image.
    """
    try:
        img = Image.open(io.BytesIO(data))
        w, h = rescaled_size(*img.size, smallest_side)
        if img.format == "JPEG":
            img.draft("RGB", (w, h))  # keeps the decoded size >= (w, h)
        img = img.convert("RGB")
    except PIL_ERRORS as e:
        raise UndecodableImage(f"{type(e).__name__}: {e}") from None
    if img.size != (w, h):
        img = img.resize((w, h), RESAMPLE, reducing_gap=None)
    return np.asarray(img)


def random_crop_flip(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """§3.1: one random crop x crop window of the rescaled image, flipped horizontally with p = 0.5."""
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


def draw_scale(rng: np.random.Generator, train_scale: tuple[int, int]) -> int:
    """§3.1: a fixed S, or S drawn uniformly per image from [S_min, S_max] (scale jittering)."""
    s_min, s_max = train_scale
    return s_min if s_min == s_max else int(rng.integers(s_min, s_max + 1))


def train_sample(data: bytes, train_scale: tuple[int, int], crop: int, rng: np.random.Generator) -> np.ndarray:
    return random_crop_flip(decode_rescaled(data, draw_scale(rng, train_scale)), crop, rng)


def val_sample(data: bytes, scale: int, crop: int) -> np.ndarray:
    """The single centre crop used to track validation accuracy during training (not the §3.2 protocol)."""
    return center_crop(decode_rescaled(data, scale), crop)


def to_float_nchw(images: torch.Tensor, mean_rgb: torch.Tensor, std_rgb: torch.Tensor | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC -> float NCHW with §2.1's mean RGB subtracted (units: 0-255 pixel values).

    `std_rgb` divides afterwards; the paper does not (None), torchvision's weights need it.
    """
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
    n = x.shape[0]
    alpha = torch.randn(n, 3, generator=generator, device="cpu").to(x.device) * std
    lam01 = eigval.to(x.device) / 255.0**2
    shift = 255.0 * (alpha * lam01) @ eigvec.to(x.device).T  # [n, 3]: eigvec @ (alpha * lambda), in levels
    return x + shift.view(n, 3, 1, 1).to(x.dtype)
