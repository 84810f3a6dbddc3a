"""vgg_ray/checkpoints.py: atomic writes, and every source a user can name resolving to the right net."""

from __future__ import annotations

import pickle

import pytest
import torch

from vgg_ray.checkpoints import (
    TORCHVISION_MEAN,
    init_from_source,
    load_model,
    model_record,
    resolve_source,
    save_atomic,
    source_init_scheme,
)
from vgg_ray.config import TrainConfig
from vgg_ray.engine import build_model
from vgg_ray.models import build_vgg, to_torchvision_state_dict


@pytest.fixture
def run_dir(tmp_path):
    """An experiment directory as jobs/train.py leaves it: <exp>/<arch>/best.pt for A and B."""
    cfg = TrainConfig.from_preset("smoke")
    for arch in ("A", "B"):
        net = build_model(cfg.replace(arch=arch), 10)
        save_atomic(model_record(net, cfg.replace(arch=arch).to_dict(), [1.0, 2.0, 3.0], epoch=3),
                    tmp_path / "exp" / arch / "best.pt")
    return tmp_path / "exp"


def test_sources_resolve_to_files_run_dirs_and_experiment_dirs(run_dir):
    assert resolve_source(run_dir / "A" / "best.pt") == str(run_dir / "A" / "best.pt")
    assert resolve_source(run_dir / "B") == str(run_dir / "B" / "best.pt")
    assert resolve_source(run_dir, arch="B") == str(run_dir / "B" / "best.pt")  # §3.1: each arch its own net
    with pytest.raises(FileNotFoundError, match="it holds runs of A, B"):
        resolve_source(run_dir)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_source(run_dir / "missing")


def test_load_model_rebuilds_the_saved_net(run_dir):
    model, info = load_model(run_dir, arch="B")
    assert model.arch == "B" and model.crop_size == 32 and info["epoch"] == 3 and info["mean_rgb"] == [1, 2, 3]
    saved = torch.load(run_dir / "B" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_torchvision_pth_and_unreadable_files(tmp_path):
    torch.save(to_torchvision_state_dict(build_vgg("A", num_classes=5)), tmp_path / "vgg11.pth")
    model, info = load_model(tmp_path / "vgg11.pth")
    assert model.arch == "A" and info["source"] == "torchvision" and info["mean_rgb"] == TORCHVISION_MEAN
    with pytest.raises(ValueError, match="holds config A weights, but D was asked for"):
        load_model(tmp_path / "vgg11.pth", arch="D")
    (tmp_path / "half.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="half.pt: not a checkpoint torch.load can read"):
        load_model(tmp_path / "half.pt")


def test_save_atomic_never_leaves_half_a_file(tmp_path):
    save_atomic({"x": torch.ones(2)}, tmp_path / "a.pt")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_atomic({"x": lambda: 0}, tmp_path / "a.pt")  # cannot be pickled: the old file stays
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_from_a_run_draws_the_layers_it_does_not_copy_with_as_scheme(tmp_path):
    # §3.1: A trained from a gaussian init; D takes A's first four convs and FC layers, "the rest were
    # random" as A's were. std 0.05 is neither the default nor what glorot gives conv4_3 here (0.029);
    # at 1/4 width every layer after conv1_1 has 1/4 of the paper's fan-in, so draws 2 x 0.05.
    cfg = TrainConfig.from_preset("smoke", width=1 / 4, init="gaussian", init_std=0.05)
    torch.manual_seed(0)
    a = build_model(cfg, 10)
    save_atomic(model_record(a, cfg.to_dict(), [0.0, 0.0, 0.0]), tmp_path / "A" / "best.pt")
    d = build_model(cfg.replace(arch="D", init=f"from:{tmp_path / 'A'}"), 10)
    done = init_from_source(d, tmp_path / "A")
    assert done["copied"] == ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
    assert done["reinitialised"] == ["conv1_2", "conv2_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3",
                                     "conv5_1", "conv5_2", "conv5_3"]
    assert (done["scheme"], done["std"]) == ("gaussian", 0.05)
    assert torch.equal(d.layer("fc6").weight, a.layer("fc6").weight)
    w = d.layer("conv4_3").weight  # 128 x 128 x 3 x 3 weights
    assert abs(w.std().item() - 0.1) < 0.004 and (d.layer("conv4_3").bias == 0).all()

    # A at S=384 from A at S=256 copies everything; a B from it still gets the first A's scheme.
    a384_cfg = cfg.replace(init=f"from:{tmp_path / 'A'}", train_scale=(384, 384))
    save_atomic(model_record(a, a384_cfg.to_dict(), [0.0, 0.0, 0.0]), tmp_path / "A384" / "best.pt")
    assert init_from_source(build_model(cfg, 10), tmp_path / "A384")["reinitialised"] == []
    b = build_model(cfg.replace(arch="B"), 10)
    assert init_from_source(b, tmp_path / "A384")["scheme"] == "gaussian"
    assert abs(b.layer("conv1_2").weight.std().item() - 0.1) < 0.01

    # The chain broken: say which source is missing rather than guess a scheme.
    (tmp_path / "A" / "best.pt").unlink()
    with pytest.raises(ValueError, match="initialised from .*/A, which is needed"):
        source_init_scheme(load_model(tmp_path / "A384")[1])
