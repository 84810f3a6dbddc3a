"""§3.2's evaluation fanned out over a Ray cluster: model x Q x method x slice of the validation set.

A pool of `Evaluator` actors, one per GPU (or a few on CPUs), each holding the models on its device; the
driver hands out pieces (one model, one Q, one method, rows [start, stop) of the validation split:
evaluation.plan_pieces), and a `PosteriorTable` checks that every image is counted exactly once per
(model, method, Q). A dead actor is restarted and its piece retried by Ray (max_restarts /
max_task_retries); an actor that stays dead has its pieces moved to the others. The maths and the plan
are in evaluation.py and the tables in report.py; this file is the Ray glue.

Outputs under `out`: posteriors/<model>.parquet, results.json, results.md, findings.md / .json (the
paper's findings these models can test, and whether they show them: vgg_ray/findings.py).
"""

from __future__ import annotations

import json
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from vgg_ray.checkpoints import load_models
from vgg_ray.config import EvalConfig
from vgg_ray.distributed.session import Capacity, capacity, check_cluster, use_gpus
from vgg_ray.evaluation import PosteriorTable, evaluate_images, plan_pieces, work_macs
from vgg_ray.findings import Results, check_findings, findings_json, findings_markdown
from vgg_ray.imagenet import shards
from vgg_ray.report import model_meta, result_rows, results_markdown, write_posteriors
from vgg_ray.scales import resolve_test_scales, scales_px
from vgg_ray.storage import publish_dir
from vgg_ray.transforms import UndecodableImage, decode_rescaled

# An evaluation actor on CPUs is started for no less work than this: ~15 s of two cores at ~1.7e10 MACs/s
# (VGG-D's centre-crop rate on two cores, 1.12 images/s x 15.5 GMACs: README.md, "Evaluation"), a few times
# what starting one costs (a process that imports torch, then gets the models: ~5 s on 2 busy cores).
ACTOR_MACS = 2.5e11


class Evaluator:
    """Evaluates pieces; keeps each model on its device after the first piece that needs it."""

    def __init__(self, root: str, split: str, max_batch: int, threads: int):
        self.root, self.split, self.max_batch = root, split, max_batch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.decoders = ThreadPoolExecutor(threads)  # PIL releases the GIL while decoding
        self.loaded: dict[str, tuple] = {}
        self.lock = threading.Lock()

    def _model(self, name: str, ref: list):
        # `ref` is [ObjectRef]: nested, so Ray does not fetch the weights for every piece, only here once.
        with self.lock:
            if name not in self.loaded:
                rec = ray.get(ref[0])
                self.loaded[name] = (rec["model"].to(self.device).eval(), rec["mean_rgb"], rec["std_rgb"])
            return self.loaded[name]

    def run(self, piece: dict, model_ref: list) -> dict:
        model, mean, std = self._model(piece["model"], model_ref)
        rows = shards.read_rows(self.root, self.split, piece["start"], piece["stop"],
                                columns=["image", "label", "key"])

        def decode(data: bytes):
            try:
                return decode_rescaled(data, piece["scale_px"])
            except UndecodableImage:  # reported and left out of every metric
                return None

        images = list(self.decoders.map(decode, rows.column("image").to_pylist()))
        decoded = [i for i, img in enumerate(images) if img is not None]
        probs = np.zeros((len(images), model.num_classes), dtype=np.float32)
        if decoded:
            out = evaluate_images(model, [images[i] for i in decoded], [piece["method"]], mean, std,
                                  max_batch=self.max_batch)
            probs[decoded] = out[piece["method"]].numpy()
        return {"keys": rows.column("key").to_pylist(),
                "labels": np.asarray(rows.column("label").to_pylist(), dtype=np.int64), "probs": probs,
                "undecodable": [i for i, img in enumerate(images) if img is None]}


def pool_size(cfg: EvalConfig, n_pieces: int, cap: Capacity, use_gpu: bool,
              work: float | None = None) -> tuple[int, dict]:
    """How many evaluation actors, and the resources each holds: one per GPU the cluster has or can have
    (actors on GPU nodes not up yet wait for the autoscaler); on CPUs, one per `cpus_per_worker` (2)
    CPUs, but no more than the work pays for (ACTOR_MACS each), as an actor's start-up (a process
    importing torch) costs seconds that a small evaluation does not win back."""
    cpus = max(1, int(cap.cpus))
    if use_gpu:
        gpus = cfg.workers or cap.gpus or 1  # evaluate() asks for --workers where cap.gpus is unknown
        per = cfg.cpus_per_worker or max(1, min(8, cpus // max(cap.gpus, gpus)))
        workers, opts = gpus, {"num_gpus": 1, "num_cpus": per, "max_concurrency": 2}
    else:
        per = cfg.cpus_per_worker or min(2, cpus)
        workers = cfg.workers or max(1, cpus // per)
        if not cfg.workers and work is not None:
            workers = min(workers, max(1, math.ceil(work / ACTOR_MACS)))
        opts = {"num_cpus": per}
    return min(workers, n_pieces), opts


def _pool(cfg: EvalConfig, root: str, n_pieces: int, actor_cls: type, size: tuple[int, dict]) -> list:
    workers, opts = size
    actor = ray.remote(actor_cls).options(max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries,
                                          **opts)
    print(f"evaluating {n_pieces} pieces on {workers} actor(s) ({opts.get('num_gpus', 0)} GPU, "
          f"{opts['num_cpus']} CPUs each)", flush=True)
    return [actor.remote(root, cfg.split, cfg.max_batch, opts["num_cpus"]) for _ in range(workers)]


def run_pieces(cfg: EvalConfig, pieces: list[dict], model_refs: dict, root: str, table: PosteriorTable,
               in_flight: int = 2, actor_cls: type = Evaluator, size: tuple[int, dict] | None = None) -> None:
    """Hand the pieces to the pool, keeping `in_flight` per actor queued so none waits between pieces.
    (`actor_cls` is Evaluator or, in tests, a subclass that fails on purpose; `size` is pool_size's
    answer, by default for the cluster as it is.)"""
    if size is None:
        cap = capacity()
        size = pool_size(cfg, len(pieces), cap, use_gpus(cfg.device, cap))
    actors = _pool(cfg, root, len(pieces), actor_cls, size)
    queue = list(reversed(pieces))
    attempts = dict.fromkeys(range(len(pieces)), 0)
    running: dict = {}  # ObjectRef -> (actor, piece)
    # progress in images evaluated (one image at one Q by one method of one model), so the rate and the
    # ETA mean the same whatever the piece sizes
    bar = tqdm(total=sum(p["stop"] - p["start"] for p in pieces), unit="img", desc="evaluating",
               mininterval=5, file=sys.stdout)
    try:
        while queue or running:
            for a in actors:
                while queue and sum(1 for x, _ in running.values() if x is a) < in_flight:
                    p = queue.pop()
                    running[a.run.remote(p, [model_refs[p["model"]]])] = (a, p)
            if not running:
                raise RuntimeError(f"{len(queue)} pieces left and no evaluation actor alive")
            done, _ = ray.wait(list(running), num_returns=1)
            a, p = running.pop(done[0])
            try:
                r = ray.get(done[0])
            except ray.exceptions.RayActorError as e:  # dead beyond its restarts: move its work
                if a in actors:
                    actors.remove(a)
                attempts[p["index"]] += 1
                if attempts[p["index"]] > cfg.max_retries:
                    raise RuntimeError(f"piece {_describe(p)} failed {attempts[p['index']]} times") from e
                queue.append(p)
                continue
            except ray.exceptions.RayTaskError as e:
                raise RuntimeError(f"evaluating {_describe(p)} failed: {e}") from e
            table.add(p["model"], p["method"], p["scale"], p["start"], r["keys"], r["labels"], r["probs"],
                      r["undecodable"])
            bar.update(p["stop"] - p["start"])
            bar.set_postfix_str(f"{len(pieces) - len(queue) - len(running)}/{len(pieces)} pieces", refresh=False)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)


def _describe(p: dict) -> str:
    return f"{p['model']} {p['method']} Q={p['scale']} rows [{p['start']}, {p['stop']})"


def evaluate(cfg: EvalConfig, root: str, models: dict[str, tuple] | None = None) -> dict:
    """Run the whole protocol on the shards at `root`; returns the output paths and the result rows.
    `models` is checkpoints.load_models' answer when the caller has loaded them (to check them before
    Ray starts); else they are loaded here. Raises UsageError, one line per problem, before any work."""
    cap = capacity()
    use_gpu = check_cluster(cap, cfg.device, {"--data": cfg.data, "--out": cfg.out}, cfg.shared_fs, cfg.workers)
    manifest = shards.load_manifest(root)
    n = shards.split_rows(root, cfg.split)
    if cfg.limit:
        n = min(n, cfg.limit)
    if n == 0:
        raise ValueError(f"{shards.join(root, cfg.split)}: no validation images to evaluate")
    models = models or load_models(cfg.models, manifest["num_classes"], cfg.data)
    refs, scales, meta = {}, {}, {}
    for name, source in cfg.models.items():
        model, info = models[name]
        qs = resolve_test_scales(info.get("config"), cfg.test_scales)
        scales[name] = dict(zip(qs, scales_px(qs, model.crop_size), strict=True))
        meta[name] = {**model_meta(info, qs), "source": str(source)}
        refs[name] = ray.put({"model": model.eval(), "mean_rgb": info["mean_rgb"],
                              "std_rgb": info.get("std_rgb")})
    table = PosteriorTable(n, {m: tuple(q) for m, q in scales.items()}, cfg.methods, manifest["num_classes"])
    pieces = plan_pieces(n, scales, cfg.methods, cfg.slice_images)
    size = pool_size(cfg, len(pieces), cap, use_gpu, work_macs(pieces, {m: models[m][0] for m in cfg.models}))
    run_pieces(cfg, pieces, refs, root, table, size=size)
    table.check_complete()
    rows = result_rows(table)
    title = f"{', '.join(cfg.models)} on {cfg.data} ({cfg.split}" + (f", first {n})" if cfg.limit else ")")
    with publish_dir(cfg.out) as local:
        out = Path(local)
        posteriors = write_posteriors(out / "posteriors", table)
        (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        markdown = results_markdown(rows, meta, title)
        (out / "results.md").write_text(markdown + "\n")
        findings = check_findings(Results([(rows, meta)]))
        (out / "findings.json").write_text(findings_json(findings))
        (out / "findings.md").write_text(findings_markdown(findings))
        run_info = {**asdict(cfg), "data_root": root, "models_meta": meta, "n_images": n, "pieces": len(pieces)}
        (out / "eval_config.json").write_text(json.dumps(run_info, indent=1) + "\n")
    return {"out": cfg.out, "rows": rows, "markdown": markdown, "findings": findings_markdown(findings),
            "posteriors": posteriors, "n_images": n,
            "pieces": len(pieces), "undecodable": int(table.undecodable.sum())}

