"""The paper's dependency chain as stages: train A; B-E from A; for C, D, E the S=256 net, then S=384 from
it (a tenth of the initial rate: the paper's 1e-3), then jittered S in [256, 512] from S=384; then the
evaluations of Tables 3-5 and the D+E fusion of Table 6. A resubmission skips every finished stage (its
run directories hold done.json, its evaluation folder results.json).

Layout under <storage>/<name>/: S256/<arch>/, S384/<arch>/, S256-512/<arch>/ (training runs, as
jobs/train.py writes them), eval/<stage>/ (as jobs/eval_ensemble.py writes them), and eval/findings.md
(.json): the paper's findings (deeper is better, LRN does not help, scale jittering, several Q,
multi-crop & dense, fusion) checked across every evaluation of the chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vgg_ray.config import EvalConfig, TrainConfig
from vgg_ray.distributed.evaluate import evaluate
from vgg_ray.distributed.session import capacity, check_cluster, connect
from vgg_ray.distributed.trainer import is_done, train
from vgg_ray.findings import Results, check_findings, findings_json, findings_markdown
from vgg_ray.imagenet.demo import resolve_data
from vgg_ray.storage import absolute, exists, join, publish_dir, read_bytes

SCALED = ("C", "D", "E")  # §3.1/Table 3: the nets also trained at S=384 and with scale jittering


@dataclass
class Stage:
    name: str
    kind: str  # "train" or "eval"
    archs: list[str]
    train_scale: str = "256"
    init: dict[str, str] = field(default_factory=dict)  # arch -> glorot | gaussian | from:...
    lr_factor: float = 1.0  # of the run's initial rate: §3.1's fine-tunes start at 1e-3 where A started at 1e-2
    methods: str = "dense"
    sources: dict[str, str] = field(default_factory=dict)  # eval: model name -> run directory


FINE_TUNE = 0.1  # §3.1: S=384 from S=256 at 1e-3, a tenth of 1e-2 (so the jittered nets, from S=384)


def plan(archs: list[str], exp: str, init_a: str = "glorot") -> list[Stage]:
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
                            {a: f"from:{join(s256, a)}" for a in scaled}, lr_factor=FINE_TUNE))
        stages.append(Stage("train " + ",".join(scaled) + " S=[256,512] from S=384", "train", scaled,
                            "256-512", {a: f"from:{join(s384, a)}" for a in scaled}, lr_factor=FINE_TUNE))
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
    check_cluster(capacity(), base.device, {"--storage": base.storage, "--data": base.data}, base.shared_fs)
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
                                 lr=base.lr * stage.lr_factor, storage=exp, name="S" + stage.train_scale)
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
            # below the paper's 224-pixel crop dense evaluation is mostly padding: multi-crop too, so that
            # the findings compare nets by it (vgg_ray/findings.py)
            methods = stage.methods if base.crop_size >= 224 else "both"
            evaluate(EvalConfig(models=stage.sources, data=root, out=out, methods=methods, limit=limit,
                                device=base.device, shared_fs=base.shared_fs), root)
            summary.append({"stage": stage.name, "skipped": False, "results": out})
    evals = [s["results"] for s in summary if "results" in s]
    if evals:
        summary.append({"stage": "the paper's findings", "results": write_findings(join(exp, "eval"), evals)})
    return summary


def write_findings(out: str, eval_dirs: list[str]) -> str:
    """findings.md / .json under `out` from the evaluations in `eval_dirs` (their results.json and the
    model meta in eval_config.json); printed too. Returns the markdown file's path."""
    evaluations = [(json.loads(read_bytes(join(d, "results.json"))),
                    json.loads(read_bytes(join(d, "eval_config.json")))["models_meta"]) for d in eval_dirs]
    findings = check_findings(Results(evaluations))
    markdown = findings_markdown(findings)
    with publish_dir(out) as local:
        (Path(local) / "findings.json").write_text(findings_json(findings))
        (Path(local) / "findings.md").write_text(markdown)
    print(markdown, flush=True)
    return join(out, "findings.md")
