"""vgg_ray: the VGG paper reproduced on Ray. Importing the package never imports Ray (or even torch,
until a name below is used)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ARCHS": "vgg_ray.models",
    "VGG": "vgg_ray.models",
    "build_vgg": "vgg_ray.models",
    "count_params": "vgg_ray.models",
    "forward_macs": "vgg_ray.models",
    "load_torchvision_state_dict": "vgg_ray.models",
    "to_torchvision_state_dict": "vgg_ray.models",
    "torchvision_arch": "vgg_ray.models",
    "transfer_init": "vgg_ray.models",
    "TrainConfig": "vgg_ray.config",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vgg_ray' has no attribute {name!r}")
