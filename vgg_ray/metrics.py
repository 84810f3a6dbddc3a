"""Per-epoch outputs of a run: metrics.csv, curves.png and TensorBoard events. Pure Python, no Ray."""

from __future__ import annotations

import csv
import io
import itertools
import os
import tempfile
from pathlib import Path

COLUMNS = ["epoch", "lr", "train_loss", "top1_err", "top5_err", "images_per_s", "epoch_s", "undecodable",
           "started_at_epoch", "world_size", "decision"]
INT_COLUMNS = ("epoch", "world_size")
TEXT_COLUMNS = ("decision",)  # the plateau rule's verdict on the epoch (PlateauSchedule.decision["why"])
# earlier names of columns, in metrics.csv files and checkpointed histories written before the rename
OLD_NAMES = {"corrupt_images": "undecodable"}


def current_names(row: dict) -> dict:
    """`row` with any column under an earlier name (OLD_NAMES) under its current one."""
    return {OLD_NAMES.get(k, k): v for k, v in row.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_metrics_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """The whole history each time (it is tiny), so the file always matches the last checkpoint."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    _write_atomic(Path(path), buf.getvalue().encode())


def read_metrics_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (v if k in TEXT_COLUMNS else int(v) if k in INT_COLUMNS else float(v))
                 for k, v in current_names(r).items() if v != ""}
                for r in csv.DictReader(f)]


def lr_decrease_epochs(rows: list[dict]) -> list[int]:
    """The epochs trained at a lower rate than the epoch before: where §3.1's rule divided it."""
    return [cur["epoch"] for prev, cur in itertools.pairwise(rows) if cur["lr"] < prev["lr"]]


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> list[int]:
    """Top-1/top-5 validation error (%) and the learning rate (log scale) against epoch, with a vertical
    line at each epoch that starts a lower rate; returns those epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(epochs, [r["top1_err"] for r in rows], "o-", label="top-1 error")
    ax.plot(epochs, [r["top5_err"] for r in rows], "s-", label="top-5 error")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error (%)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.step(epochs, [r["lr"] for r in rows], "k--", where="post", alpha=0.6, label="learning rate")
    lr_ax.set_yscale("log")
    drops = lr_decrease_epochs(rows)
    for i, epoch in enumerate(drops):
        # half an epoch before: the line separates the last epoch at the old rate from the first at the new
        ax.axvline(epoch - 0.5, color="tab:red", alpha=0.5, lw=1, label="rate divided" if i == 0 else None)
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _write_atomic(Path(path), buf.getvalue())
    return drops


def log_tensorboard(logdir: str | os.PathLike, row: dict) -> None:
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(logdir)) as w:
        for k in COLUMNS[1:]:
            if k in row and k not in TEXT_COLUMNS:
                w.add_scalar(k, row[k], row["epoch"])
