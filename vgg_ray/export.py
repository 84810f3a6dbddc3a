"""Trained weights for the ecosystem: `python -m vgg_ray.export RUN_DIR_OR_CHECKPOINT OUT.pth` writes a
trained A/B/D/E net as a torchvision vgg11/13/16/19 state dict, for torchvision's standard preprocessing.

The paper's input is 0-255 pixels minus the training set's mean RGB (§2.1, `mean_rgb` in the checkpoint);
torchvision's is x/255 normalised by ImageNet's mean and std. Per channel c, the pixel p = 255 * x gives
  ours_c = (255 * (s_c * tv_c + m_c) - mean_rgb_c) / std_rgb_c    (std_rgb_c = 1 in the paper)
so conv1_1 absorbs the change: W'[:, c] = W[:, c] * 255 * s_c / std_rgb_c and
b' = b + sum_{c, kh, kw} W[:, c, kh, kw] * (255 * m_c - mean_rgb_c) / std_rgb_c.
Exact except at the image border: conv1_1 zero-pads, and a zero means a pixel of value 255 * m_c to the
exported net but one of mean_rgb_c to ours, so the two nets differ where conv1_1's window overhangs the
image (slightly, as ImageNet's mean is close to torchvision's). Pure PyTorch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import torch

from vgg_ray.checkpoints import load_model
from vgg_ray.models import TORCHVISION_NAMES, VGG, to_torchvision_state_dict

TV_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, on x/255
TV_STD = (0.229, 0.224, 0.225)


def fold_input_convention(weight: torch.Tensor, bias: torch.Tensor, mean_rgb: Sequence[float],
                          std_rgb: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1's (weight, bias) for torchvision's input, from ours for (pixel - mean_rgb) / std_rgb."""
    w = weight.detach().double()
    ours_std = torch.ones(3, dtype=torch.float64) if std_rgb is None else torch.tensor(std_rgb, dtype=torch.float64)
    scale = 255 * torch.tensor(TV_STD, dtype=torch.float64) / ours_std
    shift = (255 * torch.tensor(TV_MEAN, dtype=torch.float64) - torch.tensor(mean_rgb, dtype=torch.float64)) / ours_std
    new_w = w * scale.view(1, 3, 1, 1)
    new_b = bias.detach().double() + (w * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return new_w.to(weight.dtype).contiguous(), new_b.to(bias.dtype).contiguous()


def torchvision_export(model: VGG, info: Mapping) -> dict[str, torch.Tensor]:
    """A torchvision state dict of `model` (loaded with `info`, as load_model returns them) for x/255
    normalised by TV_MEAN / TV_STD. Raises ValueError for what torchvision's VGGs cannot hold."""
    if model.arch not in TORCHVISION_NAMES:
        raise ValueError(f"config {model.arch} has no torchvision counterpart: torchvision ships A, B, D, E "
                         f"(vgg11, vgg13, vgg16, vgg19) and no C or A-LRN")
    conv, fc6 = model.layer("conv1_1"), model.layer("fc6")
    if model.crop_size != 224 or fc6.in_channels != 512 or fc6.out_channels != 4096 or conv.out_channels != 64:
        raise ValueError(f"torchvision's {TORCHVISION_NAMES[model.arch]} has the paper's widths, 4096-wide fc6 "
                         f"and fc7 and 224-pixel crops (a 7x7 map into fc6); this net has crop "
                         f"{model.crop_size}, conv1_1 width {conv.out_channels}, fc6 {fc6.out_channels} wide "
                         f"(a smoke-preset run?)")
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in to_torchvision_state_dict(model).items()}
    key = model.layer_index["conv1_1"]
    state[f"{key}.weight"], state[f"{key}.bias"] = fold_input_convention(
        state[f"{key}.weight"], state[f"{key}.bias"], info["mean_rgb"], info.get("std_rgb"))
    return state


def export(source: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write `source`'s net (a run directory's best.pt or a checkpoint) to `out`; returns a usage line."""
    model, info = load_model(source)
    state = torchvision_export(model, info)
    torch.save(state, out)
    name, k = TORCHVISION_NAMES[model.arch], model.num_classes
    return (f"wrote {out}: torchvision.models.{name}({'' if k == 1000 else f'num_classes={k}'})"
            f".load_state_dict(torch.load({str(out)!r}, weights_only=True)); input: x/255 normalised by "
            f"mean {list(TV_MEAN)} std {list(TV_STD)}, 224x224")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vgg_ray.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a run directory (its best.pt) or a checkpoint file of config A, B, D or E")
    p.add_argument("out", help="the .pth file to write")
    args = p.parse_args(argv)
    try:
        print(export(args.source, args.out))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"vgg_ray.export: {e}") from None


if __name__ == "__main__":
    main()
