"""The plateau schedule decided in the Ray Tune driver and read by every training rank.

Each epoch, rank 0's reduced validation accuracy travels Train -> TuneReportCallback -> Tune driver, where
`PlateauCallback.on_trial_result` feeds it to the rule. The decision reaches the workers through a named
actor, `ScheduleBoard`, which every rank asks for "the rate after epoch e" before epoch e+1; the call
returns once the Tune callback has decided, so all ranks switch rate at the same epoch. Replays are
idempotent (a restarted worker group reports an epoch again), and workers seed the board from their
checkpoint, so a restarted worker group or a resubmitted run continues the schedule where it stopped.

A board lives as long as the training call that started it: `start_board()` gives it a name of its own
(a resubmitted job never finds the board of the job it replaces), keeps it on the driver's node (a lost
worker node does not take it along), and the training call kills it when it returns, so nothing of a
finished run stays on the cluster. Trials and workers find it by the name they are handed.
"""

from __future__ import annotations

import asyncio
import uuid

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vgg_ray.schedule import PlateauSchedule

BOARD_NAMESPACE = "vgg_ray"


@ray.remote(num_cpus=0)
class ScheduleBoard:
    def __init__(self):
        self._states: dict[str, PlateauSchedule] = {}
        self._changed = asyncio.Condition()

    async def seed(self, run_key: str, state: dict) -> dict:
        """Install the schedule a worker group starts from. Its checkpoint is the truth: after a restart
        that lost an epoch the board may know a later epoch, which is now to be trained (and observed)
        again; after a run was deleted and started afresh the board's state is stale."""
        async with self._changed:
            self._states[run_key] = PlateauSchedule.from_state(state)
            self._changed.notify_all()
            return state

    async def observe(self, run_key: str, epoch: int, top1_acc: float) -> dict:
        async with self._changed:
            if run_key not in self._states:
                raise KeyError(f"no schedule seeded for {run_key!r}")
            self._states[run_key].observe(epoch, top1_acc)
            self._changed.notify_all()
            return self._states[run_key].state_dict()

    async def after_epoch(self, run_key: str, epoch: int) -> dict:
        """The schedule once epoch `epoch` has been observed (waits for the Tune callback)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: run_key in self._states and self._states[run_key].last_epoch >= epoch)
            return self._states[run_key].state_dict()

    async def get(self, run_key: str) -> dict | None:
        s = self._states.get(run_key)
        return None if s is None else s.state_dict()


def start_board() -> tuple[str, ray.actor.ActorHandle]:
    """(name, handle) of a new board owned by this process (the job's driver), on this node. It holds a
    few numbers per run and needs no CPU, so it fits on a head node that takes no tasks."""
    name = f"vgg_ray_schedule_{uuid.uuid4().hex[:12]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = ScheduleBoard.options(name=name, namespace=BOARD_NAMESPACE, scheduling_strategy=here).remote()
    ray.get(handle.get.remote(""))  # started before anyone looks it up by name
    return name, handle


def board(name: str) -> ray.actor.ActorHandle:
    return ray.get_actor(name, namespace=BOARD_NAMESPACE)


class PlateauCallback(tune.Callback):
    """§3.1 in the Tune driver: each trial result carries `epoch` and `top1_acc` (reduced over ranks)."""

    def __init__(self, board_name: str, run_key_of_trial=lambda trial: trial.config["run_key"]):
        self._board_name, self._run_key_of_trial, self._board = board_name, run_key_of_trial, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "top1_acc" not in result or "epoch" not in result:
            return
        self._board = self._board or board(self._board_name)
        ray.get(self._board.observe.remote(self._run_key_of_trial(trial), int(result["epoch"]),
                                           float(result["top1_acc"])))
