"""§3.1's learning-rate rule: divide by 10 when validation accuracy stops improving. Pure Python.

The rule is a small state machine fed one validation top-1 accuracy per epoch. The Ray Tune callback
feeds it during a run (vgg_ray/distributed/schedule_board.py); checkpoints carry its state so that a
restarted worker group or a resubmitted run continues with the same rate from the same epoch. Each
observation leaves its decision in `decision` (epoch, rates before and after, why), for the run's log and
metrics.csv.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def plateau_threshold(n_val: int) -> float:
    """By how much (accuracy units) an epoch's validation top-1 must beat the best to count as better: one
    standard error of top-1 on `n_val` images, sqrt(0.7 * 0.3 / n_val) (the paper's nets err ~30%). A
    smaller rise is within what the choice of images alone moves the figure by, so a noisy plateau cannot
    keep the rate up: 0.0020 on ILSVRC-2012's 50,000 validation images, 0.020 on the demo's 500."""
    if n_val < 1:
        raise ValueError(f"plateau threshold for {n_val} validation images: need at least one")
    return math.sqrt(0.7 * 0.3 / n_val)


PLATEAU_THRESHOLD = round(plateau_threshold(50_000), 4)  # 0.002: ILSVRC-2012's validation set

IMPROVED = "improved"


@dataclass
class PlateauSchedule:
    lr: float  # the rate for the next epoch
    patience: int  # epochs without an improvement before the rate is divided
    max_decreases: int = 3  # §3.1: divided 3 times; the plateau after that ends training
    factor: float = 0.1
    threshold: float = PLATEAU_THRESHOLD  # an improvement beats `best` by more than this, accuracy units
    best: float = -math.inf  # validation top-1 accuracy of the last improvement, in [0, 1]
    epochs_since_best: int = 0
    decreases: int = 0
    last_epoch: int = -1  # the last epoch observed; replays of it (after a restart) are ignored
    stop: bool = False
    # The last observation's decision: epoch, top1_acc, best, lr_before, lr_after, why (None before any).
    decision: dict | None = None

    @classmethod
    def from_config(cls, cfg, n_val: int) -> PlateauSchedule:
        """The schedule a TrainConfig asks for, before its first epoch, on `n_val` validation images (its
        --plateau-threshold, or one standard error of top-1 on them when that is unset)."""
        threshold = plateau_threshold(n_val) if cfg.plateau_threshold is None else cfg.plateau_threshold
        return cls(lr=cfg.lr, patience=cfg.plateau_patience, max_decreases=cfg.max_lr_decreases,
                   threshold=threshold)

    def observe(self, epoch: int, top1_acc: float) -> PlateauSchedule:
        if epoch <= self.last_epoch or self.stop:
            return self
        if epoch != self.last_epoch + 1:
            raise ValueError(f"epoch {epoch} observed after epoch {self.last_epoch}: epochs must come in order")
        self.last_epoch, lr_before = epoch, self.lr
        if top1_acc > self.best + self.threshold:
            self.best, self.epochs_since_best = top1_acc, 0
            why = IMPROVED
        else:
            self.epochs_since_best += 1
            n = self.epochs_since_best
            why = f"no improvement for {n} epoch{'s' if n > 1 else ''}"
        if self.epochs_since_best >= self.patience:
            if self.decreases < self.max_decreases:
                self.lr *= self.factor
                self.decreases += 1
                self.epochs_since_best = 0
                why += f": rate divided by {1 / self.factor:g}"
            else:
                self.stop = True
                why = f"plateau after {self.decreases} decreases: stop"
        self.decision = {"epoch": epoch, "top1_acc": top1_acc, "best": self.best, "lr_before": lr_before,
                         "lr_after": self.lr, "why": why}
        return self

    def describe(self) -> str:
        """The last decision as a log line."""
        d = self.decision
        if d is None:
            return f"schedule: lr {self.lr:.3g}, nothing observed yet"
        return (f"schedule after epoch {d['epoch']}: top-1 acc {d['top1_acc']:.4f} (best {d['best']:.4f}, "
                f"threshold {self.threshold:g}): {d['why']}; lr {d['lr_before']:.3g} -> {d['lr_after']:.3g}")

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> PlateauSchedule:
        # a checkpoint written before `threshold` existed took every rise as an improvement
        return cls(**{"threshold": 0.0, **state})
