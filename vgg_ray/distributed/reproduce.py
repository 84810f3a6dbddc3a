"""The paper's dependency chain as stages: train A; B-E from A; for C, D, E the S=256 net, then S=384 from
it (lr 1e-3), then jittered S in [256, 512] from S=384; then the evaluations of Tables 3-5 and the D+E
fusion of Table 6. A resubmission skips every finished stage (its run directories hold done.json, its
evaluation folder results.json).

Layout under <storage>/<name>/: S256/<arch>/, S384/<arch>/, S256-512/<arch>/ (training runs, as
jobs/train.py writes them) and eval/<stage>/ (as jobs/eval_ensemble.py writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgg_ray.config import EvalConfig, TrainConfig, check_shared
from vgg_ray.distributed.evaluate import evaluate
from vgg_ray.distributed.session import connect, node_count
from vgg_ray.distributed.trainer import is_done, train
from vgg_ray.imagenet.demo import resolve_data
from vgg_ray.storage import absolute, exists, join

SCALED = ("C", "D", "E")  # §3.1/Table 3: the nets also trained at S=384 and with scale jittering


@dataclass
class Stage:
    name: str
    kind: str  # "train" or "eval"
    archs: list[str]
    train_scale: str = "256"
    init: dict[str, str] = field(default_factory=dict)  # arch -> glorot | gaussian | from:...
    lr: float | None = None
    methods: str = "dense"
    sources: dict[str, str] = field(default_factory=dict)  # eval: model name -> run directory


def plan(archs: list[str], exp: str, init_a: str = "glorot", fine_tune_lr: float = 1e-3) -> list[Stage]:
    """The stages for `archs` (A is always trained: the others start from it)."""
    deeper = [a for a in ("A-LRN", "B", "C", "D", "E") if a in archs]
    s256, s384, jit = join(exp, "S256"), join(exp, "S384"), join(exp, "S256-512")
    stages = [Stage("train A, S=256", "train", ["A"], "256", {"A": init_a})]
    if deeper:
        # §3.1: deeper nets start from A's first four conv and three FC layers; A-LRN is as deep as A,
        # and the paper trained it from scratch like A.
        stages.append(Stage("train " + ",".join(deeper) + " from A, S=256", "train", deeper, "256",
                            {a: (init_a if a == "A-LRN" else f"from:{join(s256, 'A')}") for a in deeper}))
    scaled = [a for a in SCALED if a in archs]
    if scaled:
        stages.append(Stage("train " + ",".join(scaled) + " S=384 from S=256", "train", scaled, "384",
                            {a: f"from:{join(s256, a)}" for a in scaled}, lr=fine_tune_lr))
        stages.append(Stage("train " + ",".join(scaled) + " S=[256,512] from S=384", "train", scaled,
                            "256-512", {a: f"from:{join(s384, a)}" for a in scaled}, lr=fine_tune_lr))
    single = ["A", *deeper]
    stages.append(Stage("Tables 3-4: S=256 nets, dense", "eval", single,
                        sources={a: join(s256, a) for a in single}))
    if scaled:
        stages.append(Stage("Tables 3-4: S=384 nets, dense", "eval", scaled,
                            sources={a: join(s384, a) for a in scaled}))
        stages.append(Stage("Tables 5-6: jittered nets, dense / multi-crop / both, and their fusion", "eval",
                            scaled, methods="both", sources={a: join(jit, a) for a in scaled}))
    return stages


def train_dir(exp: str, stage: Stage) -> str:
    return join(exp, "S" + stage.train_scale)


def eval_dir(exp: str, index: int) -> str:
    return join(exp, "eval", f"stage{index}")


def run(base: TrainConfig, archs: list[str], exp_name: str | None = None, init_a: str = "glorot",
        limit: int = 0, log=print) -> list[dict]:
    """Run (or resume) the chain; returns one summary dict per stage."""
    connect()
    check_shared({"--storage": base.storage, "--data": base.data}, node_count(), base.shared_fs)
    exp = join(absolute(base.storage), exp_name or base.name)
    root = resolve_data(base.data)
    summary = []
    for i, stage in enumerate(plan(archs, exp, init_a)):
        if stage.kind == "train":
            where = train_dir(exp, stage)
            if all(is_done(join(where, a)) for a in stage.archs):
                log(f"[{i}] {stage.name}: done earlier, skipped")
                summary.append({"stage": stage.name, "skipped": True, "runs": where})
                continue
            log(f"[{i}] {stage.name}")
            cfgs = [base.replace(arch=a, train_scale=stage.train_scale, init=stage.init[a],
                                 lr=stage.lr or base.lr, storage=exp, name="S" + stage.train_scale)
                    for a in stage.archs]
            train(cfgs)
            summary.append({"stage": stage.name, "skipped": False, "runs": where})
        else:
            out = eval_dir(exp, i)
            if exists(join(out, "results.json")):
                log(f"[{i}] {stage.name}: done earlier, skipped")
                summary.append({"stage": stage.name, "skipped": True, "results": out})
                continue
            log(f"[{i}] {stage.name}")
            evaluate(EvalConfig(models=stage.sources, data=root, out=out, methods=stage.methods, limit=limit,
                                device=base.device, shared_fs=base.shared_fs), root)
            summary.append({"stage": stage.name, "skipped": False, "results": out})
    return summary
