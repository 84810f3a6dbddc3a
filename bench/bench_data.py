"""Training-input throughput: our pipeline against the one a user would write without vgg_ray, on the same
images, and what each JPEG decoder costs per core.

    python -m bench.bench_data --data photos                    # ImageNet-sized JPEGs, S = 256 and 256-512
    python -m bench.bench_data --data /data/shards --raw /data/imagenet --seconds 60

Pipelines, each with --procs CPU processes, delivering uint8 batches of crop x crop images to this process:
  ours     Ray Data over the shards: per image, S, the crop window and the flip are drawn from the header;
           simplejpeg decodes (in the DCT domain at 1/2, 1/4, 1/8 when that is still large enough) and
           only the window is resampled (vgg_ray.transforms.render_window).
  peer     what users write: torchvision ImageFolder with its default loader (Pillow), then transforms.v2
           ToImage, Resize(S) (RandomResize for a jittered S), RandomCrop, RandomHorizontalFlip, in a
           DataLoader over the same images as files.
  ceiling  ours with no consumer work: this process counts the rows of each block as Ray Data finishes
           it and never fetches it (iter_internal_ref_bundles), so no batches are assembled or converted
           to torch. What the decode processes deliver, and so what one node's CPUs can feed.
They alternate for --rounds rounds per scale (a shared machine's load drifts; alternating exposes all to
it) and the medians are compared. The decoder table times one image's whole CPU work, decode to crop, per
core, in this process, on the same images; each pipeline's share is its median over --procs x that rate
(its own decoder's). During ours' rounds the CPU time of every Ray process is sampled (psutil), to say
where the cores went. On a GPU it adds the device path (vgg_ray.device_decode). Prints tables, then one
JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from bench.common import peer_transform, resolve, result_path, write_images
from vgg_ray import transforms as T
from vgg_ray.imagenet import shards
from vgg_ray.scales import parse_scale, scale_to_px


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="photos", help="shards folder/URI, photos (ImageNet-sized JPEGs) or demo")
    p.add_argument("--raw", default=None, help="the ImageNet-layout folder the shards came from (train/<wnid>/)")
    p.add_argument("--scales", default="256,256-512", help="S in paper units, a comma list (fixed or jittered)")
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per pipeline and round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per scale; medians are reported")
    p.add_argument("--crop", type=int, default=None, help="crop side, pixels (224; 32 for demo)")
    p.add_argument("--batch", type=int, default=64, help="images per batch delivered to this process")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="CPU processes for each pipeline")
    p.add_argument("--decoder-images", type=int, default=64, help="images for the per-core decoder table")
    p.add_argument("--pipelines", default="ours,peer,ceiling",
                   help="comma list of ours, peer, ceiling (or none: the decoder table only)")
    p.add_argument("--out", default=None,
                   help="also write the JSON to this file, or to DIR/<date>-<device>-data.json for a DIR/ (auto: bench/results/)")
    return p.parse_args(argv)


# ---- the pipelines ----

def timed(epochs, seconds: float, size) -> float:
    """Images/s over `seconds` after the first batch; `epochs()` yields one epoch's iterator."""
    n, start = 0, None
    while True:
        for b in epochs():
            if start is None:
                start = time.perf_counter()
                continue
            n += size(b)
            if time.perf_counter() - start >= seconds:
                return n / (time.perf_counter() - start)


def peer(train_dir: Path, scale, crop, args):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(train_dir), transform=peer_transform(scale, crop))
    # forkserver: workers start from a clean process, not forked from one running Ray's threads; they
    # persist across epochs and rounds, as a training script's would.
    dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.procs, drop_last=True,
                    persistent_workers=True, multiprocessing_context="forkserver")
    return lambda: timed(lambda: iter(dl), args.seconds, lambda b: len(b[1]))


def ours(root: str, scale, crop, args, cpu: CpuSampler | None = None):
    from vgg_ray.distributed import data

    ds = data.train_dataset(root, scale, crop, seed=0)

    def run() -> float:
        if cpu:
            cpu.start()
        try:
            return timed(lambda: ds.iter_torch_batches(batch_size=args.batch, drop_last=True), args.seconds,
                         lambda b: len(b["label"]))
        finally:
            if cpu:
                cpu.stop()
    return run


def ceiling(root: str, scale, crop, args):
    from vgg_ray.distributed import data

    ds = data.train_dataset(root, scale, crop, seed=0)
    return lambda: timed(ds.iter_internal_ref_bundles, args.seconds, lambda bundle: bundle.num_rows())


class CpuSampler:
    """CPU seconds over the windows between start() and stop(), by role: the decode tasks, this process
    (the consumer and Ray Data's executor), Ray's own processes (raylet, GCS, agents, Ray Data's stats and
    autoscaling actors); then, from the machine's own counters, what no live process accounts for (a
    process that exited in the window, or one of another program) and the cores left idle."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall = 0.0
        self._t0, self._before, self._machine = 0.0, {}, (0.0, 0.0)
        self._roles: dict[int, str] = {}
        self._raylets: set[int] = set()

    @staticmethod
    def _machine_busy_idle() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, idle

    def _role(self, proc) -> str | None:
        # Ray's workers retitle themselves after what they run ("ray::ReadParquet->MapBatches(...)",
        # "ray::IDLE"), and a title read while it is rewritten can come back empty: a process keeps the
        # role it was first seen with. Workers are the raylet's children; its actors are workers too, but
        # keep their class in their title.
        if proc.pid in self._roles:
            return self._roles[proc.pid]
        title = " ".join(proc.cmdline()) or proc.name()
        if proc.pid == os.getpid():
            role = "consumer (this process)"
        elif proc.ppid() in self._raylets and not any(w in title for w in ("Actor", "Agent", "dashboard")):
            role = "decode tasks"
        elif "ray" in title:
            role = "Ray's own processes"
        else:
            return None  # another program; it counts as "other" below
        self._roles[proc.pid] = role
        return role

    def _sample(self) -> dict:
        self._raylets = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}
        out = {}
        for proc in psutil.process_iter():
            try:
                role = self._role(proc)
                if role:
                    t = proc.cpu_times()
                    out[proc.pid] = (role, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def start(self) -> None:
        self._t0, self._before, self._machine = time.perf_counter(), self._sample(), self._machine_busy_idle()

    def stop(self) -> None:
        self.wall += time.perf_counter() - self._t0
        busy, idle = (a - b for a, b in zip(self._machine_busy_idle(), self._machine, strict=True))
        seen = 0.0
        for pid, (role, t) in self._sample().items():
            used = t - self._before.get(pid, (role, 0.0))[1]
            self.cpu[role] = self.cpu.get(role, 0.0) + used
            seen += used
        self.cpu["other (exited, or not Ray)"] = self.cpu.get("other (exited, or not Ray)", 0.0) + max(0.0, busy - seen)
        self.cpu["idle"] = self.cpu.get("idle", 0.0) + idle

    def shares(self) -> dict[str, float]:
        """Cores' worth of CPU each role used, on average over the sampled windows."""
        return {k: round(v / self.wall, 3) for k, v in sorted(self.cpu.items(), key=lambda kv: -kv[1])} if self.wall else {}


# ---- per-core cost of one image's CPU work, by decoder ----

def _pil_two_step(data, scale, crop, rng):
    """Pillow (draft mode), the whole image rescaled to S, then cropped: vgg_ray's path before this."""
    img = Image.open(io.BytesIO(data))
    w, h = T.rescaled_size(*img.size, T.draw_scale(rng, scale))
    img.draft("RGB", (w, h))
    img = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))
    return T.random_crop_flip(img, crop, rng)


def _pil_window(data, scale, crop, rng):
    """Pillow's decoder (draft mode), then only the window resampled: the window's gain alone."""
    win = T.train_window(T.image_size(data), scale, crop, rng)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", win.size_s)
    img = np.asarray(img.convert("RGB"))
    sx, sy = img.shape[1] / win.size_s[0], img.shape[0] / win.size_s[1]
    box = (win.x * sx, win.y * sy, (win.x + crop) * sx, (win.y + crop) * sy)
    return np.asarray(Image.fromarray(img).resize((crop, crop), Image.Resampling.BILINEAR, box=box, reducing_gap=None))


def _torchvision_window(data, scale, crop, rng):
    """torchvision.io.decode_jpeg (libjpeg-turbo, no DCT scaling), box reduction, the window's bilinear
    samples (grid_sample): the device path run on a CPU."""
    from vgg_ray.device_decode import decode_windows

    win = T.train_window(T.image_size(data), scale, crop, rng)
    return decode_windows([data], T.window_array([win]), np.ones(1, bool), crop, "cpu")[0][0]


def decoder_table(images: list[bytes], scale, crop, repeat: int = 3) -> list[dict]:
    """Images/s on one core of each way to turn a JPEG into a training crop (median of `repeat`)."""
    tf = peer_transform(scale, crop)
    ways = {
        "peer: Pillow loader + v2 Resize/RandomCrop/Flip": lambda d, rng: tf(Image.open(io.BytesIO(d)).convert("RGB")),
        "Pillow (draft), rescale whole image, crop": lambda d, rng: _pil_two_step(d, scale, crop, rng),
        "Pillow (draft), resample the window only": lambda d, rng: _pil_window(d, scale, crop, rng),
        "torchvision decode_jpeg + grid_sample window (device path on CPU)":
            lambda d, rng: _torchvision_window(d, scale, crop, rng),
        "ours: simplejpeg (DCT 1/2^k) + OpenCV bilinear, window only": lambda d, rng: T.train_sample(d, scale, crop, rng),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    try:
        rows = []
        for name, fn in ways.items():
            rng = np.random.default_rng(0)
            fn(images[0], rng)  # warm-up
            rates = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for d in images:
                    fn(d, rng)
                rates.append(len(images) / (time.perf_counter() - t0))
            rows.append({"decoder": name, "img_s_per_core": statistics.median(rates)})
    finally:
        torch.set_num_threads(threads)
    return rows


def gpu_decode_rates(images: list[bytes], scale, crop, batch: int = 256, repeat: int = 5) -> dict:
    """Images/s on this machine's GPU, batches of `batch`: vgg_ray.device_decode's whole path
    (gpu_decode_img_s), and nvJPEG's batched decode alone (gpu_nvjpeg_img_s, its ceiling). Empty without
    a GPU."""
    if not torch.cuda.is_available():
        return {}
    from torchvision.io import ImageReadMode, decode_jpeg

    from vgg_ray.device_decode import decode_windows

    rng = np.random.default_rng(0)
    datas = [images[i % len(images)] for i in range(batch)]
    wins = T.window_array([T.train_window(T.image_size(d), scale, crop, rng) for d in datas])
    decoded = np.ones(batch, bool)
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]

    def rate(fn) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
        return repeat * batch / (time.perf_counter() - t0)

    return {"gpu_decode_img_s": rate(lambda: decode_windows(datas, wins, decoded, crop, "cuda")),
            "gpu_nvjpeg_img_s": rate(lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda"))}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{os.cpu_count()}core"
    date = datetime.date.today().isoformat()
    out = result_path(args.out, f"{date}-{device}-data")
    root = resolve(args.data)
    crop = args.crop or (32 if args.data == "demo" else 224)
    scales = [tuple(scale_to_px(s, crop) for s in parse_scale(text)) for text in args.scales.split(",")]
    pipelines = [p for p in args.pipelines.split(",") if p in ("ours", "peer", "ceiling")]
    n = min(args.decoder_images, shards.split_rows(root, "train"))
    images = shards.read_rows(root, "train", 0, n, ["image"]).column("image").to_pylist()
    result = {"bench": "data", "date": date, "device": device, "data": args.data, "crop": crop, "procs": args.procs, "batch": args.batch,
              "seconds": args.seconds, "rounds": args.rounds, "mean_jpeg_kb": round(np.mean([len(d) for d in images]) / 1024, 1),
              "scales": []}
    started_ray = False
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        train_dir = Path(args.raw) / "train" if args.raw else Path(tmp) / "train"
        if pipelines and not args.raw:
            write_images(root, train_dir)
        if "ours" in pipelines or "ceiling" in pipelines:
            import ray

            ray.init(address="local", num_cpus=args.procs, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            started_ray = True
        try:
            for scale in scales:
                entry = {"train_scale_px": list(scale), "decoders": decoder_table(images, scale, crop),
                         "gpu_decode_img_s": None, **gpu_decode_rates(images, scale, crop)}
                cpu = CpuSampler()
                runs = {"ours": ours(root, scale, crop, args, cpu) if "ours" in pipelines else None,
                        "peer": peer(train_dir, scale, crop, args) if "peer" in pipelines else None,
                        "ceiling": ceiling(root, scale, crop, args) if "ceiling" in pipelines else None}
                rates = {k: [] for k, v in runs.items() if v}
                for r in range(args.rounds if rates else 0):
                    for k in rates:
                        rates[k].append(runs[k]())
                    print(f"S {scale[0]}-{scale[1]} round {r + 1}/{args.rounds}: "
                          + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " images/s", flush=True)
                entry["rounds"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
                entry["median_img_s"] = {k: statistics.median(v) for k, v in rates.items()}
                if "ours" in rates and "peer" in rates:
                    entry["ratio_ours_over_peer"] = statistics.median([a / b for a, b in zip(rates["ours"], rates["peer"], strict=True)])
                per_core = {d["decoder"].split(":")[0]: d["img_s_per_core"] for d in entry["decoders"]}
                entry["share_of_procs_x_per_core"] = {
                    k: v / (args.procs * per_core["peer" if k == "peer" else "ours"])
                    for k, v in entry["median_img_s"].items()}
                entry["cpu_cores_during_ours"] = cpu.shares()
                result["scales"].append(entry)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    print_tables(result)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    print(json.dumps(result))
    return result


def print_tables(result: dict) -> None:
    print(f"\ndata {result['data']} (mean JPEG {result['mean_jpeg_kb']} KB), crop {result['crop']}, "
          f"{result['procs']} CPU processes per pipeline, batch {result['batch']}")
    for e in result["scales"]:
        lo, hi = e["train_scale_px"]
        print(f"\nS = {lo}" + (f"-{hi} (jittered)" if hi != lo else "") + " px")
        print(f"  {'one image, decode to crop, on one core':<68}{'img/s':>8}")
        for d in e["decoders"]:
            print(f"  {d['decoder']:<68}{d['img_s_per_core']:>8.0f}")
        if e["gpu_decode_img_s"]:
            print(f"  {'device path on this GPU (nvJPEG, batches of 256)':<68}{e['gpu_decode_img_s']:>8.0f}")
            print(f"  {'  of which nvJPEG alone could decode':<68}{e['gpu_nvjpeg_img_s']:>8.0f}")
        for k, v in e.get("median_img_s", {}).items():
            print(f"  pipeline {k:<59}{v:>8.1f}  rounds {' '.join(f'{x:.0f}' for x in e['rounds'][k])}")
        for k, v in e.get("share_of_procs_x_per_core", {}).items():
            label = f"{k}: share of {result['procs']} procs x its per-core rate"
            print(f"  {label:<68}{v:>8.0%}")
        if "ratio_ours_over_peer" in e:
            print(f"  {'ratio ours / peer (median of the rounds)':<68}{e['ratio_ours_over_peer']:>8.2f}")
        if e.get("cpu_cores_during_ours"):
            print("  cores during ours' rounds: " + ", ".join(f"{k} {v:.2f}" for k, v in e["cpu_cores_during_ours"].items()))


if __name__ == "__main__":
    main()
