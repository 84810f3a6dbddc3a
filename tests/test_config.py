"""vgg_ray/config.py: presets, validation that names the flag, one flag generator for both configs, and
the jobs' --help and --print-config."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgg_ray.config import (
    PRESETS,
    RESUMABLE_FIELDS,
    EvalConfig,
    TrainConfig,
    add_arguments,
    from_args,
    parse_archs,
)

from .jobs import job

ROOT = Path(__file__).resolve().parents[1]


def parse(cls, argv, **fixed):
    p = argparse.ArgumentParser()
    add_arguments(p, cls)
    return from_args(p.parse_args(argv), cls, **fixed)


def test_paper_defaults_and_the_smoke_preset():
    paper = TrainConfig()
    assert (paper.batch_size, paper.lr, paper.momentum, paper.weight_decay, paper.dropout) == (256, 1e-2, 0.9, 5e-4, 0.5)
    assert paper.train_scale == (256, 256) and paper.name == "paper-S256" and paper.val_scale_px == 256
    smoke = TrainConfig.from_preset("smoke", train_scale="256-512")
    assert smoke.crop_size == 32 and smoke.train_scale_px == (37, 73) and smoke.name == "smoke-S256-512"
    assert TrainConfig.from_dict(json.loads(smoke.to_json())) == smoke  # as it travels to Ray workers


def test_flags_override_the_preset_and_keep_its_other_values():
    cfg = parse(TrainConfig, ["--preset", "smoke", "--lr", "0.05", "--workers", "2"], arch="B")
    assert (cfg.arch, cfg.lr, cfg.workers, cfg.crop_size, cfg.per_worker_batch) == ("B", 0.05, (2, 2), 32, 16)
    assert cfg.micro == 16 and parse(TrainConfig, ["--micro-batch", "64"]).micro == 64


def test_decode_auto_uses_the_gpus_only_where_the_cpus_cannot_feed_them():
    auto, gpu, cpu = (parse(TrainConfig, ["--decode", d]) for d in ("auto", "gpu", "cpu"))
    assert auto.decodes_on_device(True, 4) and not auto.decodes_on_device(True, 16)  # 16 cores fed an H100
    assert not auto.decodes_on_device(False, 0) and not auto.decodes_on_device(True, float("inf"))
    assert gpu.decodes_on_device(False, 16) and not cpu.decodes_on_device(True, 1)  # as told


def test_an_elastic_run_keeps_the_global_batch_whatever_its_world_size():
    cfg = parse(TrainConfig, ["--workers", "2-4"])
    assert (cfg.min_workers, cfg.max_workers) == (2, 4)
    for world in (1, 2, 3, 4):  # every step is one update of 256 images, split as evenly as it goes
        shares = [cfg.share(r, world) for r in range(world)]
        assert sum(shares) == 256 and max(shares) - min(shares) <= 1
    assert [cfg.share(r, 3) for r in range(3)] == [86, 85, 85]
    # forward passes never exceed the share at the most workers: fewer workers accumulate
    assert cfg.micro == 64
    # every rank streams n // world images and takes the same number of steps
    assert cfg.steps_per_epoch(1000, 3) == 333 // 86 == 3 and cfg.steps_per_epoch(1024, 4) == 4
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_a_run_resumes_only_with_the_configuration_it_was_started_with():
    saved = TrainConfig.from_preset("smoke").to_dict()
    again = TrainConfig.from_preset("smoke", max_epochs=80, workers="1-4", device="cpu", micro_batch=8)  # how it runs
    assert again.differences(saved) == []
    other = TrainConfig.from_preset("smoke", lr=0.05, train_scale="256-512", name=saved["name"])
    assert other.differences(saved) == ["--train-scale 256 -> 256-512", "--lr 0.00125 -> 0.05"]


@pytest.mark.parametrize("argv,flag", [
    (["--dropout", "2"], "--dropout 2.0: must be in [0, 1)"),
    (["--momentum", "-5"], "--momentum -5.0: must be in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay -1.0: must be >= 0"),
    (["--max-failures", "-2"], "--max-failures -2: must be >= -1 (-1: no limit)"),
    (["--lr", "0"], "--lr 0.0: must be > 0"),
    (["--plateau-threshold", "0.5"], None),  # accepted: an accuracy in [0, 1]
    (["--plateau-threshold", "2"], "--plateau-threshold 2.0: must be in [0, 1]"),
    (["--init-std", "0"], "--init-std 0.0: must be > 0"),
    (["--batch-size", "100", "--workers", "3"], None),  # shares of 34, 33, 33
    (["--batch-size", "2", "--workers", "1-3"], "--batch-size 2 is smaller than --workers 1-3"),
    (["--workers", "4-2"], "--workers 4-2: expected N or MIN-MAX"),
    (["--workers", "0"], "--workers 0: expected N or MIN-MAX"),
    (["--micro-batch", "300"], "--micro-batch 300: must be <= --batch-size 256"),
    (["--train-scale", "200"], "train scale '200'"),
    (["--init", "from:"], "--init from:"),
    (["--crop-size", "50"], "--crop-size 50"),
])
def test_bad_training_flags_name_the_flag(argv, flag):
    if flag is None:
        parse(TrainConfig, argv)
        return
    with pytest.raises(ValueError) as e:
        parse(TrainConfig, argv)
    assert flag in str(e.value)


def test_eval_config_from_flags():
    cfg = parse(EvalConfig, ["--model", "D=runs/x/D", "--model", "E=s3://b/runs/E", "--out", "ev",
                             "--test-scales", "512,256", "--methods", "dense"])
    assert cfg.models == {"D": "runs/x/D", "E": "s3://b/runs/E"} and cfg.test_scales == (256, 512)
    assert parse(EvalConfig, ["--model", "A=a", "--out", "o", "--scales", "384"]).test_scales == (384,)  # old flag
    assert cfg.methods == ("dense",) and cfg.max_batch == 250
    assert parse(EvalConfig, ["--model", "A=a", "--out", "o"]).methods == ("dense", "multi-crop")
    for argv, msg in [(["--out", "o"], "--model is required"), (["--model", "A=a"], "--out is required"),
                      (["--model", "A", "--out", "o"], "expected NAME=SOURCE"),
                      (["--model", "A=a", "--model", "A=b", "--out", "o"], "each NAME may be given once"),
                      (["--model", "a/b=c", "--out", "o"], "a name is letters"),
                      (["--model", "A=a", "--out", "o", "--methods", "ten-crop"], "'ten-crop' is not one of"),
                      (["--model", "A=a", "--out", "o", "--test-scales", "100"], "Q must be >= 224"),
                      (["--model", "A=a", "--out", "o", "--limit", "-1"], "--limit -1: must be >= 0"),
                      (["--model", "A=a", "--out", "o", "--max-batch", "0"], "--max-batch 0: must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            parse(EvalConfig, argv)
    with pytest.raises(ValueError, match="--split 'test': expected val or train"):  # a config not from flags
        EvalConfig(models={"A": "a"}, split="test")


def test_help_shows_each_default_after_the_preset():
    p = argparse.ArgumentParser()
    add_arguments(p, TrainConfig)
    text = " ".join(p.format_help().split())
    assert "(paper preset 0.01; small preset 0.0025; smoke preset 0.00125)" in text  # --lr: 1e-2 x batch/256
    assert "(default 224; small preset 128; smoke preset 32)" in text  # --crop-size
    assert "(default 2; small preset 3; smoke preset 4)" in text and "{paper,small,smoke}" in text
    assert all(f"--{k.replace('_', '-')}" in text for v in PRESETS.values() for k in v)


def test_an_eval_config_saved_before_the_rename_of_scales_still_loads():
    saved = EvalConfig(models={"D": "runs/D"}, test_scales=(256, 384)).to_dict()
    saved["scales"] = saved.pop("test_scales")
    assert EvalConfig.from_dict(saved).test_scales == (256, 384)


def test_help_lists_the_flags_by_section_with_what_each_accepts():
    text = subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    titles = ["preset:", "network (Table 1) and its initialisation (§3.1):", "data:", "training recipe (§3.1):",
              "cluster and resources:", "output:"]
    at = [text.index(f"\n{t}\n") for t in titles]
    assert at == sorted(at), "sections out of order"

    def section(flag: str) -> str:
        where = re.search(rf"^  {flag}\b", text, re.MULTILINE).start()  # where it is listed, not named in a help
        return titles[sum(a < where for a in at) - 1]

    assert section("--width") == section("--init-std") == titles[1]
    assert section("--train-scale") == section("--decode") == "data:"
    assert section("--momentum") == section("--plateau-patience") == "training recipe (§3.1):"
    assert section("--workers") == section("--max-failures") == "cluster and resources:"
    assert section("--storage") == section("--name") == "output:"
    flat = " ".join(text.split())
    assert "SGD momentum; must be in [0, 1) (default 0.9)" in flat
    assert "must be >= -1 (-1: no limit) (default 3)" in flat  # --max-failures
    p = argparse.ArgumentParser()
    add_arguments(p, EvalConfig)
    flat = " ".join(p.format_help().split())
    assert "test protocol (§3.2):" in flat and "--test-scales Q1,Q2,..., --scales Q1,Q2,..." in flat
    assert "per forward pass; must be >= 1 (default 250)" in flat  # --max-batch


def test_the_fields_a_resumed_run_may_change_are_how_it_runs():
    assert set(RESUMABLE_FIELDS) == {"max_epochs", "workers", "micro_batch", "cpus_per_worker", "resize_check_s",
                                     "device", "decode", "storage", "shared_fs", "max_failures", "grad_allreduce"}


def test_archs_are_one_comma_list_for_both_jobs(capsys):
    assert parse_archs("all") == ["A", "A-LRN", "B", "C", "D", "E"] and parse_archs(" D, E") == ["D", "E"]
    for bad in ("F", "A,A", "", ","):
        with pytest.raises(ValueError, match=r"^--arch .*: expected A, A-LRN, B, C, D, E, a comma list .* or all$"):
            parse_archs(bad)
    for flag in ("--arch", "--archs"):  # reproduce.py: --arch, and --archs as before; refused before Ray starts
        with pytest.raises(SystemExit):
            job("reproduce").main([flag, "D,F"])
        assert "error: --arch 'D,F': expected A, A-LRN," in capsys.readouterr().err


@pytest.mark.parametrize("job,argv", [
    ("train.py", ["--arch", "A,B", "--preset", "smoke", "--print-config"]),
    ("eval_ensemble.py", ["--model", "A=runs/A", "--out", "ev", "--print-config"]),
])
def test_print_config_resolves_without_starting_ray(job, argv):
    code = (f"import runpy, sys; sys.argv = ['{job}', *{argv!r}]\n"
            f"runpy.run_path('jobs/{job}', run_name='__main__')\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"arch": "B"' in out.stdout if job == "train.py" else '"models": {' in out.stdout


@pytest.mark.parametrize("job,argv,msg", [
    ("train.py", ["--dropout", "2"], "--dropout 2.0: must be in [0, 1)"),
    ("train.py", ["--arch", "F"], "--arch 'F'"),
    ("eval_ensemble.py", ["--model", "A=x", "--out", "o", "--test-scales", "100"], "Q must be >= 224"),
    ("train.py", ["--data", "/nonexistent/shards"], "--data '/nonexistent/shards'"),
    ("train.py", ["--data", "demo", "--preset", "smoke", "--init", "from:/nonexistent/run"],
     "--init from:/nonexistent/run: /nonexistent/run: no such checkpoint"),
    ("eval_ensemble.py", ["--model", "A=/nonexistent/A", "--out", "o"], "/nonexistent/A: no such checkpoint"),
])
def test_jobs_refuse_bad_flags_in_one_line_with_status_2(job, argv, msg):
    out = subprocess.run([sys.executable, f"jobs/{job}", *argv], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Files a user may pass by mistake: text, a tensor, and a state dict of a net that is not VGG."""
    d = tmp_path_factory.mktemp("not_checkpoints")
    files = {"text": d / "notes.pt", "tensor": d / "tensor.pt", "resnet": d / "resnet18.pth"}
    files["text"].write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), files["tensor"])
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, files["resnet"])
    return files


def run_job(job: str, *argv) -> subprocess.CompletedProcess:
    # no Ray here: each problem below is found before the job would start it
    code = (f"import runpy, sys; sys.argv = ['{job}', *{list(map(str, argv))!r}]\n"
            "try:\n"
            f"    runpy.run_path('jobs/{job}', run_name='__main__')\n"
            "finally:\n"
            "    assert 'ray' not in sys.modules, 'ray was imported'\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_a_file_that_is_no_vgg_checkpoint_is_refused_before_ray_starts(not_checkpoints, demo_shards, tmp_path):
    for kind, path in not_checkpoints.items():
        out = run_job("train.py", "--arch", "B", "--preset", "smoke", "--data", demo_shards, "--init",
                      f"from:{path}", "--storage", tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (kind, out.stderr[-2000:])
        assert f"error: --init from:{path}: {path}: not a" in out.stderr, (kind, out.stderr)
        out = run_job("eval_ensemble.py", "--model", f"A={path}", "--data", demo_shards, "--out", tmp_path / "ev")
        assert out.returncode == 2 and "Traceback" not in out.stderr, (kind, out.stderr[-2000:])
        assert f"error: --model A={path}: {path}: not a" in out.stderr, (kind, out.stderr)
    assert "ray was imported" not in out.stderr and not (tmp_path / "ev").exists()


def test_every_problem_is_reported_at_once_one_line_each(not_checkpoints, tmp_path):
    out = run_job("train.py", "--dropout", "2", "--crop-size", "33", "--workers", "0")
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("train.py: error: ")]
    assert out.returncode == 2 and len(errors) == 3, out.stderr
    assert any("--dropout 2.0" in e for e in errors) and any("--crop-size 33" in e for e in errors)
    out = run_job("eval_ensemble.py", "--model", f"A={not_checkpoints['text']}", "--model",
                  f"B={not_checkpoints['resnet']}", "--data", "/nonexistent/shards", "--out", tmp_path / "ev")
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("eval_ensemble.py: error: ")]
    assert out.returncode == 2 and len(errors) == 3 and "Traceback" not in out.stderr, out.stderr
    assert "/nonexistent/shards" in errors[0] and "--model A=" in errors[1] and "--model B=" in errors[2]


def test_fresh_deletes_nothing_while_a_problem_remains(demo_shards, tmp_path):
    run = tmp_path / "x" / "A"
    run.mkdir(parents=True)
    (run / "config.json").write_text(TrainConfig.from_preset("smoke", name="x", data=demo_shards).to_json())
    out = run_job("train.py", "--preset", "smoke", "--data", demo_shards, "--storage", tmp_path, "--name", "x",
                  "--fresh", "--init", "from:/nonexistent/run")
    assert out.returncode == 2 and "--init from:/nonexistent/run" in out.stderr
    assert (run / "config.json").is_file()  # the run is still there


def test_a_run_resumed_with_another_configuration_is_refused_before_ray_starts(demo_shards, tmp_path):
    run = tmp_path / "x" / "A"
    run.mkdir(parents=True)
    (run / "config.json").write_text(TrainConfig.from_preset("smoke", name="x", data=demo_shards).to_json())
    argv = ["--preset", "smoke", "--data", demo_shards, "--storage", str(tmp_path), "--name", "x"]
    out = subprocess.run([sys.executable, "jobs/train.py", *argv, "--lr", "0.05", "--workers", "1-2"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--name x: run A was started with another configuration (--lr 0.00125 -> 0.05)" in out.stderr
    assert "--fresh" in out.stderr and (run / "config.json").is_file()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_every_arch_with_the_rate_scaled_to_its_batch(preset):
    for arch in ("A", "A-LRN", "B", "C", "D", "E"):
        cfg = TrainConfig.from_preset(preset, arch=arch)
        assert cfg.lr == pytest.approx(1e-2 * cfg.batch_size / 256)
        assert cfg.train_scale_px[0] >= cfg.crop_size and cfg.val_scale_px >= cfg.crop_size
    assert TrainConfig.from_preset(preset, batch_size=128).lr == pytest.approx(5e-3)  # --batch-size alone
    assert TrainConfig.from_preset(preset, batch_size=128, lr=0.02).lr == 0.02  # --lr wins
