"""The typed training configuration: named presets (`paper`, `smoke`), validation, and CLI flags.

Scales are given in the paper's units (pixels at a 224 crop: S=256, Q=384, ...). A preset with a smaller
crop scales them by crop/224, so the smoke preset keeps the paper's geometry: crop 32, S=256 -> 37 px.
The same object is parsed from the CLI, travels to Ray workers as `asdict()`, and is saved with each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields

from vgg_ray.models import ARCHS

PAPER_CROP = 224


def parse_scale(text: str | int | tuple | list) -> tuple[int, int]:
    """'256' -> (256, 256); '256-512' or '256:512' -> (256, 512); a pair passes through."""
    if isinstance(text, (tuple, list)):
        lo, hi = (int(v) for v in text)
    elif isinstance(text, int):
        lo = hi = text
    else:
        parts = str(text).replace(":", "-").split("-")
        try:
            lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None:
            raise ValueError(f"train scale {text!r}: expected S (e.g. 256) or S_min-S_max (e.g. 256-512)")
    if lo < PAPER_CROP or hi < lo:
        raise ValueError(f"train scale {text!r}: need {PAPER_CROP} <= S_min <= S_max (§3.1: S >= 224)")
    return lo, hi


def default_test_scales(train_scale: tuple[int, int]) -> tuple[int, ...]:
    """§3.2: Q = {S-32, S, S+32} for a fixed S; {S_min, (S_min+S_max)/2, S_max} for jittered S."""
    lo, hi = train_scale
    return (lo - 32, lo, lo + 32) if lo == hi else (lo, (lo + hi) // 2, hi)


def single_test_scale(train_scale: tuple[int, int]) -> int:
    """§3.2: single-scale evaluation uses Q = S, or Q = (S_min + S_max)/2 for jittered S."""
    return (train_scale[0] + train_scale[1]) // 2


def scale_to_px(scale: int, crop_size: int) -> int:
    """A paper-unit scale (at crop 224) in pixels for this crop size, never below the crop."""
    return max(crop_size, int(round(scale * crop_size / PAPER_CROP)))


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    arch: str = _f("A", "configuration of Table 1: A, A-LRN, B, C, D or E")
    data: str = _f("demo", "shards directory or URI written by jobs/prepare_imagenet.py, or 'demo'")
    preset: str = _f("paper", "'paper' (the paper's numbers) or 'smoke' (tiny, for CPU runs and tests)")
    train_scale: tuple[int, int] = _f((256, 256), "S in paper units: 256, 384 or 256-512 (jittered)")
    crop_size: int = _f(224, "training crop side, pixels (224 in the paper)")
    width: float = _f(1.0, "channel multiplier of the conv layers (1 in the paper)")
    fc_width: int = _f(4096, "channels of fc6 and fc7 (4096 in the paper)")
    batch_size: int = _f(256, "global mini-batch, images, whatever the number of workers (§3.1: 256)")
    micro_batch: int = _f(0, "images per worker per forward pass; 0 = batch_size/workers (gradient accumulation below that)")
    lr: float = _f(1e-2, "initial learning rate (§3.1: 1e-2; 1e-3 for S=384 from S=256)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "L2 penalty multiplier")
    dropout: float = _f(0.5, "dropout after fc6 and fc7")
    plateau_patience: int = _f(2, "epochs without a better validation top-1 before the rate is divided by 10")
    max_lr_decreases: int = _f(3, "§3.1: the rate was divided 3 times; the next plateau ends training")
    max_epochs: int = _f(74, "hard stop, epochs (§3.1: 74)")
    init: str = _f("glorot", "glorot, gaussian, or from:RUN_DIR_OR_CHECKPOINT (§3.1 transfer)")
    init_std: float = _f(0.1, "std of the gaussian init (paper: variance 1e-2 -> 0.1)")
    colour_shift_std: float = _f(0.1, "std of the PCA colour shift's alpha (§3.1, AlexNet: 0.1)")
    workers: int = _f(1, "Ray Train workers (one per GPU)")
    cpu: bool = _f(False, "train on CPU even when the cluster has GPUs")
    storage: str = _f("runs", "where runs are written: a path or a URI such as s3://bucket/runs")
    name: str = _f("", "run name under --storage (default: <preset>-S<train scale>); resume by reusing it")
    seed: int = _f(0, "seed for initialisation, data order and augmentation")
    max_failures: int = _f(3, "worker-group restarts from the last checkpoint before the run fails")

    def __post_init__(self) -> None:
        self.train_scale = parse_scale(self.train_scale)
        if self.arch not in ARCHS:
            raise ValueError(f"--arch {self.arch!r}: expected one of {', '.join(ARCHS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError(f"--crop-size {self.crop_size}: must be a positive multiple of 32")
        if self.init not in ("glorot", "gaussian") and not self.init.startswith("from:"):
            raise ValueError(f"--init {self.init!r}: expected glorot, gaussian or from:RUN_DIR_OR_CHECKPOINT")
        if self.init == "from:":
            raise ValueError("--init from: needs a run directory or checkpoint after the colon")
        for name in ("batch_size", "workers", "max_epochs", "fc_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.batch_size % self.workers:
            raise ValueError(f"--batch-size {self.batch_size} is not divisible by --workers {self.workers}: "
                             "every worker takes an equal share of the global batch")
        if self.micro_batch < 0 or (self.micro_batch and self.per_worker_batch % self.micro_batch):
            raise ValueError(f"--micro-batch {self.micro_batch} must divide the per-worker batch "
                             f"{self.per_worker_batch}")
        if not (self.lr > 0 and self.width > 0 and self.plateau_patience >= 1 and self.max_lr_decreases >= 0):
            raise ValueError("--lr and --width must be > 0, --plateau-patience >= 1, --max-lr-decreases >= 0")
        if not self.name:
            lo, hi = self.train_scale
            self.name = f"{self.preset}-S{lo}" + (f"-{hi}" if hi != lo else "")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.workers

    @property
    def accumulation_steps(self) -> int:
        return self.per_worker_batch // self.micro_batch if self.micro_batch else 1

    @property
    def train_scale_px(self) -> tuple[int, int]:
        return tuple(scale_to_px(s, self.crop_size) for s in self.train_scale)

    @property
    def val_scale_px(self) -> int:
        return scale_to_px(single_test_scale(self.train_scale), self.crop_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> TrainConfig:
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Named presets: the fields they change from the dataclass defaults (which are the paper's).
PRESETS: dict[str, dict] = {
    "paper": {},
    # 1/16 of the channels, FC width 64, 32-pixel crops: the paper's geometry scaled by 32/224, so
    # S = 256 -> 37 px and [256, 512] -> [37, 73] px. A small batch gives a few hundred demo images
    # enough SGD steps per epoch; top-1 on 100 demo val images is noisy, so patience 4 (2 dropped the
    # rate at epoch 5 and stalled at 70-80% error).
    "smoke": {"width": 1 / 16, "fc_width": 64, "crop_size": 32, "batch_size": 32, "lr": 0.01,
              "max_epochs": 40, "plateau_patience": 4},
}


def add_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; defaults are left None so the preset can fill them."""
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=f.metadata["help"])


def from_args(args: argparse.Namespace, **fixed) -> TrainConfig:
    """Build a TrainConfig from parsed flags: preset defaults, overridden by the flags a user gave."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None and f.name != "preset"}
    return TrainConfig.from_preset(getattr(args, "preset", None) or "paper", **{**given, **fixed})
