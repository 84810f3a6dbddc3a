"""§3.1's training crops decoded where the model trains: the JPEG bytes and the windows drawn on the CPU
(vgg_ray.transforms.train_window) travel to the train worker, which decodes the batch on its device
(nvJPEG through torchvision on a GPU, on a side stream so the step queued before runs meanwhile) and
samples each window there as the CPU path does: only the part of the image the window reads, box-reduced
by 2, 4 or 8 where the CPU decoder would have scaled in the DCT domain, then bilinear samples at OpenCV's
pixel positions (vgg_ray.transforms.resample_window), one grid_sample for CHUNK windows. Pure PyTorch;
the same code runs on the CPU, which is how the tests check it against the CPU path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vgg_ray.transforms import UndecodableImage, Window, dct_factor, render_window


def _window(row) -> Window:
    w, h, x, y, flip = (int(v) for v in row)
    return Window((w, h), x, y, bool(flip))


CHUNK = 64  # windows sampled per grid_sample call: bounds the padded float batch (~85 MB at S = 256)
_side_streams: dict[int, torch.cuda.Stream] = {}


def _decode_all(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as RGB uint8 CHW on `device`; one batched call, or one by one when the batch fails."""
    # Imported here: torchvision's import takes ~3 s (torch._dynamo, through torchvision.ops), in every
    # process that imports this module (Ray Data's tasks, the train workers), --decode gpu or not.
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for j in jpegs:
            try:
                out.append(decode_jpeg(j, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)  # the CPU path decides (Pillow reads what nvJPEG cannot)
        return out


def decode_windows(jpegs: Sequence[bytes], wins: np.ndarray, decoded: np.ndarray, crop: int,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N, crop, crop, 3] on `device`, bool [N] decoded) for a batch of JPEG bytes and their windows.

    Rows already marked undecodable (`decoded` False) stay zeros; an image the device decoder cannot read
    is rendered on the CPU (vgg_ray.transforms), and one that nothing can read becomes undecodable.

    On a GPU the batch is decoded and sampled on a side stream of this module's, and the caller's stream
    waits for it: the training step queued before goes on while this batch is decoded. That side stream
    is also what makes nvJPEG safe. Its hardware engine (A100, H100) writes its output before the work
    queued on the stream has run, into blocks the caching allocator may have just recycled from tensors
    that queued kernels still read: silent corruption, NaN losses in code that never touched the
    decoder (pytorch/vision#9606, meta-pytorch/torchcodec#1634; our own --decode gpu runs on an H100 met
    it: bench/README.md, "Performance table"). Blocks of the side stream's pool are recycled only from
    its own tensors, whose work is drained before each decode, and from the returned tensors once the
    caller's stream is done with them.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return _decode_windows(jpegs, wins, decoded, crop, device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    caller = torch.cuda.current_stream(index)
    if index not in _side_streams:
        _side_streams[index] = torch.cuda.Stream(index)
    side = _side_streams[index]
    side.synchronize()
    with torch.cuda.stream(side):
        images, decoded = _decode_windows(jpegs, wins, decoded, crop, device)
    caller.wait_stream(side)
    images.record_stream(caller)
    decoded.record_stream(caller)
    return images, decoded


def _decode_windows(jpegs, wins, decoded, crop, device):
    n = len(jpegs)
    out = torch.zeros(n, crop, crop, 3, dtype=torch.uint8, device=device)
    decoded = torch.as_tensor(np.asarray(decoded, dtype=bool)).clone()
    idx = [i for i in range(n) if decoded[i]]
    images = _decode_all([torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in idx], device)
    todo = []
    for i, img in zip(idx, images, strict=True):
        if img is not None:
            todo.append((i, img))
            continue
        try:  # the CPU path decides (Pillow reads what nvJPEG cannot)
            out[i] = torch.as_tensor(render_window(jpegs[i], _window(wins[i]), crop)).to(device)
        except UndecodableImage:
            decoded[i] = False
    rows, chunks = [i for i, _ in todo], []
    for a in range(0, len(todo), CHUNK):
        chunks.append(_sample([img for _, img in todo[a:a + CHUNK]], wins[rows[a:a + CHUNK]], crop))
    if rows and len(rows) == n:
        out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    elif rows:
        out[torch.as_tensor(rows, device=device)] = torch.cat(chunks)
    return out, decoded.to(device)


def _sample(images: list[torch.Tensor], wins: np.ndarray, crop: int) -> torch.Tensor:
    """uint8 [M, crop, crop, 3]: each window sampled from its decoded image (uint8 CHW, full size) as
    transforms.resample_window samples it from the DCT-scaled decode. Only the part of each image its
    window reads is used: reduced by the decoder's factor (a box filter where libjpeg-turbo scales in
    the DCT domain), as float, into one zero-padded batch that a single grid_sample reads."""
    u = np.arange(crop, dtype=np.float64) + 0.5
    parts, xs_all, ys_all = [], [], []
    for img, row in zip(images, wins, strict=True):
        w_s, h_s, x, y, flip = (int(v) for v in row)
        h, w = img.shape[-2:]
        f = dct_factor((w, h), (w_s, h_s))
        sw, sh = -(-w // f), -(-h // f)  # the size the CPU decoder decodes at
        # OpenCV's positions in the decoded image, clamped as BORDER_REPLICATE does
        xs = np.clip((x + u) * (sw / w_s) - 0.5, 0, sw - 1)
        ys = np.clip((y + u) * (sh / h_s) - 0.5, 0, sh - 1)
        x0, y0 = int(xs[0]), int(ys[0])
        x1, y1 = min(int(xs[-1]) + 2, sw), min(int(ys[-1]) + 2, sh)
        part = img[:, y0 * f:min(y1 * f, h), x0 * f:min(x1 * f, w)]
        if f > 1:
            part = F.avg_pool2d(part.float()[None], f, ceil_mode=True)[0]
        parts.append(part)
        xs_all.append((xs - x0)[::-1] if flip else xs - x0)
        ys_all.append(ys - y0)
    hp = max(p.shape[-2] for p in parts)
    wp = max(p.shape[-1] for p in parts)
    device = images[0].device
    batch = torch.zeros(len(parts), 3, hp, wp, dtype=torch.float32, device=device)
    for k, p in enumerate(parts):
        batch[k, :, :p.shape[-2], :p.shape[-1]] = p
    # grid_sample's grids ([M, crop, crop, 2], align_corners=True), expanded on the device from each
    # window's crop x- and y-positions: the host sends M x crop x 2 numbers, not M x crop x crop x 2
    pos = np.stack([np.stack(xs_all) / max(wp - 1, 1), np.stack(ys_all) / max(hp - 1, 1)], axis=1)
    pos = torch.from_numpy((pos * 2 - 1).astype(np.float32)).to(device)
    m = len(parts)
    grid = torch.stack((pos[:, 0, None, :].expand(m, crop, crop), pos[:, 1, :, None].expand(m, crop, crop)), dim=-1)
    sampled = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_batch(batch: dict, crop: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """A --decode gpu batch from Ray Data (numpy columns jpeg, win, decoded, label) as the train step takes
    it: {"image": uint8 [N, crop, crop, 3], "label", "decoded"} on `device`. The labels travel through pinned
    memory: a copy from pageable memory would wait for the step queued before it."""
    device = torch.device(device)
    images, decoded = decode_windows(batch["jpeg"], batch["win"], batch["decoded"], crop, device)
    labels = torch.as_tensor(np.asarray(batch["label"]))
    if device.type == "cuda":
        labels = labels.pin_memory()
    return {"image": images, "label": labels.to(device, non_blocking=True), "decoded": decoded}
