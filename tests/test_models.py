"""The model zoo against Table 1 / Table 2 of the paper and against torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vgg_ray.models import (
    ARCHS,
    GAUSSIAN_STD,
    TRANSFER_FROM_A,
    AlexNetLRN,
    build_vgg,
    count_params,
    forward_macs,
    gaussian_std,
    glorot_bound,
    load_torchvision_state_dict,
    to_torchvision_state_dict,
    transfer_init,
)

# Table 2, exact counts for 1000 classes.
PAPER_PARAMS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
                "D": 138_357_544, "E": 143_667_240}
PAPER_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
PAPER_GMACS = {"A": 7.6, "B": 11.3, "D": 15.5, "E": 19.6}
# ImageNet's mean RGB in 0-255 units: §2.1's only preprocessing.
MEAN_RGB = torch.tensor([123.68, 116.78, 103.94]).view(1, 3, 1, 1)
TINY = {"width": 1 / 16, "fc_width": 64, "crop_size": 32, "num_classes": 10}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parameter_counts_and_depth_match_table_2(arch):
    with torch.device("meta"):
        model = build_vgg(arch)
    assert count_params(model) == PAPER_PARAMS[arch]
    assert model.weight_layers() == PAPER_LAYERS[arch]
    if arch in PAPER_GMACS:
        assert round(forward_macs(model) / 1e9, 1) == PAPER_GMACS[arch]


def test_table_1_details():
    with torch.device("meta"):
        lrn = build_vgg("A-LRN")
        c = build_vgg("C")
    norms = [m for m in lrn.features if isinstance(m, AlexNetLRN)]
    assert len(norms) == 1 and lrn.features[2] is norms[0]  # right after conv1_1 and its ReLU
    assert (norms[0].size, norms[0].alpha, norms[0].beta, norms[0].k) == (5, 1e-4, 0.75, 2.0)
    assert not any(isinstance(m, torch.nn.LocalResponseNorm) for m in lrn.modules())
    one_by_one = [name for name in c.layer_index if name.startswith("conv")
                  and c.layer(name).kernel_size == (1, 1)]
    # each after its block's two 3x3 convs, in blocks 3, 4 and 5
    assert one_by_one == ["conv3_3", "conv4_3", "conv5_3"]
    assert [c.layer(n).out_channels for n in one_by_one] == [256, 512, 512]
    assert not any(isinstance(m, AlexNetLRN) for a in "BCDE"
                   for m in build_vgg(a, **TINY).modules())


def test_lrn_is_alexnets_formula_without_dividing_alpha_by_the_window():
    # One pixel, channels a = 10, 20, 30, 40, 50. Windows of 5 centred on each channel, clipped at the ends:
    # sums of squares 100+400+900 = 1400, 3000, 5500, 400+900+1600+2500 = 5400, 900+1600+2500 = 5000.
    # b_0 = 10 / (2 + 1e-4 * 1400)^0.75 = 10 / 2.14^0.75 = 10 / 1.76933 = 5.6518.
    a = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]).view(1, 5, 1, 1)
    sums = torch.tensor([1400.0, 3000.0, 5500.0, 5400.0, 5000.0])
    expected = a.flatten() / (2 + 1e-4 * sums) ** 0.75
    out = AlexNetLRN(size=5, alpha=1e-4, beta=0.75, k=2.0)(a.expand(2, 5, 3, 4))
    assert out[0, 0, 0, 0].item() == pytest.approx(5.6518, abs=1e-4)
    torch.testing.assert_close(out[1, :, 2, 3], expected)
    # torch's LRN divides alpha by the window: 2 + 1e-4 / 5 * 1400 -> 10 / 2.028^0.75 = 5.884, not 5.652.
    torch_lrn = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    assert torch_lrn[0, 0, 0, 0].item() == pytest.approx(5.884, abs=1e-3)


@pytest.mark.parametrize("q, side", [(224, 1), (256, 2), (384, 6), (512, 10)])
def test_score_map_size_at_test_scales(q, side):
    with torch.device("meta"):
        model = build_vgg("A")
        out = model.score_map(torch.empty(1, 3, q, q))
    assert tuple(out.shape) == (1, 1000, side, side)


def test_pools_round_up_so_dense_evaluation_sees_the_whole_image():
    # 341 -> 171 -> 86 -> 43 -> 22 -> 11 with ceil (floor: 170, 85, 42, 21, 10, dropping the last column);
    # fc6's 7x7 then leaves 8 - 6 = 2 by 11 - 6 = 5.
    with torch.device("meta"):
        model = build_vgg("A")
        x = torch.empty(1, 3, 256, 341)
        assert tuple(model.features(x).shape) == (1, 512, 8, 11)
        assert tuple(model.score_map(x).shape) == (1, 1000, 2, 5)
    # conv1_1 at full size, conv2_1 on 128 x 171, ..., fc6 on 2 x 5 positions
    fc6 = 2 * 5 * 4096 * 512 * 49
    assert forward_macs(model, (256, 341)) == sum(
        h * w * cout * cin * 9 for h, w, cin, cout in [(256, 341, 3, 64), (128, 171, 64, 128),
                                                       (64, 86, 128, 256), (64, 86, 256, 256),
                                                       (32, 43, 256, 512), (32, 43, 512, 512),
                                                       (16, 22, 512, 512), (16, 22, 512, 512)]
    ) + fc6 + 2 * 5 * (4096 * 4096 + 4096 * 1000)


def test_tiny_score_map_follows_the_crop_geometry():
    model = build_vgg("D", **TINY).eval()
    assert model.score_map(torch.randn(2, 3, 32, 64)).shape == (2, 10, 1, 2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="smaller than the crop size 32"):
        model(torch.randn(1, 3, 16, 40))


def test_dense_equals_crop_evaluation_at_the_crop_size():
    torch.manual_seed(0)
    model = build_vgg("C", **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        crop = model(x)
        dense = model.score_map(x)
        # the same classifier written as the paper's flatten + FC layers
        feats = model.features(x).flatten(1)
        fc = feats
        for m in model.classifier:
            if isinstance(m, torch.nn.Conv2d):
                fc = fc @ m.weight.flatten(1).T + m.bias
            elif isinstance(m, torch.nn.ReLU):
                fc = torch.relu(fc)
    assert dense.shape == (3, 10, 1, 1)
    torch.testing.assert_close(dense.flatten(1), crop)
    torch.testing.assert_close(fc, crop, rtol=1e-4, atol=1e-5)


def test_init_schemes():
    torch.manual_seed(0)
    g = build_vgg("A", init="gaussian", init_std=0.1, width=1 / 4, fc_width=256, crop_size=32)
    w = g.layer("conv3_1").weight  # 1/4 of the paper's fan-in: 2 x the paper's std keeps its gain
    assert abs(w.std().item() - 0.2) < 0.01 and abs(w.mean().item()) < 0.01
    assert all((m.bias == 0).all() for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    x = build_vgg("A", init="glorot", width=1 / 4, fc_width=256, crop_size=32).layer("conv3_1").weight
    fan_in, fan_out = x.shape[1] * 9, x.shape[0] * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert x.abs().max() <= bound and x.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="init='he'"):
        build_vgg("A", init="he", **TINY)


def _pixels(n: int, side: int, seed: int) -> torch.Tensor:
    """Random 0-255 images minus the mean RGB: what the net sees in training (§2.1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g).float() - MEAN_RGB


def test_default_gaussian_init_gives_a_full_size_a_small_logits():
    # The paper's 'variance 1e-2' (std 0.1) gives logits of std ~2e8 here (measured); std 0.01 trains.
    assert GAUSSIAN_STD == 0.01
    torch.manual_seed(0)
    model = build_vgg("A", init="gaussian").eval()
    with torch.no_grad():
        logits = model(_pixels(1, 224, seed=0))
    assert torch.isfinite(logits).all() and logits.std() < 10


@pytest.mark.parametrize("std, trains", [(GAUSSIAN_STD, True), (0.1, False)])
def test_one_sgd_step_at_the_papers_rate_lowers_the_loss(std, trains):
    # Full width and depth (every layer's fan-in as in A) on 32-pixel crops; §3.1's SGD settings.
    torch.manual_seed(0)
    model = build_vgg("A", init="gaussian", init_std=std, crop_size=32, num_classes=10)
    x, y = _pixels(8, 32, seed=1), torch.tensor([0, 0, 0, 1, 1, 2, 3, 4])
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)

    def loss() -> float:
        model.eval()  # no dropout: the same function before and after the step
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    before = loss()
    model.train()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    after = loss()
    if trains:
        assert before == pytest.approx(2.3026, abs=0.01)  # ln 10: the logits start near zero
        assert after < before
    else:  # std 0.1: the loss starts in the millions and one step ruins the net
        assert before > 1e4 and not after < before


@pytest.mark.parametrize("arch", ["B", "C", "D", "E"])
def test_transfer_from_a_copies_exactly_the_papers_layers(arch):
    torch.manual_seed(0)
    a = build_vgg("A", **TINY)
    fresh = build_vgg(arch, **TINY)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    copied = transfer_init(fresh, a)
    assert tuple(copied) == TRANSFER_FROM_A
    for name in fresh.layer_index:
        same = torch.equal(fresh.layer(name).weight, a.layer(name).weight) if name in a.layer_index else False
        if name in TRANSFER_FROM_A:
            assert same and torch.equal(fresh.layer(name).bias, a.layer(name).bias), name
        else:
            key = fresh.layer_index[name] + ".weight"
            assert torch.equal(fresh.state_dict()[key], before[key]), f"{name} should keep its fresh init"


def test_transfer_errors_name_the_layer():
    a = build_vgg("A", **TINY)
    with pytest.raises(ValueError, match="layer fc8"):
        transfer_init(build_vgg("D", **{**TINY, "num_classes": 5}), a)
    with pytest.raises(ValueError, match="layer conv1_1"):
        transfer_init(build_vgg("D", **{**TINY, "width": 1 / 8}), a)
    with pytest.raises(ValueError, match="from a D net"):
        transfer_init(build_vgg("E", **TINY), build_vgg("D", **TINY))
    same = build_vgg("E", **TINY)
    assert transfer_init(same, build_vgg("E", **TINY)) == list(same.layer_index)


def test_torchvision_vgg16_round_trip_full_width():
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    ours = load_torchvision_state_dict(build_vgg("D"), tv.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)
    back = torchvision.models.vgg16()
    back.load_state_dict(to_torchvision_state_dict(ours))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in tv.state_dict().items())


@pytest.mark.parametrize("arch, tv_name", [("A", "vgg11"), ("B", "vgg13"), ("E", "vgg19")])
def test_torchvision_layouts_on_meta(arch, tv_name):
    with torch.device("meta"):
        tv = getattr(torchvision.models, tv_name)()
        ours = build_vgg(arch)
        load_torchvision_state_dict(ours, tv.state_dict())  # raises on any key or shape mismatch
        tv.load_state_dict(to_torchvision_state_dict(ours))


def test_torchvision_depth_mismatch_is_a_clear_error():
    with torch.device("meta"):
        sd = torchvision.models.vgg19().state_dict()
        with pytest.raises(ValueError, match=r"vgg19 weights \(config E\).*build_vgg\('E'\)"):
            load_torchvision_state_dict(build_vgg("D"), sd)
        with pytest.raises(ValueError, match="batch-norm"):
            load_torchvision_state_dict(build_vgg("D"), torchvision.models.vgg16_bn().state_dict())
        with pytest.raises(ValueError, match="torchvision has no config C"):
            to_torchvision_state_dict(build_vgg("C"))


def test_zoo_summary_command_prints_table_2():
    out = subprocess.run([sys.executable, "-m", "vgg_ray.models"], check=True, capture_output=True,
                         text=True).stdout
    assert "143,667,240" in out and "132,863,336" in out and "19.6" in out


@pytest.mark.parametrize("arch", ["A", "E"])
def test_a_narrow_gaussian_net_keeps_each_layers_gain_at_the_papers(arch):
    # fan-in x std^2 (the factor a layer scales its input's variance by) as in the paper's layer, at any
    # width, FC width and crop size; glorot scales with fan-in by construction.
    torch.manual_seed(0)
    paper = build_vgg(arch, init="gaussian", num_classes=10)
    small = build_vgg(arch, init="gaussian", **TINY)
    assert small.layer_index.keys() == paper.layer_index.keys()
    for name in paper.layer_index:
        gains = []
        for net in (paper, small):
            w = net.layer(name).weight
            gains.append(w[0].numel() * gaussian_std(net, name) ** 2)  # fan-in x std^2
            if w.numel() >= 2000:  # the drawn weights have that std (the tiny conv1_1 is too few to tell)
                assert w.std().item() == pytest.approx(gaussian_std(net, name), rel=0.1), name
        assert gains[1] == pytest.approx(gains[0]), name
    assert gaussian_std(paper, "conv3_1") == GAUSSIAN_STD and gaussian_std(small, "conv3_1") == pytest.approx(0.04)
    assert gaussian_std(small, "conv1_1") == GAUSSIAN_STD  # 3 input channels at every width


def test_glorot_draws_fc6_as_the_fully_connected_layer_it_is():
    # 25,088 -> 4,096 at the paper's size: std sqrt(2 / (25088 + 4096)), not the 7x7 conv's fan-out 4,096 x 49
    with torch.device("meta"):
        paper = build_vgg("D")
    assert glorot_bound(paper, "fc6") == pytest.approx((6 / (25_088 + 4_096)) ** 0.5)
    assert glorot_bound(paper, "conv3_1") == pytest.approx((6 / (128 * 9 + 256 * 9)) ** 0.5)
    torch.manual_seed(0)
    net = build_vgg("A", width=1 / 16, fc_width=256, crop_size=224)  # fc6: 32 x 7 x 7 = 1,568 -> 256
    assert net.layer("fc6").weight.std().item() == pytest.approx((2 / (1_568 + 256)) ** 0.5, rel=0.02)
