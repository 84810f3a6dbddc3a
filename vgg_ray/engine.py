"""One training step and the validation counts: what every trainer (the Ray Train loop, the benchmark's
paths and its plain PyTorch peer) runs per batch. Pure PyTorch.

A batch arrives as uint8 NHWC images on the device (decoded, rescaled, cropped and flipped on CPUs), with
an optional `decoded` mask: rows whose image could not be decoded hold zeros and count for nothing. The step:
§2.1's mean subtraction and §3.1's colour shift on the device -> micro-batches under bf16 autocast (on
CUDA), their gradients accumulated into one update of the whole batch -> SGD. Nothing here synchronises
with the device: losses and counts stay tensors until the caller reads them once per epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vgg_ray.config import TrainConfig
from vgg_ray.evaluation import topk_correct
from vgg_ray.models import VGG, build_vgg
from vgg_ray.transforms import colour_shift, to_float_nchw


def build_model(cfg: TrainConfig, num_classes: int) -> VGG:
    """The net a training configuration trains, freshly initialised (seed it first for repeatability)."""
    return build_vgg(cfg.arch, num_classes=num_classes, **cfg.model_kwargs())


def _autocast(device: torch.device, amp: bool):
    # bf16 keeps fp32's exponent range: no loss scaling, no overflow in VGG's large FC activations.
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """§3.1's SGD: momentum, weight decay, and --bias-decay's share of it on the biases (one parameter
    group when that is 1, as checkpoints written before the flag hold)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.bias_decay != 1.0:
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": cfg.weight_decay * cfg.bias_decay}]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of what rank `rank` draws in `epoch` (dropout masks, colour shifts): distinct per rank,
    so 8 ranks draw 8 x their share of masks as one GPU would draw them for the whole batch (§3.3), and a
    function of the epoch, so a worker restarted at epoch k draws what it would have drawn there."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


class TrainStep:
    """§3.1's SGD step on one global batch's share. `stats` is the manifest's RGB statistics (mean_rgb,
    eigval, eigvec, 0-255 units); `micro` images per forward pass (gradient accumulation below the batch;
    DDP all-reduces once, on the last micro-batch). `share_fraction` is this rank's share of the global
    batch times the world size (1 when the batch splits evenly): DDP averages the ranks' gradients, so a
    rank holding 86 of 256 images among 3 weighs its loss by 86*3/256 and the update is the mean over the
    whole batch. `seed` and `rank` seed what the step draws (start_epoch). With undecodable rows (none in
    converted shards; possible in others' files) a rank's mean is over its own decoded images, so they weigh
    a little more than the rest of the batch's: exact weights would need a count all-reduced every step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, stats: Mapping, device: torch.device,
                 *, micro: int, colour_shift_std: float = 0.1, seed: int = 0, rank: int = 0,
                 amp: bool | None = None, channels_last: bool | None = None, share_fraction: float = 1.0):
        on_gpu = device.type == "cuda"
        self.model, self.optimizer, self.device, self.micro = model, optimizer, device, micro
        self.mean, self.eigval, self.eigvec = (torch.tensor(stats[k], dtype=torch.float32, device=device)
                                               for k in ("mean_rgb", "eigval", "eigvec"))
        self.colour_shift_std, self.share_fraction = colour_shift_std, share_fraction
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator()  # the colour shift's alphas, drawn on the CPU
        self.start_epoch(0)
        self.amp = on_gpu if amp is None else amp
        self.channels_last = on_gpu if channels_last is None else channels_last

    def start_epoch(self, epoch: int) -> None:
        """Seed this rank's draws for `epoch` (epoch_seed): the colour shift's generator, and torch's
        default generators (every device's), which dropout draws from. Call it before each epoch; the
        weights were drawn before, from the run's seed alone, the same on every rank."""
        seed = epoch_seed(self.seed, epoch, self.rank)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 decoded: torch.Tensor | None = None) -> torch.Tensor:
        """One update; returns the summed loss of the batch's decoded images (a device tensor, no sync)."""
        x = to_float_nchw(images, self.mean, channels_last=self.channels_last)
        x = colour_shift(x, self.eigval, self.eigvec, self.colour_shift_std, self.generator)
        y = labels.long()
        weight = torch.ones(len(y), device=x.device) if decoded is None else decoded.to(x.device, torch.float32)
        # the images the mean is over, scaled to this rank's weight in DDP's average; a tensor: no host sync
        n_decoded = weight.sum().clamp(min=1) / self.share_fraction
        chunks = list(zip(x.split(self.micro), y.split(self.micro), weight.split(self.micro), strict=True))
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        for i, (xc, yc, wc) in enumerate(chunks):
            last = i == len(chunks) - 1
            no_sync = getattr(self.model, "no_sync", None)
            sync = no_sync() if not last and no_sync is not None else contextlib.nullcontext()
            with sync, _autocast(self.device, self.amp):
                loss = (F.cross_entropy(self.model(xc), yc, reduction="none").float() * wc).sum()
                (loss / n_decoded).backward()
            total += loss.detach()
        self.optimizer.step()
        return total


@torch.no_grad()
def validation_counts(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                      decoded: torch.Tensor | None = None, amp: bool | None = None,
                      channels_last: bool | None = None) -> torch.Tensor:
    """float64 [top-1 hits, top-5 hits, images] of one batch of centre crops (undecodable rows excluded),
    on the device, to be summed over batches and all-reduced over ranks."""
    on_gpu = images.device.type == "cuda"
    x = to_float_nchw(images, mean, channels_last=on_gpu if channels_last is None else channels_last)
    with _autocast(images.device, on_gpu if amp is None else amp):
        logits = model(x).float()
    if decoded is None:
        decoded = torch.ones(len(labels), dtype=torch.bool, device=images.device)
    decoded = decoded.bool()
    y = labels.long()
    return torch.stack([(topk_correct(logits, y, 1) & decoded).sum(),
                        (topk_correct(logits, y, 5) & decoded).sum(), decoded.sum()]).double()
