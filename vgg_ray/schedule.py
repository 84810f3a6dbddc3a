"""§3.1's learning-rate rule: divide by 10 when validation accuracy stops improving. Pure Python.

The rule is a small state machine fed one validation top-1 accuracy per epoch. The Ray Tune callback
feeds it during a run (vgg_ray/tune_schedule.py); checkpoints carry its state so that a restarted worker
group or a resubmitted run continues with the same rate from the same epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class PlateauSchedule:
    lr: float  # the rate for the next epoch
    patience: int  # epochs without a new best accuracy before the rate is divided
    max_decreases: int = 3  # §3.1: divided 3 times; the plateau after that ends training
    factor: float = 0.1
    best: float = -math.inf  # best validation top-1 accuracy seen, in [0, 1]
    epochs_since_best: int = 0
    decreases: int = 0
    last_epoch: int = -1  # the last epoch observed; replays of it (after a restart) are ignored
    stop: bool = False

    def observe(self, epoch: int, top1_acc: float) -> PlateauSchedule:
        if epoch <= self.last_epoch or self.stop:
            return self
        if epoch != self.last_epoch + 1:
            raise ValueError(f"epoch {epoch} observed after epoch {self.last_epoch}: epochs must come in order")
        self.last_epoch = epoch
        if top1_acc > self.best:
            self.best, self.epochs_since_best = top1_acc, 0
        else:
            self.epochs_since_best += 1
        if self.epochs_since_best >= self.patience:
            if self.decreases < self.max_decreases:
                self.lr *= self.factor
                self.decreases += 1
                self.epochs_since_best = 0
            else:
                self.stop = True
        return self

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> PlateauSchedule:
        return cls(**state)
