"""Model checkpoints: written atomically, read with `torch.load(..., weights_only=True)`. No Ray.

A model file (`model.pt`, `best.pt`) is a plain dict of tensors and JSON-like values:
  arch, num_classes, config (TrainConfig as a dict), mean_rgb / std_rgb (input normalisation, 0-255
  units; std_rgb None as in the paper), epoch, top1_err, model (the state dict).
`load_model(source)` turns any of the sources users have into (model, info): one of our model files, a
run directory (its `best.pt`), or a torchvision `vgg11/13/16/19` `.pth`.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from vgg_ray import storage
from vgg_ray.config import TrainConfig
from vgg_ray.engine import build_model
from vgg_ray.models import (
    ARCHS,
    GAUSSIAN_STD,
    INIT_SCHEMES,
    VGG,
    build_vgg,
    load_torchvision_state_dict,
    reinit_layers,
    torchvision_arch,
    transfer_init,
)

# torchvision's ImageNet weights expect (x/255 - mean) / std; in 0-255 units:
TORCHVISION_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
TORCHVISION_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

BEST = "best.pt"


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same directory, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_record(model: VGG, config: dict, mean_rgb, std_rgb=None, **extra) -> dict:
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {"arch": model.arch, "num_classes": model.num_classes, "config": config,
            "mean_rgb": [float(v) for v in mean_rgb],
            "std_rgb": None if std_rgb is None else [float(v) for v in std_rgb],
            "model": state, **extra}


def _load(path: str, mmap: bool = False) -> dict:
    try:
        if storage.is_uri(path):
            return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: not for files of ours
        raise ValueError(f"{path}: not a checkpoint torch.load can read (it holds objects other than tensors "
                         "and plain values, or is no torch.save file at all)") from e
    except Exception as e:  # truncated files, other errors: say which file, in one line
        raise ValueError(f"{path}: not a checkpoint torch.load can read ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from e


def resolve_source(source: str | os.PathLike, arch: str | None = None) -> str:
    """A file is itself; a run directory means its best.pt; an experiment directory (jobs/train.py's
    <storage>/<name>, one run per arch) means <arch>/best.pt, so `--init from:runs/paper-S256` gives each
    configuration its own S=256 net (§3.1: S=384 from S=256, jittered from S=384). Local paths and URIs
    (s3://, gs://) alike."""
    source = str(source)
    if storage.is_file(source):
        return source
    if not storage.is_dir(source):
        raise FileNotFoundError(f"{source}: no such checkpoint file or run directory")
    for candidate in [storage.join(source, BEST)] + ([storage.join(source, arch, BEST)] if arch else []):
        if storage.is_file(candidate):
            return candidate
    runs = [d for d in storage.list_dirs(source) if storage.is_file(storage.join(source, d, BEST))]
    hint = f" (it holds runs of {', '.join(runs)}; name one, e.g. {storage.join(source, runs[0])})" if runs else ""
    raise FileNotFoundError(f"{source}: no {BEST} here{' nor in ' + arch + '/' if arch else ''}{hint}; a run "
                            f"directory holds {BEST} after its first epoch")


def load_model(source: str | os.PathLike, arch: str | None = None, map_location="cpu") -> tuple[VGG, dict]:
    """Build the model a source describes and load its weights; `info` holds arch, config, normalisation."""
    path = resolve_source(source, arch)
    blob = _load(path)
    if not isinstance(blob, Mapping):
        raise ValueError(f"{path}: not a vgg_ray model file nor a torchvision VGG state dict (it holds a "
                         f"{type(blob).__name__})")
    try:
        if "model" in blob and "arch" in blob:
            cfg = TrainConfig.from_dict({**(blob.get("config") or {}), "arch": blob["arch"]})
            with torch.device("meta"):  # no random init of weights about to be replaced (seconds at full size)
                model = build_model(cfg, blob["num_classes"])
            model.load_state_dict(blob["model"], assign=True)
            info = {k: v for k, v in blob.items() if k != "model"}
        else:  # a bare state dict: torchvision's vgg11/13/16/19 .pth files
            found = torchvision_arch(blob)
            if arch is not None and arch != found:
                raise ValueError(f"holds config {found} weights, but {arch} was asked for")
            num_classes = blob["classifier.6.weight"].shape[0]
            model = load_torchvision_state_dict(build_vgg(found, num_classes=num_classes), blob)
            info = {"arch": found, "num_classes": num_classes, "config": {"crop_size": 224, "preset": "paper"},
                    "mean_rgb": TORCHVISION_MEAN, "std_rgb": TORCHVISION_STD, "source": "torchvision"}
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:  # one line, naming the file
        kind = "vgg_ray model file" if "model" in blob and "arch" in blob else "torchvision VGG state dict"
        raise ValueError(f"{path}: not a usable {kind} ({str(e).splitlines()[0] if str(e) else repr(e)})") from e
    info["path"] = path
    return model.to(map_location), info


def load_models(models: Mapping[str, str], num_classes: int | None, data: str) -> dict[str, tuple[VGG, dict]]:
    """Each --model NAME=SOURCE loaded and checked against the data's classes, before any work: every
    problem at once (ValueError, one line each). A NAME that is a configuration (A ... E) takes
    <dir>/<arch>/best.pt from an experiment directory, and a torchvision .pth must hold that
    configuration; other names infer it."""
    loaded, problems = {}, []
    for name, source in models.items():
        try:
            model, info = load_model(source, arch=name if name in ARCHS else None)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"--model {name}={source}: {e}")
            continue
        if num_classes is not None and model.num_classes != num_classes:
            problems.append(f"--model {name}={source}: {model.num_classes} classes, but --data {data} has "
                            f"{num_classes}")
        loaded[name] = (model, info)
    if problems:
        raise ValueError("\n".join(problems))
    return loaded


def source_init_scheme(info: Mapping, max_hops: int = 8) -> tuple[str, float]:
    """(scheme, std) with which a trained net's random layers were drawn, from `info` (load_model's): its
    config's `init`, or for a `from:` run, that of the net it came from (followed through the files)."""
    cfg = info.get("config") or {}
    if info.get("source") == "torchvision":
        # torchvision draws convs with Kaiming's rule, not one of §3.1's: use the authors' own advice.
        return "glorot", GAUSSIAN_STD
    init = cfg.get("init", "glorot")
    if init in INIT_SCHEMES:
        return init, float(cfg.get("init_std", GAUSSIAN_STD))
    spec = init[len("from:"):] if init.startswith("from:") else None
    if spec is None or max_hops <= 0:
        raise ValueError(f"{info.get('path', 'checkpoint')}: config init={init!r} names no scheme "
                         f"({', '.join(INIT_SCHEMES)}) and no from: source to follow")
    try:
        path = resolve_source(spec, cfg.get("arch") or info.get("arch"))
    except FileNotFoundError as e:
        raise ValueError(f"{info.get('path', 'checkpoint')} was initialised from {spec}, which is needed to "
                         f"tell how its random layers were drawn (§3.1) and cannot be read here: {e}") from e
    blob = _load(path, mmap=True)
    return source_init_scheme({**{k: v for k, v in blob.items() if k != "model"}, "path": str(path)},
                              max_hops - 1)


def init_from_source(model: VGG, spec: str | os.PathLike) -> dict:
    """§3.1's start of a `--init from:SPEC` run: copy the source's layers into `model` (transfer_init) and
    draw every other weight layer with the scheme and std the source's own random layers had (A's for
    B-E from A). Returns what it did: source (path), copied, reinitialised (paper names), scheme, std."""
    source, info = load_model(resolve_source(spec, model.arch))
    copied = transfer_init(model, source)
    fresh = [name for name in model.layer_index if name not in copied]
    scheme, std = source_init_scheme(info) if fresh else (None, None)
    if fresh:
        reinit_layers(model, fresh, scheme, std=std)
    return {"source": info["path"], "copied": copied, "reinitialised": fresh, "scheme": scheme, "std": std}
