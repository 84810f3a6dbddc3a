"""§3.2's test protocol: dense and multi-crop evaluation, their combination, multi-scale averaging,
ConvNet fusion, top-1/top-5 errors. Pure PyTorch.

Every method produces soft-max class posteriors [N, classes]; combining methods, scales or models is
always the plain average of posteriors (§3.2), so `average` is the one combination rule. Errors are in
percent. An evaluation is cut into pieces (one model, one method, one Q, a slice of the images:
`plan_pieces`) and their posteriors collected (`PosteriorTable`); vgg_ray/distributed/evaluate.py hands
the pieces to a Ray cluster, and report.py turns the collected posteriors into the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from vgg_ray.imagenet.shards import row_ranges
from vgg_ray.models import VGG, forward_macs
from vgg_ray.transforms import to_float_nchw

DENSE, MULTI_CROP, BOTH = "dense", "multi-crop", "multi-crop+dense"
METHODS = (DENSE, MULTI_CROP, BOTH)
NETWORK_METHODS = (DENSE, MULTI_CROP)  # the two that run a network; BOTH is their average
GRID = 5  # §3.2: a 5x5 regular grid of crops per scale, each also flipped: 50 crops per scale


# ---- the two evaluation methods ----

def grid_positions(height: int, width: int, crop: int, grid: int = GRID) -> list[tuple[int, int]]:
    """(top, left) of the grid x grid crops, row by row: evenly spaced from the image's top-left corner
    to its bottom-right one, so the grid covers the whole rescaled image. Offsets are floored to pixels."""
    if height < crop or width < crop:
        raise ValueError(f"image {width}x{height} is smaller than the crop {crop}: Q must be >= the crop size")
    if grid < 1:
        raise ValueError(f"grid={grid}: need at least one crop per side")
    steps = max(grid - 1, 1)
    tops = [i * (height - crop) // steps for i in range(grid)]
    lefts = [j * (width - crop) // steps for j in range(grid)]
    return [(t, left) for t in tops for left in lefts]


def multi_crop_views(image: torch.Tensor, crop: int, grid: int = GRID) -> torch.Tensor:
    """[3, H, W] -> [2 * grid^2, 3, crop, crop]: the grid's crops, then the same crops flipped."""
    crops = torch.stack([image[:, t:t + crop, left:left + crop]
                         for t, left in grid_positions(image.shape[-2], image.shape[-1], crop, grid)])
    return torch.cat([crops, crops.flip(-1)])


@torch.no_grad()
def dense_posteriors(model: VGG, images: torch.Tensor) -> torch.Tensor:
    """§3.2 dense evaluation of a batch of equally sized, normalised images [N, 3, H, W] -> [N, classes].

    Each image and its mirror image go through the fully convolutional net once, whole; the class score
    map is averaged over its h x w positions, soft-maxed, and the two posteriors averaged. The paper says
    "averaged (sum-pooled)": a sum would sharpen the soft-max by h*w, more at larger Q; the mean keeps
    one temperature at every Q and makes dense on a crop-sized image the crop's own posterior.
    """
    _check_eval(model)
    n = images.shape[0]
    scores = model.score_map(torch.cat([images, images.flip(-1)])).float().mean(dim=(2, 3))
    return scores.softmax(dim=1).view(2, n, -1).mean(dim=0)


@torch.no_grad()
def multi_crop_posteriors(model: VGG, images: Sequence[torch.Tensor], grid: int = GRID,
                          max_batch: int = 250) -> torch.Tensor:
    """§3.2 multi-crop evaluation of normalised images [3, H, W] (sizes may differ) -> [N, classes].

    Each image gives 2 * grid^2 crops of the model's crop size; the crops of all the images go through
    the net in batches of `max_batch`, and each image's crop posteriors are averaged.
    """
    _check_eval(model)
    per_image = 2 * grid * grid
    if not images:
        return torch.empty(0, model.num_classes)
    crops = torch.cat([multi_crop_views(img, model.crop_size, grid) for img in images])
    probs = torch.cat([model(chunk).float().softmax(dim=1) for chunk in crops.split(max_batch)])
    return probs.view(len(images), per_image, -1).mean(dim=1)


def _check_eval(model: VGG) -> None:
    if model.training:
        raise ValueError("the model is in training mode (dropout on): call model.eval() before evaluating")


def evaluate_images(model: VGG, images: Sequence[np.ndarray], methods: Iterable[str], mean_rgb,
                    std_rgb=None, max_batch: int = 250) -> dict[str, torch.Tensor]:
    """Posteriors [N, classes] per method (`dense`, `multi-crop`) for uint8 HWC images already rescaled
    to one test scale Q. The model sits on its device; results come back on the CPU in input order.

    `max_batch` bounds a forward pass in crop-sized units: dense batches hold about max_batch crops'
    worth of pixels (flips included), multi-crop batches about max_batch crops.
    """
    methods = list(methods)
    for m in methods:
        if m not in NETWORK_METHODS:
            raise ValueError(f"method {m!r}: expected one of {', '.join(NETWORK_METHODS)}")
    device = next(model.parameters()).device
    mean = torch.as_tensor(mean_rgb, dtype=torch.float32, device=device)
    std = None if std_rgb is None else torch.as_tensor(std_rgb, dtype=torch.float32, device=device)

    def normalised(idx: Sequence[int]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([images[i] for i in idx])).to(device)
        return to_float_nchw(batch, mean, std)

    out: dict[str, torch.Tensor] = {}
    if DENSE in methods:
        dense = torch.empty(len(images), model.num_classes)
        by_shape: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)
        for (h, w, _), idx in by_shape.items():
            per_batch = max(1, max_batch * model.crop_size ** 2 // (2 * h * w))
            for k in range(0, len(idx), per_batch):
                chunk = idx[k:k + per_batch]
                dense[chunk] = dense_posteriors(model, normalised(chunk)).cpu()
        out[DENSE] = dense
    if MULTI_CROP in methods:
        # Normalise a few images at a time so about max_batch crops sit on the device at once.
        per_chunk = max(1, max_batch // (2 * GRID * GRID))
        parts = []
        for k in range(0, len(images), per_chunk):
            chunk = [normalised([i])[0] for i in range(k, min(k + per_chunk, len(images)))]
            parts.append(multi_crop_posteriors(model, chunk, max_batch=max_batch).cpu())
        out[MULTI_CROP] = torch.cat(parts) if parts else torch.empty(0, model.num_classes)
    return out


# ---- combining posteriors and scoring them ----

def average(posteriors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of equally shaped posteriors: §3.2's rule for flips, crops, scales, methods and models."""
    if not posteriors:
        raise ValueError("nothing to average")
    shapes = {tuple(p.shape) for p in posteriors}
    if len(shapes) != 1:
        raise ValueError(f"posteriors of different shapes cannot be averaged: {sorted(shapes)}")
    return torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in posteriors]).mean(dim=0)


def multi_crop_and_dense(dense: torch.Tensor, multi_crop: torch.Tensor) -> torch.Tensor:
    """§3.2 / Table 5: the two methods are complementary; their posteriors are averaged."""
    return average([dense, multi_crop])


def fusion(per_model: Sequence[torch.Tensor]) -> torch.Tensor:
    """§3.2 / Table 6, ConvNet fusion: the posteriors of several models averaged."""
    return average(per_model)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [N]: the true class is among the k most probable (all classes count when k >= classes)."""
    k = min(k, probs.shape[1])
    return (probs.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)


def topk_errors(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1 error, top-5 error) in percent."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"{probs.shape[0]} posteriors for {labels.shape[0]} labels: need equal, non-zero counts")
    return tuple(100.0 * (1.0 - topk_correct(probs, labels, k).float().mean().item()) for k in (1, 5))


# ---- the pieces of a fan-out: planned, then collected ----

def plan_pieces(n_images: int, scales_by_model: Mapping[str, Mapping[int, int]], methods: Iterable[str],
                slice_images: int = 0) -> list[dict]:
    """Every (model, method, Q, slice of `slice_images` images; 0 = auto_slice's), each Q given as
    {Q: pixels}; the slices of one (model, method, Q) tile [0, n_images) exactly. Most expensive first
    (multi-crop at the largest Q), so no long piece starts last."""
    slice_images = slice_images or auto_slice(n_images)
    ranges = row_ranges(n_images, max(1, math.ceil(n_images / slice_images)))
    pieces = [{"model": m, "method": meth, "scale": q, "scale_px": px, "start": a, "stop": b}
              for m, qs in scales_by_model.items() for meth in methods for q, px in qs.items()
              for a, b in ranges if b > a]
    pieces.sort(key=lambda p: -crop_forwards(p) * (p["stop"] - p["start"]))
    for i, p in enumerate(pieces):
        p["index"] = i
    return pieces


def auto_slice(n_images: int) -> int:
    """Images per piece when not given: small pieces balance the load; past ~256 images a piece gains
    nothing and delays the last results."""
    return max(8, min(256, math.ceil(n_images / 8)))


def crop_forwards(piece: Mapping, crop: int = 224) -> float:
    """A piece's forward cost per image, in forwards of one crop: 50 crops, or two whole images
    (and their flips) of ~4/3 x Q^2 pixels."""
    if piece["method"] == MULTI_CROP:
        return 2 * GRID * GRID
    return 2 * 4 / 3 * (piece["scale_px"] / crop) ** 2


def work_macs(pieces: Sequence[Mapping], models: Mapping[str, VGG]) -> float:
    """Multiply-accumulates the pieces take in all, from each model's cost of one crop."""
    per_crop = {name: forward_macs(m, m.crop_size) for name, m in models.items()}
    return sum((p["stop"] - p["start"]) * crop_forwards(p, models[p["model"]].crop_size) * per_crop[p["model"]]
               for p in pieces)


class PosteriorTable:
    """Collects per-slice results of one evaluation and checks that every image is seen exactly once per
    (model, method, Q). Keeps, per (model, method), the running sum over Q of the posteriors (one
    [N, classes] array, not one per Q) and, per Q, whether each image's top-1/top-5 was right.
    """

    def __init__(self, n_images: int, scales: Mapping[str, Sequence[int]], methods: Sequence[str],
                 num_classes: int):
        self.n, self.num_classes = n_images, num_classes
        self.scales = {m: tuple(s) for m, s in scales.items()}
        self.methods = [m for m in NETWORK_METHODS if m in methods]
        self.keys: list[str | None] = [None] * n_images
        self.labels = np.full(n_images, -1, dtype=np.int64)
        self.undecodable = np.zeros(n_images, dtype=bool)  # counted, then left out of every metric
        self.seen = {(m, meth, q): np.zeros(n_images, dtype=np.int32)
                     for m, qs in self.scales.items() for meth in self.methods for q in qs}
        self.sums = {(m, meth): np.zeros((n_images, num_classes), dtype=np.float32)
                     for m in self.scales for meth in self.methods}
        self.hits = {(m, meth, q, k): np.zeros(n_images, dtype=bool) for (m, meth, q) in self.seen for k in (1, 5)}

    def add(self, model: str, method: str, scale: int, start: int, keys: Sequence[str], labels,
            probs: np.ndarray, undecodable: Sequence[int] = ()) -> None:
        """One slice [start, start + len(keys)) of the images, evaluated by one model at one Q; `undecodable`
        lists the slice's rows (from 0) whose image could not be decoded."""
        where = (model, method, scale)
        if where not in self.seen:
            raise KeyError(f"unexpected piece {where}: planned are {sorted(self.seen)}")
        stop = start + len(keys)
        if start < 0 or stop > self.n or probs.shape != (len(keys), self.num_classes):
            raise ValueError(f"piece {where} rows [{start}, {stop}) with probs {probs.shape}: outside the "
                             f"{self.n} images or not [rows, {self.num_classes}]")
        seen = self.seen[where][start:stop]
        if seen.any():
            raise RuntimeError(f"piece {where} rows [{start}, {stop}): some images were already counted "
                               f"(a retried piece delivered twice?)")
        labels = np.asarray(labels, dtype=np.int64)
        for i, (key, label) in enumerate(zip(keys, labels, strict=True)):
            row = start + i
            if self.keys[row] is None:
                self.keys[row], self.labels[row] = key, label
            elif self.keys[row] != key or self.labels[row] != label:
                raise RuntimeError(f"row {row}: {key!r}/{label} here, {self.keys[row]!r}/{self.labels[row]} "
                                   f"in another piece: the shards changed during the evaluation?")
        seen += 1
        if len(undecodable):
            self.undecodable[start + np.asarray(undecodable)] = True
        self.sums[model, method][start:stop] += probs
        t_probs, t_labels = torch.tensor(probs, dtype=torch.float32), torch.tensor(labels)
        for k in (1, 5):
            self.hits[model, method, scale, k][start:stop] = topk_correct(t_probs, t_labels, k).numpy()

    def check_complete(self) -> None:
        for where, seen in self.seen.items():
            if not (seen == 1).all():
                missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
                raise RuntimeError(f"{where}: {missing} images never evaluated, {twice} more than once")

    @property
    def decoded(self) -> np.ndarray:
        return ~self.undecodable

    def posteriors(self, model: str, method: str) -> torch.Tensor:
        """Multi-scale posteriors [N_decoded, classes] of one model: the mean over its Q set (§3.2)."""
        if method == BOTH:
            return multi_crop_and_dense(self.posteriors(model, DENSE), self.posteriors(model, MULTI_CROP))
        return torch.from_numpy(self.sums[model, method][self.decoded] / len(self.scales[model]))

    def single_scale_errors(self, model: str, method: str, scale: int) -> tuple[float, float]:
        decoded = self.decoded
        if not decoded.any():
            raise RuntimeError("no image could be decoded")
        return tuple(100.0 * (1.0 - self.hits[model, method, scale, k][decoded].mean()) for k in (1, 5))

    def decoded_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.labels[self.decoded])

    def decoded_keys(self) -> list[str]:
        return [k for k, d in zip(self.keys, self.decoded, strict=True) if d]


def available_methods(methods: Sequence[str]) -> list[str]:
    """The reported methods: those run, plus multi-crop+dense whenever both were run."""
    ran = [m for m in NETWORK_METHODS if m in methods]
    return ran + ([BOTH] if len(ran) == 2 else [])
