"""§3.2's evaluation fanned out over a Ray cluster: model x Q x method x slice of the validation set.

A pool of actors, one per GPU (or a few on CPUs), each holding the models on its device; the driver hands
out pieces (one model, one Q, one method, rows [start, stop) of the validation split), and a
`PosteriorTable` checks that every image is counted exactly once per (model, method, Q). A dead actor is
restarted and its piece retried by Ray (max_restarts / max_task_retries); an actor that stays dead has
its pieces moved to the others. The maths is in evaluation.py; this file is the Ray glue and the outputs.

Outputs under `out`: posteriors/<model>.parquet, results.json, results.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from vgg_ray import shards
from vgg_ray.checkpoints import load_model
from vgg_ray.evaluation import (
    GRID,
    MULTI_CROP,
    NETWORK_METHODS,
    PosteriorTable,
    available_methods,
    evaluate_images,
    model_meta,
    resolve_test_scales,
    result_rows,
    results_markdown,
    scales_px,
)
from vgg_ray.models import ARCHS
from vgg_ray.session import connect  # noqa: F401  (jobs/eval_ensemble.py imports it from here)
from vgg_ray.storage import publish_dir
from vgg_ray.transforms import decode_rescaled

# "PIECE_INDEX:MARKER_FILE" in the driver's environment: the actor running that piece exits on its first
# attempt (once, while the marker file does not exist). Fault injection for the retry test.
CRASH_ENV = "VGG_RAY_EVAL_CRASH_ONCE"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # model names become file names


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


@dataclass
class EvalConfig:
    models: dict[str, str]  # NAME -> run directory, checkpoint file or torchvision .pth
    data: str = "demo"  # shards root or URI, or 'demo'
    out: str = "eval"  # output directory or URI
    scales: tuple[int, ...] = ()  # Q in paper units (pixels at a 224 crop); () = §3.2's default per model
    methods: tuple[str, ...] = NETWORK_METHODS
    limit: int = 0  # evaluate the first N validation images only; 0 = all
    split: str = "val"
    slice_images: int = 0  # images per piece; 0 = enough pieces for every worker to stay busy
    workers: int = 0  # evaluation actors; 0 = one per GPU, or CPUs / cpus_per_worker without GPUs
    cpus_per_worker: int = 0  # CPUs per actor (JPEG decoding threads, or torch threads on CPU); 0 = auto
    max_batch: int = 250  # crops (or crop-equivalents of pixels for dense) per forward pass
    cpu: bool = False  # evaluate on CPUs even when the cluster has GPUs
    max_retries: int = 3  # restarts of a dead actor, and retries of its piece

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("--model NAME=SOURCE: give at least one model")
        for name in self.models:
            if not NAME_RE.match(name):
                raise ValueError(f"--model {name}=...: a name is letters, digits and _.+- (it names files)")
        self.methods = parse_methods(self.methods)
        self.scales = tuple(int(q) for q in self.scales)
        for flag in ("limit", "slice_images", "workers", "cpus_per_worker", "max_retries"):
            if getattr(self, flag) < 0:
                raise ValueError(f"--{flag.replace('_', '-')} {getattr(self, flag)}: must be >= 0")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch {self.max_batch}: must be >= 1")


class EvalWorker:
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
        _maybe_crash(piece["index"])
        model, mean, std = self._model(piece["model"], model_ref)
        rows = shards.read_rows(self.root, self.split, piece["start"], piece["stop"],
                                columns=["image", "label", "key"])

        def decode(data: bytes):
            try:
                return decode_rescaled(data, piece["scale_px"])
            except (OSError, ValueError):  # undecodable: reported and left out of every metric
                return None

        images = list(self.decoders.map(decode, rows.column("image").to_pylist()))
        good = [i for i, img in enumerate(images) if img is not None]
        probs = np.zeros((len(images), model.num_classes), dtype=np.float32)
        if good:
            out = evaluate_images(model, [images[i] for i in good], [piece["method"]], mean, std,
                                  max_batch=self.max_batch)
            probs[good] = out[piece["method"]].numpy()
        return {"keys": rows.column("key").to_pylist(),
                "labels": np.asarray(rows.column("label").to_pylist(), dtype=np.int64), "probs": probs,
                "bad": [i for i, img in enumerate(images) if img is None]}


def _maybe_crash(index: int) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if index == int(at) and not os.path.exists(marker):
        Path(marker).write_text(f"evaluation actor killed at piece {index}\n")
        os._exit(1)  # an actor process dying without cleanup, as on a lost node


def plan_pieces(n_images: int, scales_by_model: dict[str, dict[int, int]], methods,
                slice_images: int) -> list[dict]:
    """Every (model, method, Q, slice); the slices of one (model, method, Q) tile [0, n_images) exactly.
    Most expensive first (multi-crop at the largest Q), so no long piece starts last."""
    ranges = shards.row_ranges(n_images, max(1, math.ceil(n_images / max(1, slice_images))))
    pieces = [{"model": m, "method": meth, "scale": q, "scale_px": px, "start": a, "stop": b}
              for m, qs in scales_by_model.items() for meth in methods for q, px in qs.items()
              for a, b in ranges if b > a]

    def cost(p):  # relative forward cost per image: 50 crops vs. two whole images of ~4/3 x Q^2 pixels
        return 2 * GRID * GRID if p["method"] == MULTI_CROP else 2 * 4 / 3 * (p["scale_px"] / 224) ** 2
    pieces.sort(key=lambda p: -cost(p) * (p["stop"] - p["start"]))
    for i, p in enumerate(pieces):
        p["index"] = i
    return pieces


def _pool(cfg: EvalConfig, root: str, n_pieces: int) -> list:
    res = ray.cluster_resources()
    gpus = 0 if cfg.cpu else int(res.get("GPU", 0))
    cpus = max(1, int(res.get("CPU", 1)))
    if gpus:
        per = cfg.cpus_per_worker or max(1, min(8, cpus // gpus))
        workers, opts = cfg.workers or gpus, {"num_gpus": 1, "num_cpus": per, "max_concurrency": 2}
    else:
        per = cfg.cpus_per_worker or min(2, cpus)
        workers, opts = cfg.workers or max(1, cpus // per), {"num_cpus": per}
    env = {CRASH_ENV: os.environ[CRASH_ENV]} if os.environ.get(CRASH_ENV) else {}
    actor = ray.remote(EvalWorker).options(max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries,
                                           runtime_env={"env_vars": env} if env else None, **opts)
    return [actor.remote(root, cfg.split, cfg.max_batch, per) for _ in range(min(workers, n_pieces))]


def run_pieces(cfg: EvalConfig, pieces: list[dict], model_refs: dict, root: str, table: PosteriorTable,
               in_flight: int = 2) -> None:
    """Hand the pieces to the pool, keeping `in_flight` per actor queued so none waits between pieces."""
    actors = _pool(cfg, root, len(pieces))
    queue = list(reversed(pieces))
    attempts = dict.fromkeys(range(len(pieces)), 0)
    running: dict = {}  # ObjectRef -> (actor, piece)
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
                      r["bad"])
    finally:
        for a in actors:
            ray.kill(a)


def _describe(p: dict) -> str:
    return f"{p['model']} {p['method']} Q={p['scale']} rows [{p['start']}, {p['stop']})"


def write_posteriors(folder: Path, table: PosteriorTable) -> list[str]:
    """posteriors/<model>.parquet: per image key, label, model, method, scales, probs (list<float>)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, labels = table.good_keys(), table.good_labels().numpy()
    paths = []
    for name, qs in table.scales.items():
        parts = []
        for method in available_methods(table.methods):
            probs = table.posteriors(name, method).numpy().astype(np.float32)
            n, k = probs.shape
            parts.append(pa.table({
                "key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.int64()),
                "model": pa.array([name] * n, pa.string()), "method": pa.array([method] * n, pa.string()),
                "scales": pa.array([list(qs)] * n, pa.list_(pa.int32())),
                "probs": pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                                  pa.array(probs.reshape(-1))),
            }))
        path = folder / f"{name}.parquet"
        pq.write_table(pa.concat_tables(parts), path)
        paths.append(str(path))
    return paths


def evaluate(cfg: EvalConfig, root: str) -> dict:
    """Run the whole protocol on the shards at `root`; returns the output paths and the result rows."""
    manifest = shards.load_manifest(root)
    n = shards.split_rows(root, cfg.split)
    if cfg.limit:
        n = min(n, cfg.limit)
    if n == 0:
        raise ValueError(f"{shards.join(root, cfg.split)}: no validation images to evaluate")
    refs, scales, meta = {}, {}, {}
    for name, source in cfg.models.items():
        # A model named after a configuration (A ... E) takes <dir>/<arch>/best.pt from an experiment
        # directory, and a torchvision .pth must hold that configuration; other names infer it.
        model, info = load_model(source, arch=name if name in ARCHS else None)
        if model.num_classes != manifest["num_classes"]:
            raise ValueError(f"--model {name}={source}: {model.num_classes} classes, but --data {cfg.data} "
                             f"has {manifest['num_classes']}")
        qs = resolve_test_scales(info.get("config"), cfg.scales)
        scales[name] = dict(zip(qs, scales_px(qs, model.crop_size), strict=True))
        meta[name] = {**model_meta(info, qs), "source": str(source)}
        refs[name] = ray.put({"model": model.eval(), "mean_rgb": info["mean_rgb"],
                              "std_rgb": info.get("std_rgb")})
    table = PosteriorTable(n, {m: tuple(q) for m, q in scales.items()}, cfg.methods, manifest["num_classes"])
    pieces = plan_pieces(n, scales, cfg.methods, cfg.slice_images or _auto_slice(n))
    run_pieces(cfg, pieces, refs, root, table)
    table.check_complete()
    rows = result_rows(table)
    title = f"{', '.join(cfg.models)} on {cfg.data} ({cfg.split}" + (f", first {n})" if cfg.limit else ")")
    with publish_dir(cfg.out) as local:
        out = Path(local)
        posteriors = write_posteriors(out / "posteriors", table)
        (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        markdown = results_markdown(rows, meta, title)
        (out / "results.md").write_text(markdown + "\n")
        run_info = {**asdict(cfg), "data_root": root, "models_meta": meta, "n_images": n, "pieces": len(pieces)}
        (out / "eval_config.json").write_text(json.dumps(run_info, indent=1) + "\n")
    return {"out": cfg.out, "rows": rows, "markdown": markdown, "posteriors": posteriors, "n_images": n,
            "pieces": len(pieces), "skipped": int(table.bad.sum())}


def _auto_slice(n: int) -> int:
    # Small pieces balance the load; past ~256 images a piece gains nothing and delays the last results.
    return max(8, min(256, math.ceil(n / 8)))

