"""vgg_ray/engine.py: the one training step and the validation counts, against plain PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vgg_ray.config import TrainConfig
from vgg_ray.engine import TrainStep, build_model, build_optimizer, validation_counts

STATS = {"mean_rgb": [120.0, 110.0, 100.0], "eigval": [0.2 * 255**2, 0.02 * 255**2, 0.005 * 255**2],
         "eigvec": torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0].tolist()}
CPU = torch.device("cpu")


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(TrainConfig.from_preset("smoke", dropout=0.0), 10)


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)


def test_one_step_is_plain_sgd_on_the_mean_subtracted_batch():
    x, y = batch()
    ours, ref = tiny(), tiny()
    loss = TrainStep(ours, sgd(ours), STATS, CPU, micro=8, colour_shift_std=0.0)(x, y)
    opt = sgd(ref)
    inputs = x.permute(0, 3, 1, 2).float() - torch.tensor(STATS["mean_rgb"]).view(1, 3, 1, 1)
    ref_loss = F.cross_entropy(ref(inputs), y)
    ref_loss.backward()
    opt.step()
    assert loss.item() == pytest.approx(ref_loss.item() * 8, rel=1e-5)  # the summed loss of the batch
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batches_accumulate_to_the_same_update():
    x, y = batch()
    whole, parts = tiny(), tiny()
    TrainStep(whole, sgd(whole), STATS, CPU, micro=8, colour_shift_std=0.0)(x, y)
    TrainStep(parts, sgd(parts), STATS, CPU, micro=2, colour_shift_std=0.0)(x, y)
    for a, b in zip(whole.parameters(), parts.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unequal_shares_average_to_the_whole_batch_update():
    # An elastic run of 3 workers splits a batch of 10 as 4, 3, 3; DDP averages the three ranks' gradients.
    # Each rank weighs its loss by its share x world / batch, so the average is the whole batch's gradient.
    x, y = batch(10)
    whole = tiny()
    TrainStep(whole, torch.optim.SGD(whole.parameters(), lr=1.0), STATS, CPU, micro=10, colour_shift_std=0.0)(x, y)
    start, grads = tiny(), []
    for xs, ys in zip(x.split([4, 3, 3]), y.split([4, 3, 3]), strict=True):
        rank = copy.deepcopy(start)
        TrainStep(rank, torch.optim.SGD(rank.parameters(), lr=1.0), STATS, CPU, micro=2, colour_shift_std=0.0,
                  share_fraction=len(xs) * 3 / 10)(xs, ys)
        grads.append([p0 - p1 for p0, p1 in zip(start.parameters(), rank.parameters(), strict=True)])
    for p0, p1, *g in zip(start.parameters(), whole.parameters(), *grads, strict=True):
        torch.testing.assert_close(p0 - sum(g) / 3, p1, rtol=1e-4, atol=1e-6)


def test_undecodable_rows_count_for_nothing():
    x, y = batch()
    decoded = torch.tensor([True, True, False, True, True, True, False, True])
    masked, clean = tiny(), tiny()
    zeroed = x.clone()
    zeroed[~decoded] = 0  # what the pipeline delivers for an undecodable image
    loss = TrainStep(masked, sgd(masked), STATS, CPU, micro=4, colour_shift_std=0.0)(zeroed, y, decoded)
    ref = TrainStep(clean, sgd(clean), STATS, CPU, micro=6, colour_shift_std=0.0)(x[decoded], y[decoded])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(masked.parameters(), clean.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_colour_shift_is_drawn_per_image_and_reproducible_from_the_seed():
    x, y = batch()
    a, b, c = tiny(), tiny(), tiny()
    la = TrainStep(a, sgd(a), STATS, CPU, micro=8, seed=3)(x, y)
    lb = TrainStep(b, sgd(b), STATS, CPU, micro=8, seed=3)(x, y)
    lc = TrainStep(c, sgd(c), STATS, CPU, micro=8, seed=4)(x, y)
    assert la.item() == lb.item() != lc.item()


def _masks(rank: int, epochs: list[int], seed: int = 0) -> list[torch.Tensor]:
    """fc7's dropout masks a rank draws on the same batch in each of `epochs`, as the train loop starts
    them (start_epoch); the same start weights on every rank (models built from the run's seed)."""
    torch.manual_seed(seed)
    model = build_model(TrainConfig.from_preset("smoke"), 10)
    seen = []
    model.classifier[5].register_forward_hook(lambda m, i, o: seen.append((o == 0) & (i[0] != 0)))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), STATS, CPU, micro=8, seed=seed, rank=rank)
    out = []
    for e in epochs:
        step.start_epoch(e)
        step(*batch())
        out.append(seen[-1])
    return out


def test_each_rank_draws_its_own_dropout_masks_and_a_restart_redraws_the_same():
    r0, r1 = _masks(0, [0, 1, 2]), _masks(1, [0])
    assert r0[0].any()  # dropout 0.5 on fc7 zeroes some of its non-zero inputs
    assert not torch.equal(r0[0], r1[0])  # ranks differ: 8 ranks x 32 images give 256 masks, as one GPU
    assert not torch.equal(r0[1], r0[2])  # and so do epochs
    (restarted,) = _masks(0, [2])  # a worker restarted at epoch 2 draws what the first one drew there
    assert torch.equal(restarted, r0[2])


def test_validation_counts_by_hand():
    model = tiny().eval()
    x, y = batch(6)
    mean = torch.tensor(STATS["mean_rgb"])
    with torch.no_grad():
        logits = model(x.permute(0, 3, 1, 2).float() - mean.view(1, 3, 1, 1))
    top5 = logits.topk(5, dim=1).indices
    y = top5[:, 0].clone()
    y[1] = top5[1, 3]  # top-5 only
    y[2] = logits[2].argmin()  # neither
    decoded = torch.tensor([True, True, True, True, True, False])
    counts = validation_counts(model, x, y, mean, decoded)
    assert counts.tolist() == [3.0, 4.0, 5.0] and counts.dtype == torch.float64  # row 5 left out
    assert validation_counts(copy.deepcopy(model), x, y, mean).tolist() == [4.0, 5.0, 6.0]


def test_bias_decay_zero_leaves_biases_undecayed():
    cfg = TrainConfig.from_preset("smoke", bias_decay=0.0, lr=1.0, momentum=0.0)
    model = tiny()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no loss: only weight decay moves the parameters
        with torch.no_grad():
            p.fill_(1.0)
    build_optimizer(model, cfg).step()
    fc8 = model.classifier[6]
    assert (fc8.bias == 1.0).all() and torch.allclose(fc8.weight, torch.full_like(fc8.weight, 1 - 5e-4))
    one_group = build_optimizer(model, TrainConfig.from_preset("smoke"))  # the default: biases as weights
    assert len(one_group.param_groups) == 1 and one_group.param_groups[0]["weight_decay"] == 5e-4
