"""§3.1's plateau rule on scripted validation accuracies, and the run outputs it feeds. No Ray."""

from __future__ import annotations

import math
import random

import pytest

from vgg_ray.config import TrainConfig
from vgg_ray.schedule import PlateauSchedule


def run(accs, **kw):
    s = PlateauSchedule(lr=1e-2, patience=kw.pop("patience", 2), **kw)
    lrs = []
    for epoch, acc in enumerate(accs):
        if s.stop:
            break
        lrs.append(s.lr)
        s.observe(epoch, acc)
    return s, lrs


def test_rate_divided_by_ten_after_patience_epochs_without_improvement():
    s, lrs = run([0.1, 0.2, 0.3, 0.3, 0.25, 0.4, 0.5])
    # epochs 3 and 4 do not beat 0.3: after epoch 4 the rate drops; 0.4 then improves again
    assert lrs == pytest.approx([1e-2] * 5 + [1e-3] * 2)
    assert s.decreases == 1 and not s.stop and s.best == 0.5


def test_three_decreases_then_the_next_plateau_ends_training():
    s, lrs = run([0.5] * 20, patience=1)
    # epoch 0 sets the best; each later epoch is a plateau of length 1
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4, 1e-5])
    assert s.stop and s.decreases == 3 and s.last_epoch == 4


def test_equal_accuracy_is_not_an_improvement_and_counter_resets_after_a_drop():
    s, lrs = run([0.3, 0.3, 0.31, 0.31, 0.31, 0.32], patience=2)
    # 0.3 (best), 0.3 (1), 0.31 (best), 0.31 (1), 0.31 (2 -> drop, reset), 0.32 (best)
    assert lrs == pytest.approx([1e-2] * 5 + [1e-3])
    assert s.epochs_since_best == 0


def test_replayed_epochs_are_ignored_and_state_round_trips():
    s, _ = run([0.1, 0.2, 0.2], patience=1)
    before = s.state_dict()
    s.observe(2, 0.9)  # a restarted worker group reports epoch 2 again
    assert s.state_dict() == before
    again = PlateauSchedule.from_state(before).observe(3, 0.2)
    assert again.decreases == 2 and again.lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="epoch 7 observed after epoch 3"):
        again.observe(7, 0.5)


def test_a_rise_within_the_threshold_is_not_an_improvement_but_rises_add_up():
    s = PlateauSchedule(lr=1e-2, patience=3, threshold=0.002)
    whys = [s.observe(e, acc).decision["why"] for e, acc in enumerate([0.5, 0.5015, 0.503, 0.5045])]
    # 0.5015 <= 0.5 + 0.002; 0.503 > 0.502 (the best stays 0.5 until beaten by the threshold)
    assert whys == ["improved", "no improvement for 1 epoch", "improved", "no improvement for 1 epoch"]
    assert s.best == 0.503
    assert s.describe() == ("schedule after epoch 3: top-1 acc 0.5045 (best 0.5030, threshold 0.002): "
                            "no improvement for 1 epoch; lr 0.01 -> 0.01")


def test_a_checkpoint_from_before_the_threshold_keeps_taking_every_rise():
    old = {"lr": 1e-3, "patience": 2, "max_decreases": 3, "factor": 0.1, "best": 0.5, "epochs_since_best": 1,
           "decreases": 1, "last_epoch": 9, "stop": False}
    s = PlateauSchedule.from_state(old).observe(10, 0.5001)
    assert s.threshold == 0.0 and s.decision["why"] == "improved"


def _typical_run(threshold: float) -> tuple[PlateauSchedule, list[float], list[dict]]:
    """A scripted run that answers the schedule, shaped like an ImageNet run at §3.1's settings: at each
    rate, top-1 accuracy rises towards a ceiling (time constants 12, 5, 4, 2 epochs), jumps after each
    division (ceilings 7, 3 and 1 points higher), and carries +-0.09 points of noise, below the threshold."""
    rng = random.Random(0)
    s = PlateauSchedule(lr=1e-2, patience=2, threshold=threshold)
    tau, gain = (12, 5, 4, 2), (0.0, 0.07, 0.03, 0.01)
    start, base, ceiling = 0, 0.02, 0.60
    lrs, decisions = [], []
    for epoch in range(120):
        if s.stop:
            break
        lrs.append(s.lr)
        mean = ceiling - (ceiling - base) * math.exp(-(epoch - start + 1) / tau[s.decreases])
        stage = s.decreases
        s.observe(epoch, mean + rng.uniform(-0.0009, 0.0009))
        decisions.append(dict(s.decision))
        if s.decreases > stage:  # the next rate starts from here and climbs to a higher ceiling
            start, base, ceiling = epoch + 1, mean, mean + gain[s.decreases]
    return s, lrs, decisions


def test_the_paper_preset_reproduces_the_papers_shape_on_a_typical_run():
    cfg = TrainConfig.from_preset("paper")
    threshold = PlateauSchedule.from_config(cfg, n_val=50_000).threshold  # ILSVRC-2012's validation set
    assert threshold == pytest.approx((0.7 * 0.3 / 50_000) ** 0.5, abs=1e-4)  # one standard error of top-1
    s, lrs, decisions = _typical_run(threshold)
    drops = [d["epoch"] for d in decisions if d["lr_after"] < d["lr_before"]]
    # §3.1: three divisions by 10, and training ends near epoch 74 (here at 74 exactly; 370K iterations).
    assert s.stop and s.decreases == 3 and len(drops) == 3 and 70 <= s.last_epoch <= 78
    assert sorted(set(lrs), reverse=True) == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])
    assert drops[0] >= 30  # the first rate runs for most of the run
    assert all(decisions[e]["why"] == "no improvement for 2 epochs: rate divided by 10" for e in drops)
    assert decisions[-1]["why"] == "plateau after 3 decreases: stop"
    assert decisions[-1]["lr_before"] == decisions[-1]["lr_after"] == pytest.approx(1e-5)
    assert [d["epoch"] for d in decisions] == list(range(s.last_epoch + 1))
    assert PlateauSchedule.from_state(s.state_dict()).decision == decisions[-1]
    # Without the threshold the noise keeps resetting the patience: the same run is still going at 74.
    loose, _, _ = _typical_run(0.0)
    assert loose.last_epoch > 90
