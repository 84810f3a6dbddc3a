"""The typed configurations: `TrainConfig` (with named presets, `paper` and `smoke`) and `EvalConfig`,
validated on construction, and one CLI flag generator for both. Pure Python.

The same object is parsed from the CLI, travels to Ray workers as `to_dict()`, and is saved with each run.
Scales are in the paper's units (see vgg_ray/scales.py). Each field says, where it is declared, its --help
section, the values it accepts and whether a resumed run may change it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, NamedTuple, NoReturn

from vgg_ray.evaluation import NETWORK_METHODS
from vgg_ray.models import ARCHS, GAUSSIAN_STD
from vgg_ray.scales import parse_pair, parse_scale, parse_test_scales, scale_to_px, single_test_scale
from vgg_ray.storage import absolute, join

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # model names become file names
# --decode auto decodes on the CPUs from this many CPUs per training GPU: on an H100 node, 16 cores of Ray
# Data fed VGG-D at 0.99 of its synthetic ~3,050 images/s, and decoding on the GPU gave 0.72 (bench/README.md,
# "Performance table"); ours decodes 480-680 images/s per core, so D needs ~5-6.5 busy cores per GPU, and
# Ray Data's own processes take more.
AUTO_CPU_DECODE_CPUS_PER_GPU = 8
# §3.1: learning rate 1e-2 for mini-batches of 256. Another batch takes the rate scaled linearly (Goyal et
# al. 2017's rule: the same step per image), so a smaller preset, or --batch-size alone, keeps the paper's
# recipe rather than taking 8x its step per image at batch 32.
PAPER_LR, PAPER_BATCH = 1e-2, 256


def scaled_lr(batch_size: int, lr_at_paper_batch: float = PAPER_LR) -> float:
    """The rate for `batch_size` images that matches `lr_at_paper_batch` for the paper's 256."""
    return lr_at_paper_batch * batch_size / PAPER_BATCH


class Range(NamedTuple):
    """The values a field accepts: `accepted` follows "must be" in its --help and in its error."""
    accepted: str
    ok: Callable[[Any], bool]


def at_least(low: float, note: str = "") -> Range:
    return Range(f">= {low}{note}", lambda v: v >= low)


def above(low: float) -> Range:
    return Range(f"> {low}", lambda v: v > low)


def within(low: float, high: float, high_open: bool = False) -> Range:
    """[low, high], or [low, high) with high_open."""
    if high_open:
        return Range(f"in [{low}, {high})", lambda v: low <= v < high)
    return Range(f"in [{low}, {high}]", lambda v: low <= v <= high)


def _f(default, help: str, *, section: str | None = None, must_be: Range | None = None, resumable: bool = False,
       **meta):
    """A config field: its default; its --help text and the --help section it is listed in; the values it
    accepts (`must_be`: checked on construction, shown in --help); whether a resumed run may change it
    (`resumable`: how the run goes, not what it trains); and, in `meta`, how its flag parses (choices,
    repeat=True for a flag given once per item, required=True, metavar, aliases: other spellings)."""
    meta = {"help": help, "section": section, "must_be": must_be, "resumable": resumable, **meta}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _in(section: str):
    return functools.partial(_f, section=section)


# --help sections, in the order the dataclasses declare their fields
_preset = _in("preset")
_network = _in("network (Table 1) and its initialisation (§3.1)")
_data = _in("data")
_recipe = _in("training recipe (§3.1)")
_models = _in("models and data")
_protocol = _in("test protocol (§3.2)")
_cluster = _in("cluster and resources")
_output = _in("output")


class UsageError(ValueError):
    """A configuration that cannot work, found once the job sees the cluster (before any work): the job
    prints it in one line and exits with status 2."""


def check_shared(flags: dict[str, str], nodes: int, shared_fs: bool) -> None:
    """On a cluster of more than one node every location must be one that all nodes see: a URI, or a
    path on a shared file system (--shared-fs). Raises UsageError naming each such flag and the fix,
    one line each."""
    if nodes <= 1 or shared_fs:
        return
    problems = _Problems()
    for flag, value in flags.items():
        if value == "demo":
            problems.append(f"{flag} demo is built on one node's disk, and this cluster has {nodes} nodes: "
                            f"convert it to a URI (jobs/prepare_imagenet.py --out s3://...) and pass that")
        elif "://" not in value:
            problems.append(f"{flag} {value} is a local path, and this cluster has {nodes} nodes that cannot "
                            f"all see it: give a URI (s3://..., gs://...), or --shared-fs if every node "
                            f"mounts it")
    if problems:
        raise UsageError("\n".join(problems))


def fail(parser: argparse.ArgumentParser, problems: str) -> NoReturn:
    """Exit 2 with the usage line and one `prog: error:` line per problem (argparse's form, for all)."""
    parser.print_usage(sys.stderr)
    parser.exit(2, "".join(f"{parser.prog}: error: {line}\n" for line in problems.splitlines()))


class _Config:
    RENAMED: ClassVar[dict[str, str]] = {}  # old field name -> new, so saved configurations stay readable

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        d = {cls.RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class _Problems(list):
    """Every problem of a configuration, one line each, raised together (ValueError) once all are known."""

    def parse(self, parse, value):
        """parse(value); or, with the problem noted, the value as it was."""
        try:
            return parse(value)
        except ValueError as e:
            self.append(str(e))
            return value

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)

    def declared(self, cfg) -> None:
        """Each field's choices and range, as its declaration gives them (None: unset, accepted)."""
        for f in fields(cfg):
            value, choices, must_be = getattr(cfg, f.name), f.metadata.get("choices"), f.metadata.get("must_be")
            if choices:
                self.check(value in choices, f"{_flag(f)} {value!r}: expected {_either(choices)}")
            if must_be:
                self.check(value is None or must_be.ok(value), f"{_flag(f)} {value}: must be {must_be.accepted}")

    def raise_any(self) -> None:
        if self:
            raise ValueError("\n".join(self))


def _either(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass
class TrainConfig(_Config):
    preset: str = _preset("paper", "'paper' (the paper's numbers), 'small' (1/4 width, 128-pixel crops: a 10-class "
                                   "ImageNet subset on one GPU) or 'smoke' (1/16 width, 32-pixel crops: CPUs, tests)",
                          choices=["paper", "small", "smoke"])

    arch: str = _network("A", "configuration of Table 1", choices=list(ARCHS))
    width: float = _network(1.0, "channel multiplier of the conv layers (1 in the paper)", must_be=above(0))
    fc_width: int = _network(4096, "channels of fc6 and fc7 (4096 in the paper)", must_be=at_least(1))
    crop_size: int = _network(224, "training crop side, pixels (224 in the paper); the net's fc6 is built for it")
    init: str = _network("glorot", "glorot, gaussian, or from:RUN_DIR_OR_CHECKPOINT (§3.1 transfer; the layers "
                                   "not copied are drawn with the source's scheme and std)")
    # §3.1's "variance 1e-2" would be std 0.1: on 0-255 pixels minus the mean that gives a fresh A logits
    # of std ~1e7-1e8, which no run survives; Caffe's Gaussian filler and most re-implementations use 0.01.
    init_std: float = _network(GAUSSIAN_STD, "std of the gaussian init; 0.01 as in Caffe, not the 0.1 that "
                                             "§3.1's 'variance 1e-2' reads as (logits of std ~1e8 on 0-255 input)",
                               must_be=above(0))

    data: str = _data("demo", "shards directory or URI written by jobs/prepare_imagenet.py, or 'demo'")
    train_scale: tuple[int, int] = _data((256, 256), "S in paper units: 256, 384 or 256-512 (jittered)",
                                         metavar="S|SMIN-SMAX")
    colour_shift_std: float = _data(0.1, "std of the PCA colour shift's alpha (§3.1, AlexNet: 0.1)",
                                    must_be=at_least(0))
    decode: str = _data("auto", "where training JPEGs are decoded: gpu (nvJPEG on the train workers' device; "
                                "Ray Data's CPUs only draw the crops), cpu (Ray Data's tasks), or auto (gpu when "
                                f"training on GPUs with fewer than {AUTO_CPU_DECODE_CPUS_PER_GPU} CPUs per GPU in "
                                "the cluster, else cpu)", choices=["auto", "gpu", "cpu"], resumable=True)

    batch_size: int = _recipe(256, "global mini-batch, images, whatever the number of workers (§3.1: 256)",
                              must_be=at_least(1))
    lr: float | None = _recipe(None, "initial learning rate; unset, the paper's 1e-2 per 256 images scaled "
                                     "linearly to --batch-size (§3.1: 1e-2 at 256; a fine-tune from another "
                                     "net, 1e-3)", must_be=above(0),
                               shown=lambda p: f"{scaled_lr(PRESETS[p].get('batch_size', PAPER_BATCH)):g}")
    momentum: float = _recipe(0.9, "SGD momentum", must_be=within(0, 1, high_open=True))
    weight_decay: float = _recipe(5e-4, "L2 penalty multiplier", must_be=at_least(0))
    bias_decay: float = _recipe(1.0, "weight decay on biases, as a multiple of --weight-decay: 1 decays them as "
                                     "the weights (the paper names an L2 penalty and is silent on biases), 0 "
                                     "leaves them undecayed as Caffe's reference nets did (decay_mult: 0)",
                                must_be=within(0, 1))
    dropout: float = _recipe(0.5, "dropout ratio after fc6 and fc7", must_be=within(0, 1, high_open=True))
    plateau_patience: int = _recipe(2, "epochs without a better validation top-1 before the rate is divided by 10",
                                    must_be=at_least(1))
    plateau_threshold: float | None = _recipe(
        None, "how much validation top-1 accuracy must beat the best by to count as better; unset, one "
              "standard error of top-1 on the validation set, sqrt(0.7*0.3/n): 0.002 on ILSVRC-2012's 50,000 "
              "images, 0.02 on the demo's 500, so noise does not postpone the rate's division",
        must_be=within(0, 1), shown="one standard error")
    max_lr_decreases: int = _recipe(3, "§3.1: the rate was divided 3 times; the next plateau ends training",
                                    must_be=at_least(0))
    max_epochs: int = _recipe(74, "hard stop, epochs (§3.1: 74)", must_be=at_least(1), resumable=True)
    seed: int = _recipe(0, "seed for initialisation, data order and augmentation")

    workers: tuple[int, int] = _cluster((1, 1), "Ray Train workers (one per GPU): N, or MIN-MAX for an elastic "
                                                "run that starts with what can be placed, grows when nodes join "
                                                "and shrinks when one is lost; the global batch stays "
                                                "--batch-size", metavar="N|MIN-MAX", resumable=True)
    cpus_per_worker: int = _cluster(1, "CPUs each train worker holds; a node's other CPUs run Ray Data's decoding",
                                    must_be=at_least(1), resumable=True)
    micro_batch: int = _cluster(0, "images per worker per forward pass, gradients accumulated over a worker's "
                                   "share of the batch; 0 = the share at the most workers (an elastic run that "
                                   "shrinks accumulates, and never runs a larger forward pass than it started "
                                   "with)", must_be=at_least(0), resumable=True)
    device: str = _cluster("auto", "auto: GPUs when the cluster has GPU nodes or its autoscaler can add them (or "
                                   "this machine has CUDA), else CPUs; gpu or cpu to say so",
                           choices=["auto", "gpu", "cpu"], resumable=True)
    grad_allreduce: str = _cluster("fp32", "precision of DDP's gradient all-reduce on GPUs (NCCL): fp32, so "
                                           "results do not depend on the number of GPUs (§3.3), or bf16 (half the "
                                           "bytes)", choices=["fp32", "bf16"], resumable=True)
    max_failures: int = _cluster(3, "worker-group restarts from the last checkpoint before the run fails. A node "
                                    "drained for preemption (spot) does not count: Ray Train resumes from the "
                                    "last checkpoint without limit", must_be=at_least(-1, " (-1: no limit)"),
                                 resumable=True)
    resize_check_s: float = _cluster(60.0, "elastic runs: seconds between Ray Train's looks for room to grow (a "
                                           "growth restarts the workers from the last checkpoint)",
                                     must_be=at_least(0), resumable=True)
    shared_fs: bool = _cluster(False, "--storage and --data are local paths that every node of the cluster "
                                      "mounts (NFS, a FUSE bucket); without it a multi-node cluster needs URIs",
                               resumable=True)

    storage: str = _output("runs", "where runs are written: a path or a URI such as s3://bucket/runs",
                           resumable=True)
    name: str = _output("", "run name under --storage (default: <preset>-S<train scale>); resume by reusing it")

    def __post_init__(self) -> None:
        problems = _Problems()
        self.train_scale = problems.parse(parse_scale, self.train_scale)
        self.workers = problems.parse(parse_workers, self.workers)
        problems.declared(self)
        problems.check(self.crop_size >= 32 and not self.crop_size % 32,
                       f"--crop-size {self.crop_size}: must be a positive multiple of 32")
        problems.check(self.init in ("glorot", "gaussian") or self.init.startswith("from:"),
                       f"--init {self.init!r}: expected glorot, gaussian or from:RUN_DIR_OR_CHECKPOINT")
        problems.check(self.init != "from:", "--init from: needs a run directory or checkpoint after the colon")
        if isinstance(self.workers, tuple):  # parsed
            problems.check(self.batch_size >= self.max_workers,
                           f"--batch-size {self.batch_size} is smaller than --workers {_shown(self.workers)}: "
                           "every worker needs at least one image of the global batch")
        problems.check(self.micro_batch <= self.batch_size,
                       f"--micro-batch {self.micro_batch}: must be <= --batch-size {self.batch_size}")
        problems.raise_any()
        if self.lr is None:
            self.lr = scaled_lr(self.batch_size)
        if not self.name:
            lo, hi = self.train_scale
            self.name = f"{self.preset}-S{lo}" + (f"-{hi}" if hi != lo else "")

    def decodes_on_device(self, use_gpu: bool, cpus_per_gpu: float) -> bool:
        """Whether training JPEGs are decoded on the train workers' devices (--decode; see
        AUTO_CPU_DECODE_CPUS_PER_GPU for auto)."""
        if self.decode != "auto":
            return self.decode == "gpu"
        return use_gpu and cpus_per_gpu < AUTO_CPU_DECODE_CPUS_PER_GPU

    def differences(self, saved: dict) -> list[str]:
        """The flags whose values differ from a run's saved config.json, among those that decide what is
        trained (how it runs -- workers, device, --max-epochs, ... -- may change when a run resumes)."""
        saved = TrainConfig.from_dict(saved).to_dict()
        mine = self.to_dict()
        return [f"--{k.replace('_', '-')} {_shown(saved[k])} -> {_shown(mine[k])}"
                for k in mine if k not in RESUMABLE_FIELDS and mine[k] != saved[k]]

    @property
    def experiment_dir(self) -> str:
        """<storage>/<name>: every configuration of one training call, and Ray Tune's state."""
        return join(absolute(self.storage), self.name)

    @property
    def run_dir(self) -> str:
        """<storage>/<name>/<arch>: this configuration's run (checkpoints, metrics.csv, config.json, ...)."""
        return join(self.experiment_dir, self.arch)

    @property
    def min_workers(self) -> int:
        return self.workers[0]

    @property
    def max_workers(self) -> int:
        return self.workers[1]

    def share(self, rank: int, world: int) -> int:
        """Rank `rank`'s images of each global batch among `world` workers: the batch split as evenly as
        it goes (256 over 3 workers: 86, 85, 85), so every step is one update of --batch-size images."""
        return self.batch_size // world + (rank < self.batch_size % world)

    def steps_per_epoch(self, n_train: int, world: int) -> int:
        """Global batches per epoch: every rank streams n_train // world images (Ray Data's equal split)
        and takes the same number of steps, bounded by the rank with the largest share."""
        return (n_train // world) // self.share(0, world)

    @property
    def per_worker_batch(self) -> int:
        """A worker's share at the most workers."""
        return self.share(0, self.max_workers)

    @property
    def micro(self) -> int:
        return self.micro_batch or self.per_worker_batch

    @property
    def train_scale_px(self) -> tuple[int, int]:
        return tuple(scale_to_px(s, self.crop_size) for s in self.train_scale)

    @property
    def val_scale_px(self) -> int:
        return scale_to_px(single_test_scale(self.train_scale), self.crop_size)

    def model_kwargs(self) -> dict:
        """build_vgg's keyword arguments (all but arch and num_classes): the one place a config says
        what net it trains."""
        # A from: run's layers are copied or re-drawn with the source's scheme (checkpoints.init_from_source);
        # glorot here only fills them until then.
        return {"width": self.width, "fc_width": self.fc_width, "crop_size": self.crop_size,
                "dropout": self.dropout, "init": "glorot" if self.init.startswith("from:") else self.init,
                "init_std": self.init_std}

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> TrainConfig:
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset!r}: expected {_either(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})


# What a run may change when it resumes: how it runs, not what it trains (the global batch is --batch-size
# whatever the workers). Marked on each field (resumable=True).
RESUMABLE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata["resumable"])

# Named presets: the fields they change from the dataclass defaults (which are the paper's). What a preset
# shrinks, it scales honestly: the rate follows the batch (scaled_lr: no preset sets --lr), every layer's
# width (conv and FC alike) the same fraction, the gaussian init's std each layer's fan-in
# (models.gaussian_std), the geometry the crop (S and Q in paper units, scales.scale_to_px), and the
# plateau threshold the validation set's size (schedule.plateau_threshold).
PRESETS: dict[str, dict] = {
    "paper": {},
    # A 10-class ImageNet subset (Imagenette, Imagewoof: ~9,500 train and ~3,900 val images) on one GPU:
    # 1/4 of the channels (FC 1024), 128-pixel crops (fc6 4x4; S = 256 -> 146 px, [256, 512] -> [146,
    # 293]), batch 64 (148 steps an epoch; lr 2.5e-3). Patience 3: an epoch of ~150 steps is a short look
    # at a plateau (on the demo, 63-step epochs needed 4; the paper's 5,000-step epochs, 2).
    "small": {"width": 1 / 4, "fc_width": 1024, "crop_size": 128, "batch_size": 64, "plateau_patience": 3},
    # 1/16 of the channels (FC 256), 32-pixel crops (S = 256 -> 37 px, [256, 512] -> [37, 73] px), batch 32
    # (lr 1.25e-3) for CPUs and tests. The demo's 2,000 images give 63 steps an epoch: patience 2 divided
    # B's rate during its slow start (it ended at 26% error on the demo, 2% with patience 4).
    "smoke": {"width": 1 / 16, "fc_width": 256, "crop_size": 32, "batch_size": 32, "max_epochs": 40,
              "plateau_patience": 4},
}


def lr_note(cfg: TrainConfig, lr_given: bool) -> str | None:
    """The one line that says a rate was scaled to the batch rather than given (None when it was given,
    or the batch is the paper's)."""
    if lr_given or cfg.batch_size == PAPER_BATCH:
        return None
    return (f"lr {cfg.lr:g}: the paper's {PAPER_LR:g} per {PAPER_BATCH} images scaled to the batch of "
            f"{cfg.batch_size} (§3.1, linear rule); --lr sets another")


ARCHS_HELP = f"{', '.join(ARCHS)}, a comma list of them (each once), or all"


def parse_archs(text: str, flag: str = "--arch") -> list[str]:
    """'D,E' -> ['D', 'E']; 'all' -> every configuration of Table 1."""
    archs = list(ARCHS) if text.strip() == "all" else [a.strip() for a in text.split(",") if a.strip()]
    if not archs or any(a not in ARCHS for a in archs) or len(set(archs)) != len(archs):
        raise ValueError(f"{flag} {text!r}: expected {ARCHS_HELP}")
    return archs


def parse_workers(text: str | int | tuple | list) -> tuple[int, int]:
    """'4' -> (4, 4); '2-8' -> (2, 8), an elastic range; a pair passes through."""
    lo, hi = parse_pair(text) or (0, 0)
    if not 1 <= lo <= hi:
        raise ValueError(f"--workers {_shown(text) if isinstance(text, tuple) else text}: expected N or MIN-MAX "
                         "with 1 <= MIN <= MAX (e.g. 8, or 4-16)")
    return lo, hi


def parse_methods(text: str | list | tuple) -> tuple[str, ...]:
    """'dense', 'multi-crop', 'both' (= dense and multi-crop, reported with their average too), or a
    comma list of these; -> the network methods to run."""
    words = text.split(",") if isinstance(text, str) else list(text)
    out = set()
    for w in (w.strip() for w in words if w.strip()):
        if w in ("both", "multi-crop+dense"):
            out.update(NETWORK_METHODS)
        elif w in NETWORK_METHODS:
            out.add(w)
        else:
            raise ValueError(f"--methods {text!r}: {w!r} is not one of dense, multi-crop, both")
    if not out:
        raise ValueError(f"--methods {text!r}: name at least one of dense, multi-crop, both")
    return tuple(m for m in NETWORK_METHODS if m in out)


def parse_models(items) -> dict[str, str]:
    """['D=runs/x/D', ...] (or a dict) -> {NAME: SOURCE}; each NAME once, a file-name-safe word."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for text in items:
            name, sep, source = str(text).partition("=")
            if not sep or not name or not source:
                raise ValueError(f"--model {text!r}: expected NAME=SOURCE, e.g. D=runs/paper/D")
            pairs.append((name, source))
    if not pairs:
        raise ValueError("--model NAME=SOURCE: give at least one model")
    models = dict(pairs)
    if len(models) != len(pairs):
        raise ValueError("--model: each NAME may be given once")
    for name in models:
        if not NAME_RE.match(name):
            raise ValueError(f"--model {name}=...: a name is letters, digits and _.+- (it names files)")
    return models


@dataclass
class EvalConfig(_Config):
    RENAMED: ClassVar[dict[str, str]] = {"scales": "test_scales"}

    models: dict[str, str] = _models({}, "a model to evaluate, repeat for fusion: a run directory (its best.pt), "
                                     "a checkpoint or a torchvision .pth", repeat=True, flag="--model",
                                     metavar="NAME=SOURCE", required=True)
    data: str = _models("demo", "shards directory or URI written by jobs/prepare_imagenet.py, or 'demo'")
    split: str = _models("val", "the split of --data to evaluate", choices=["val", "train"])
    limit: int = _models(0, "evaluate the first N validation images only; 0 = all", must_be=at_least(0))

    test_scales: tuple[int, ...] = _protocol((), "Q1,Q2,... in paper units (default per model, §3.2: S-32,S,S+32 "
                                                 "for fixed S; S_min,(S_min+S_max)/2,S_max for jittered S)",
                                             metavar="Q1,Q2,...", aliases=["--scales"])
    methods: tuple[str, ...] = _protocol("both", "dense, multi-crop, or both (adds multi-crop+dense)")

    slice_images: int = _cluster(0, "images per piece of work; 0 = enough pieces for every actor to stay busy",
                                 must_be=at_least(0))
    workers: int = _cluster(0, "evaluation actors; 0 = one per GPU, or CPUs / cpus-per-worker without GPUs "
                               "(fewer when the work is small)", must_be=at_least(0))
    cpus_per_worker: int = _cluster(0, "CPUs per actor (JPEG decoding threads, or torch threads on CPU); 0 = auto",
                                    must_be=at_least(0))
    max_batch: int = _cluster(250, "crops (or crop-equivalents of pixels, for dense) per forward pass",
                              must_be=at_least(1))
    device: str = _cluster("auto", "auto: GPU actors when the cluster has GPU nodes or can add them, else CPU "
                                   "actors; gpu or cpu to say so", choices=["auto", "gpu", "cpu"])
    max_retries: int = _cluster(3, "restarts of a dead actor, and retries of its piece", must_be=at_least(0))
    shared_fs: bool = _cluster(False, "--data and --out are local paths that every node of the cluster mounts; "
                                      "without it a multi-node cluster needs URIs")

    out: str = _output("eval", "output directory or URI", required=True)

    def __post_init__(self) -> None:
        problems = _Problems()
        self.models = problems.parse(parse_models, self.models)
        self.methods = problems.parse(parse_methods, self.methods)
        self.test_scales = problems.parse(parse_test_scales, self.test_scales)
        problems.declared(self)
        problems.raise_any()


# ---- the CLI: one flag per field ----

def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return "-".join(map(str, value)) if len(set(value)) > 1 else str(value[0]) if value else "none"
    return "none" if value in ("", {}) else str(value)


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of `cls`, in one argument group per section. Flags default to None so that a
    preset can fill what the user left out; --help shows what each accepts and its default, and for
    TrainConfig each preset's value where it differs."""
    groups: dict = {}  # section -> its argument group (None: the parser itself)
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        if meta["section"] not in groups:
            groups[meta["section"]] = parser.add_argument_group(meta["section"]) if meta["section"] else parser
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = f"default {_shown(default)}"
        if callable(meta.get("shown")):  # derived from other fields: each preset's value
            shown = "; ".join(f"{p} preset {meta['shown'](p)}" for p in PRESETS)
        elif meta.get("shown"):
            shown = f"default {meta['shown']}"
        elif cls is TrainConfig:
            shown += "".join(f"; {p} preset {_shown(v[f.name])}" for p, v in PRESETS.items() if f.name in v)
        if meta.get("required"):
            shown = "required"
        accepts = f"; must be {meta['must_be'].accepted}" if meta["must_be"] else ""
        kw = {"help": f"{meta['help']}{accepts} ({shown})", "default": None, "dest": f.name}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if f.type in ("bool", bool):
            kw["action"] = "store_true"
        else:
            if meta.get("repeat"):
                kw["action"] = "append"
            kw["type"] = {"int": int, "float": float}.get(str(f.type).removesuffix(" | None"), str)
        groups[meta["section"]].add_argument(_flag(f), *meta.get("aliases", ()), **kw)


def from_args(args: argparse.Namespace, cls=TrainConfig, **fixed):
    """A config from parsed flags: the flags the user gave over the preset's values (TrainConfig) or
    the defaults. Raises ValueError with a message that names the flag."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    missing = [_flag(f) for f in fields(cls) if f.metadata.get("required") and f.name not in {**given, **fixed}]
    if missing:
        raise ValueError(f"{', '.join(missing)} is required")
    if cls is TrainConfig:
        preset = given.pop("preset", None) or "paper"
        return TrainConfig.from_preset(preset, **{**given, **fixed})
    return cls(**{**given, **fixed})
