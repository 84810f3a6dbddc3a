"""The six VGG configurations of Table 1 as data, one builder, and the weight plumbing around them.

Pure PyTorch: this module never imports Ray. `python -m vgg_ray.models` prints Table 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Table 1, column by column. "3-64" is conv3-64 (3x3, 64 channels), "1-256" a 1x1 conv (config C),
# "M" a 2x2/2 max-pool ending a block, "LRN" AlexNet's local response normalisation (A-LRN only).
ARCHS: dict[str, list[str]] = {
    "A": ["3-64", "M", "3-128", "M", "3-256", "3-256", "M", "3-512", "3-512", "M", "3-512", "3-512", "M"],
    "A-LRN": ["3-64", "LRN", "M", "3-128", "M", "3-256", "3-256", "M", "3-512", "3-512", "M",
              "3-512", "3-512", "M"],
    "B": ["3-64", "3-64", "M", "3-128", "3-128", "M", "3-256", "3-256", "M", "3-512", "3-512", "M",
          "3-512", "3-512", "M"],
    "C": ["3-64", "3-64", "M", "3-128", "3-128", "M", "3-256", "3-256", "1-256", "M",
          "3-512", "3-512", "1-512", "M", "3-512", "3-512", "1-512", "M"],
    "D": ["3-64", "3-64", "M", "3-128", "3-128", "M", "3-256", "3-256", "3-256", "M",
          "3-512", "3-512", "3-512", "M", "3-512", "3-512", "3-512", "M"],
    "E": ["3-64", "3-64", "M", "3-128", "3-128", "M", "3-256", "3-256", "3-256", "3-256", "M",
          "3-512", "3-512", "3-512", "3-512", "M", "3-512", "3-512", "3-512", "3-512", "M"],
}

# torchvision's plain (no batch-norm) VGGs share our `features.N` / `classifier.N` layout for these four.
TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}

# §3.1: a deeper net starts from A's first four conv layers and its three FC layers. A's first four convs
# are conv1_1, conv2_1, conv3_1 and conv3_2; the deeper nets have layers of the same name and shape.
TRANSFER_FROM_A = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")

INIT_SCHEMES = ("glorot", "gaussian")
# §3.1 reads "normal distribution with zero mean and 1e-2 variance", i.e. std 0.1. That cannot be what
# trained: on 0-255 pixels minus the mean, std 0.1 grows activations ~sqrt(fan_in/2)*0.1 (1.7 to 11) per
# layer, and a fresh A's logits come out with std ~1e7-1e8 (tests/test_models.py measures it). Caffe's
# Gaussian filler and most re-implementations of VGG use std 0.01, which keeps them small and trains.
# It is the std of the paper's layers: a narrower net (or a smaller crop, which shrinks fc6's kernel)
# draws each layer so that fan-in x std^2, the layer's gain, stays the paper's (gaussian_std).
GAUSSIAN_STD = 0.01

POOL_STRIDE = 32  # five 2x2/2 max-pools: a crop of c pixels leaves a c/32 x c/32 map for fc6.


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    return arch


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class AlexNetLRN(nn.Module):
    """Local response normalisation as AlexNet defines it (Krizhevsky et al. 2012, §3.3), for A-LRN:
    b_i = a_i / (k + alpha * sum_j a_j^2)^beta, j over the `size` channels centred on i (clipped at the
    ends). torch's nn.LocalResponseNorm (and Caffe's layer) divide alpha by `size`; AlexNet's formula, whose
    parameters §2.1 names, does not, so with those parameters they normalise 5x less."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size={size}: must be odd, a window centred on each channel")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.size // 2
        sq = F.pad(x.pow(2).unsqueeze(1), (0, 0, 0, 0, half, half))  # [N, 1, C + size - 1, H, W]
        window_sum = F.avg_pool3d(sq, (self.size, 1, 1), stride=1).squeeze(1) * self.size
        return x / (self.k + self.alpha * window_sum).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class VGG(nn.Module):
    """A VGG net whose classifier is already convolutional (§3.2's dense form).

    fc6 is a k x k conv (k = crop_size / 32: 7 at 224), fc7 and fc8 are 1x1 convs, so `score_map` on an
    image of any size >= crop_size is dense evaluation, and `forward` on a crop gives the crop's logits.
    """

    def __init__(self, arch: str, *, num_classes: int = 1000, width: float = 1.0, fc_width: int = 4096,
                 crop_size: int = 224, dropout: float = 0.5):
        super().__init__()
        _check_arch(arch)
        if crop_size < POOL_STRIDE or crop_size % POOL_STRIDE:
            raise ValueError(f"crop_size={crop_size}: must be a positive multiple of {POOL_STRIDE}")
        if width <= 0 or fc_width < 1 or num_classes < 1:
            raise ValueError(f"width={width}, fc_width={fc_width}, num_classes={num_classes}: must be positive")
        self.arch, self.num_classes, self.crop_size = arch, num_classes, crop_size
        layers: list[nn.Module] = []
        # Paper names (conv<block>_<i>, fc6-8) -> index in features/classifier, for transfer and errors.
        self.layer_index: dict[str, str] = {}
        in_ch, block, i = 3, 1, 0
        for item in ARCHS[arch]:
            if item == "M":
                # Rounding up, as Caffe's pooling did: at a Q that is not a multiple of 32 the last row
                # and column still count (256x341 -> an 8x11 map, not 8x10). Crops are unaffected.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                block, i = block + 1, 0
            elif item == "LRN":
                layers.append(AlexNetLRN(size=5, alpha=1e-4, beta=0.75, k=2.0))  # §2.1: AlexNet's values
            else:
                k, out = (int(v) for v in item.split("-"))
                out = _scaled(out, width)
                i += 1
                self.layer_index[f"conv{block}_{i}"] = f"features.{len(layers)}"
                layers += [nn.Conv2d(in_ch, out, k, padding=k // 2), nn.ReLU(inplace=True)]
                in_ch = out
        self.features = nn.Sequential(*layers)
        k = crop_size // POOL_STRIDE
        self.classifier = nn.Sequential(
            nn.Conv2d(in_ch, fc_width, k), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(fc_width, fc_width, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(fc_width, num_classes, 1),
        )
        self.layer_index.update(fc6="classifier.0", fc7="classifier.3", fc8="classifier.6")

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """Class score map [N, classes, h, w]; h = w = 1 on a crop, 2 at Q=256, 6 at 384, 10 at 512."""
        if min(x.shape[-2:]) < self.crop_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the crop size {self.crop_size}")
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # §3.2: the score map is spatially averaged; on a crop-sized input it is 1x1, i.e. the crop's logits.
        return self.score_map(x).mean(dim=(2, 3))

    def layer(self, name: str) -> nn.Conv2d:
        if name not in self.layer_index:
            raise KeyError(f"{self.arch} has no layer {name!r}: it has {', '.join(self.layer_index)}")
        return self.get_submodule(self.layer_index[name])

    def weight_layers(self) -> int:
        return len(self.layer_index)


def build_vgg(arch: str, *, num_classes: int = 1000, width: float = 1.0, fc_width: int = 4096,
              crop_size: int = 224, dropout: float = 0.5, init: str = "glorot",
              init_std: float = GAUSSIAN_STD) -> VGG:
    """Build configuration `arch` of Table 1; works under `torch.device("meta")` for free counting."""
    model = VGG(arch, num_classes=num_classes, width=width, fc_width=fc_width, crop_size=crop_size,
                dropout=dropout)
    init_weights(model, init, std=init_std)
    return model


def init_weights(model: VGG, scheme: str = "glorot", *, std: float = GAUSSIAN_STD) -> None:
    """`glorot`: Glorot & Bengio (2010), which the authors found works without pre-training (§3.1).
    `gaussian`: §3.1's zero-mean normal weights, std `std` for the paper's layers (see gaussian_std).
    Biases zero."""
    reinit_layers(model, list(model.layer_index), scheme, std=std)


def _fan_in(m: nn.Conv2d) -> int:
    return m.in_channels * m.kernel_size[0] * m.kernel_size[1]


def gaussian_std(model: VGG, name: str, std: float = GAUSSIAN_STD) -> float:
    """The std layer `name` draws under the gaussian scheme: `std` at the paper's size, and at any other
    width, FC width or crop size the std that keeps fan-in x std^2 the paper layer's, so that a narrow net
    passes its signal on as the paper's did (at 1/16 width, conv3_1 has 1/16 of the fan-in and draws
    4 x std; at a 32-pixel crop fc6 is a 1x1 conv over 32 channels, not 7x7 over 512, and draws 28 x std)."""
    with torch.device("meta"):
        paper = VGG(model.arch, num_classes=model.num_classes).layer(name)
    return std * (_fan_in(paper) / _fan_in(model.layer(name))) ** 0.5


def glorot_bound(model: VGG, name: str) -> float:
    """Glorot & Bengio's uniform bound sqrt(6 / (fan_in + fan_out)) for layer `name`. A conv's fan-out
    counts its kernel (out x k x k, as torch's xavier_uniform_); fc6-8 are the paper's fully connected
    layers, held as convs, so their fan-out is their width: fc6 at 224 is 25,088 -> 4,096, bound 0.0143,
    not the 7x7 conv's 0.0052."""
    m = model.layer(name)
    fan_out = m.out_channels * (1 if name.startswith("fc") else m.kernel_size[0] * m.kernel_size[1])
    return (6 / (_fan_in(m) + fan_out)) ** 0.5


def reinit_layers(model: VGG, layers: Sequence[str], scheme: str, *, std: float = GAUSSIAN_STD) -> None:
    """Draw fresh weights (and zero biases) for `layers`, paper names of a VGG (conv3_3, fc6)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init={scheme!r}: expected one of {', '.join(INIT_SCHEMES)}")
    for name in layers:
        m = model.layer(name)
        if m.weight.is_meta:
            continue
        if scheme == "glorot":
            nn.init.uniform_(m.weight, -glorot_bound(model, name), glorot_bound(model, name))
        else:
            nn.init.normal_(m.weight, 0.0, gaussian_std(model, name, std))
        nn.init.zeros_(m.bias)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(model: VGG, size: int | tuple[int, int] = 224) -> int:
    """Multiply-accumulates of one forward pass on a size x size (or h x w) image (convs only; ReLU/pool
    are free). Pools round up, as the model's do."""
    macs, (h, w) = 0, (size, size) if isinstance(size, int) else size
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            macs += h * w * m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            h, w = -(-h // 2), -(-w // 2)
    for m in model.classifier:
        if isinstance(m, nn.Conv2d):
            h, w = h - m.kernel_size[0] + 1, w - m.kernel_size[1] + 1
            macs += h * w * m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    return macs


def copy_layers(dst: VGG, src_state: Mapping[str, torch.Tensor], src_index: Mapping[str, str],
                names: tuple[str, ...] | list[str]) -> None:
    """Copy the named paper layers (e.g. conv1_1, fc6) from a state dict; a shape mismatch names the layer."""
    with torch.no_grad():
        for name in names:
            target = dst.layer(name)
            for p in ("weight", "bias"):
                key = f"{src_index[name]}.{p}"
                if key not in src_state:
                    raise KeyError(f"layer {name}: the source weights have no {key!r}")
                src, tgt = src_state[key], getattr(target, p)
                if src.shape != tgt.shape:
                    raise ValueError(f"layer {name} ({p}): source shape {tuple(src.shape)} does not fit "
                                     f"{dst.arch}'s {tuple(tgt.shape)} (other width or class count?)")
                tgt.copy_(src)


def transfer_init(model: VGG, source: VGG | Mapping[str, torch.Tensor], source_arch: str | None = None) -> list[str]:
    """§3.1's initialisation of `model` from a trained net; returns the paper names of the copied layers.

    From A (or A-LRN) into a deeper configuration: A's first four conv layers and its three FC layers; the
    rest keeps whatever `model` holds, so draw it with A's scheme (§3.1: "the rest were random", as A was)
    with `reinit_layers`, or use `vgg_ray.checkpoints.init_from_source`, which does both from a checkpoint.
    Between equal configurations (S=384 from S=256, jittered S from 384): every layer.
    """
    if isinstance(source, VGG):
        source_arch, state = source.arch, source.state_dict()
    else:
        if source_arch is None:
            raise ValueError("transfer_init from a state dict needs source_arch")
        state = source
    src_index = VGG(source_arch, fc_width=1, num_classes=1, width=1 / 64).layer_index
    if source_arch == model.arch:
        names = list(model.layer_index)
    elif source_arch in ("A", "A-LRN"):
        names = list(TRANSFER_FROM_A)
    else:
        raise ValueError(f"cannot initialise {model.arch} from a {source_arch} net: §3.1 transfers from A "
                         f"(or from the same configuration trained at another scale)")
    copy_layers(model, state, src_index, names)
    return names


def torchvision_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The configuration (A, B, D or E) of a torchvision vgg11/13/16/19 state dict, from its depth."""
    if any(k.startswith("features.") and k.endswith("running_mean") for k in state_dict):
        raise ValueError("this is a batch-norm VGG (vgg*_bn); the paper's nets and vgg_ray have no batch norm")
    convs = sum(1 for k, v in state_dict.items() if k.startswith("features.") and k.endswith(".weight")
                and v.dim() == 4)
    by_depth = {8: "A", 10: "B", 13: "D", 16: "E"}
    if convs not in by_depth:
        raise ValueError(f"state dict has {convs} conv layers; torchvision's vgg11/13/16/19 have 8/10/13/16")
    return by_depth[convs]


def load_torchvision_state_dict(model: VGG, state_dict: Mapping[str, torch.Tensor]) -> VGG:
    """Load torchvision `vgg11/13/16/19` weights (its `.pth` files) into A/B/D/E; FC weights become convs."""
    arch = torchvision_arch(state_dict)
    if arch != model.arch:
        raise ValueError(f"these are {TORCHVISION_NAMES[arch]} weights (config {arch}); the model is config "
                         f"{model.arch}: build_vgg({arch!r}) to load them")
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("classifier.") and key.endswith(".weight"):
            target = model.get_parameter(key)
            if value.numel() != target.numel():
                raise ValueError(f"{key}: {tuple(value.shape)} does not fit {tuple(target.shape)} "
                                 f"(other crop size, FC width or class count?)")
            # torchvision flattens (C, 7, 7) in C-major order, the same order as a 7x7 conv's kernel.
            value = value.reshape(target.shape)
        converted[key] = value
    model.load_state_dict(converted)
    return model


def to_torchvision_state_dict(model: VGG) -> dict[str, torch.Tensor]:
    """Our A/B/D/E weights in torchvision's layout: `torchvision.models.vgg16().load_state_dict(...)` takes them."""
    if model.arch not in TORCHVISION_NAMES:
        raise ValueError(f"torchvision has no config {model.arch}: it ships A, B, D and E only")
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("classifier.") and key.endswith(".weight"):
            value = value.reshape(value.shape[0], -1)
        out[key] = value
    return out


def zoo_table(num_classes: int = 1000, size: int = 224) -> list[dict]:
    rows = []
    with torch.device("meta"):
        for arch in ARCHS:
            m = VGG(arch, num_classes=num_classes)
            rows.append({"arch": arch, "weight_layers": m.weight_layers(), "params": count_params(m),
                         "gmacs": forward_macs(m, size) / 1e9})
    return rows


def main() -> None:
    print("Table 2 of the paper, recomputed (1000 classes, 224x224 input)")
    print(f"{'arch':<6} {'weight layers':>13} {'parameters':>13} {'forward GMACs':>14}")
    for r in zoo_table():
        print(f"{r['arch']:<6} {r['weight_layers']:>13} {r['params']:>13,} {r['gmacs']:>14.1f}")
    print("paper: A and A-LRN 133M / 7.6G, B 133M / 11.3G, C 134M, D 138M / 15.5G, E 144M / 19.6G")


if __name__ == "__main__":
    main()
