"""vgg_ray/distributed/schedule_board.py: the board every rank reads the rate from, and the Tune callback
that feeds it, on a real local Ray instance."""

from __future__ import annotations

import types

import pytest
import ray

from vgg_ray.distributed.schedule_board import PlateauCallback, board, start_board
from vgg_ray.schedule import PlateauSchedule

pytestmark = pytest.mark.ray


def test_ranks_wait_for_the_decision_and_replays_change_nothing(ray_local):
    name, handle = start_board()
    try:
        assert board(name)._actor_id == handle._actor_id
        run_key = "runs/x/A"
        ray.get(handle.seed.remote(run_key, PlateauSchedule(lr=0.01, patience=1).state_dict()))
        first = ray.get(handle.after_epoch.remote(run_key, -1))  # before epoch 0: nothing to wait for
        assert first["lr"] == 0.01 and first["last_epoch"] == -1
        waiting = handle.after_epoch.remote(run_key, 0)  # every rank, before epoch 1
        ready, _ = ray.wait([waiting], timeout=0.5)
        assert not ready  # the Tune callback has not decided yet
        callback = PlateauCallback(name, run_key_of_trial=lambda trial: run_key)
        trial = types.SimpleNamespace(config={})
        callback.on_trial_result(0, [], trial, {"epoch": 0, "top1_acc": 0.3})
        assert ray.get(waiting)["lr"] == 0.01
        callback.on_trial_result(1, [], trial, {"epoch": 1, "top1_acc": 0.3})  # no better: patience 1
        callback.on_trial_result(1, [], trial, {"epoch": 1, "top1_acc": 0.9})  # a replay: ignored
        after = ray.get(handle.after_epoch.remote(run_key, 1))
        assert after["lr"] == pytest.approx(0.001) and after["decreases"] == 1
        # a restarted worker group seeds the board from its checkpoint, which is the truth
        restored = PlateauSchedule(lr=0.01, patience=1, last_epoch=0, best=0.3)
        ray.get(handle.seed.remote(run_key, restored.state_dict()))
        assert ray.get(handle.get.remote(run_key))["lr"] == 0.01
    finally:
        ray.kill(handle)


def test_each_training_call_gets_a_board_of_its_own(ray_local):
    (a, ha), (b, hb) = start_board(), start_board()
    try:
        assert a != b and ha._actor_id != hb._actor_id
    finally:
        ray.kill(ha)
        ray.kill(hb)
    with pytest.raises(ValueError):
        board(a)
