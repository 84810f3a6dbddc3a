"""vgg_ray/export.py: a trained net as torchvision weights, for torchvision's preprocessing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from vgg_ray.checkpoints import model_record, save_atomic
from vgg_ray.config import TrainConfig
from vgg_ray.engine import build_model
from vgg_ray.export import main, torchvision_export

TV_MEAN, TV_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
IMAGENET_MEAN_RGB = [123.68, 116.78, 103.94]  # the training set's mean, 0-255: what a checkpoint stores


@pytest.fixture(scope="module")
def trained_a():
    """A full-size A (random but seeded weights, 10 classes) and four 224x224 uint8 images."""
    torch.manual_seed(0)
    model = build_model(TrainConfig.from_preset("paper", arch="A"), 10).eval()
    g = torch.Generator().manual_seed(1)
    # smooth-ish images: a coarse random grid upsampled, so conv1_1 sees structure, not only noise
    coarse = torch.randint(0, 256, (4, 3, 14, 14), generator=g).float()
    pixels = torch.nn.functional.interpolate(coarse, size=224, mode="bilinear").round().clamp(0, 255)
    return model, pixels


def _torchvision_net(state: dict) -> torch.nn.Module:
    with torch.device("meta"):  # skip torchvision's own random init; load_state_dict is still strict
        tv = torchvision.models.vgg11(num_classes=10)
    tv.load_state_dict(state, assign=True)
    return tv.eval()


def _both(model, pixels, mean_rgb):
    tv = _torchvision_net(torchvision_export(model, {"mean_rgb": mean_rgb, "std_rgb": None}))
    with torch.no_grad():
        ours = model(pixels - torch.tensor(mean_rgb).view(1, 3, 1, 1))  # §2.1: 0-255 minus the mean
        theirs = tv((pixels / 255 - TV_MEAN.view(1, 3, 1, 1)) / TV_STD.view(1, 3, 1, 1))  # torchvision's
    return ours, theirs


def test_the_fold_is_exact_when_the_padding_means_the_same_pixel(trained_a):
    # With mean_rgb = 255 * torchvision's mean, a padded zero is the same pixel to both nets: no border
    # effect, so the logits agree to float rounding everywhere.
    model, pixels = trained_a
    ours, theirs = _both(model, pixels, (255 * TV_MEAN).tolist())
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-3 * ours.abs().max().item())


def test_exported_net_under_torchvisions_preprocessing_predicts_as_ours(trained_a):
    model, pixels = trained_a
    ours, theirs = _both(model, pixels, IMAGENET_MEAN_RGB)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    # only the border differs (ImageNet's mean is within 0.5 of 255 * torchvision's): the logits move little
    assert (ours - theirs).abs().max() < 0.05 * ours.std()


def test_command_writes_what_torchvision_loads(tmp_path, trained_a, capsys):
    model, _ = trained_a
    cfg = TrainConfig.from_preset("paper", arch="A")
    save_atomic(model_record(model, cfg.to_dict(), IMAGENET_MEAN_RGB, epoch=73), tmp_path / "run" / "best.pt")
    main([str(tmp_path / "run"), str(tmp_path / "a.pth")])
    assert "torchvision.models.vgg11(num_classes=10)" in capsys.readouterr().out
    state = torch.load(tmp_path / "a.pth", weights_only=True)
    with torch.device("meta"):
        torchvision.models.vgg11(num_classes=10).load_state_dict(state, assign=True)  # strict: keys, shapes
    assert torch.equal(state["classifier.0.weight"], model.layer("fc6").weight.flatten(1))
    # conv1_1 took the input convention: scaled by 255 * std per input channel
    torch.testing.assert_close(state["features.0.weight"][:, 1], model.layer("conv1_1").weight[:, 1] * 255 * 0.224)


def test_what_torchvision_cannot_hold_is_a_one_line_error(tmp_path):
    smoke = TrainConfig.from_preset("smoke")
    for arch in ("C", "A-LRN", "B"):
        save_atomic(model_record(build_model(smoke.replace(arch=arch), 10), smoke.replace(arch=arch).to_dict(),
                                 IMAGENET_MEAN_RGB), tmp_path / arch / "best.pt")
    for arch, msg in (("C", "config C has no torchvision counterpart"),
                      ("A-LRN", "config A-LRN has no torchvision counterpart"),
                      ("B", "torchvision's vgg13 has the paper's widths.*this net has crop 32")):
        with pytest.raises(SystemExit, match=f"^vgg_ray.export: {msg}"):
            main([str(tmp_path / arch), str(tmp_path / "out.pth")])
    done = subprocess.run([sys.executable, "-m", "vgg_ray.export", str(tmp_path / "missing"),
                           str(tmp_path / "out.pth")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("vgg_ray.export: ") and "no such checkpoint file or run directory" in done.stderr
    assert not (tmp_path / "out.pth").exists()
