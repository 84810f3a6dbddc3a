"""§3.1's plateau rule on scripted validation accuracies, and the run outputs it feeds. No Ray."""

from __future__ import annotations

import pytest

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
