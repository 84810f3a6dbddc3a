"""The jobs as a user submits them: a real Ray head on 127.0.0.1 with token authentication, `ray job submit`
of jobs/train.py (stopped midway and resubmitted: it resumes) and jobs/eval_ensemble.py; and
jobs/reproduce.py's whole chain with the smoke preset."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vgg_ray.metrics import read_metrics_csv

from ..jobs import job

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNTIME_ENV = json.dumps({"working_dir": str(ROOT),
                          "excludes": [".venv/", ".git/", "runs/", "results/", ".cache/", ".whl/"]})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head --block` as a child process: stopping its PID stops exactly this head."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # as local.sh starts its head
    dash = _port()
    # a fresh machine has no ~/.ray/auth_token, and `ray start` with token auth makes none
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "w") as f:
        gcs = _port()
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=8",
                                 "--include-dashboard=true"], stdout=f, stderr=subprocess.STDOUT, env=head_env,
                                start_new_session=True)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    recorded = Path("/tmp/ray/ray_current_cluster")
    try:
        # `ray job list` retries its connection for a while: the head is up once it answers
        for _ in range(60):
            if proc.poll() is not None:
                pytest.fail(f"the Ray head exited: {log.read_text()[-2000:]}")
            if subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True,
                              timeout=60).returncode == 0:
                break
        else:
            pytest.fail("the Ray head's job server never answered")
        yield env
    finally:
        # SIGTERM to `ray start` alone, which stops the processes it started (with the drain off, see
        # local.sh: at once); then anything of its group still alive
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the head's group is still alive
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # `ray start` recorded this head as the machine's current cluster: forget it now it is gone
        if recorded.is_file() and recorded.read_text().strip().endswith(f":{gcs}"):
            recorded.unlink()


def ray_job(env, *args, **kw):
    return subprocess.run([str(BIN / "ray"), "job", *args], env=env, capture_output=True, text=True, **kw)


def submit(env, *cmd, wait=True):
    args = ["submit", "--runtime-env-json", RUNTIME_ENV]
    if not wait:
        args.append("--no-wait")
    return ray_job(env, *args, "--", "python", *cmd, timeout=900)


def succeeded(done: subprocess.CompletedProcess) -> bool:
    return re.search(r"Job '?raysubmit_\w+'? succeeded", done.stdout + done.stderr) is not None


def test_token_is_required(head):
    env = {**head, "RAY_AUTH_MODE": "disabled"}
    out = ray_job(env, "list", timeout=120)
    assert out.returncode != 0 and re.search(r"401|[Uu]nauthori[sz]ed|token", out.stdout + out.stderr)


def test_train_stopped_midway_resumes_then_eval(head, demo_shards, tmp_path):
    train = ["jobs/train.py", "--arch", "A", "--preset", "smoke", "--data", demo_shards, "--device", "cpu",
             "--workers", "2", "--max-epochs", "3", "--storage", str(tmp_path), "--name", "e2e"]
    first = submit(head, *train, wait=False)
    assert first.returncode == 0, first.stderr
    job_id = re.search(r"raysubmit_\w+", first.stdout + first.stderr).group(0)
    # follow the job's log until the first epoch is reported (its checkpoint is then written), then stop it
    follow = subprocess.Popen([str(BIN / "ray"), "job", "logs", "--follow", job_id], env=head,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in follow.stdout:
        seen.append(line)
        if "[A] epoch 0:" in line:
            break
    follow.kill()
    follow.wait()
    assert any("[A] epoch 0:" in ln for ln in seen), "".join(seen[-40:])
    assert any("[A] epoch 0" in ln and "img/s" in ln for ln in seen), "no progress line in the job's log"
    # the checkpoint is saved once that line is out; stop once Ray Train has registered it too
    snapshot = tmp_path / "e2e" / "A" / "checkpoint_manager_snapshot.json"
    for _ in range(600):
        if snapshot.is_file() and "checkpoint_epoch000" in snapshot.read_text():
            break
        follow_up = subprocess.run([str(BIN / "ray"), "job", "status", job_id], env=head, capture_output=True,
                                   text=True, timeout=60)  # also the pause between two looks
        assert "FAILED" not in follow_up.stdout, follow_up.stdout
    else:
        pytest.fail("Ray Train never registered epoch 0's checkpoint")
    assert ray_job(head, "stop", job_id, timeout=300).returncode == 0

    again = submit(head, *train)
    assert again.returncode == 0 and succeeded(again), again.stdout[-3000:]
    rows = read_metrics_csv(tmp_path / "e2e" / "A" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["started_at_epoch"] >= 1  # resumed from a checkpoint, not from scratch
    # The job's log has each line a worker prints once, and each epoch's progress bar ends with its
    # epoch: none is drawn again once its epoch has reported.
    log = again.stdout
    summaries = re.findall(r"\[A\] epoch (\d+): lr", log)
    assert summaries and len(summaries) == len(set(summaries)), summaries
    for e in summaries:
        assert not re.search(rf"\[A\] epoch {e}: +\d+%\|", log[log.index(f"[A] epoch {e}: lr"):]), e
    assert "MapBatches(" not in log  # nor Ray Data's own bars and plans, every epoch from every worker

    out = tmp_path / "eval"
    ev = submit(head, "jobs/eval_ensemble.py", "--model", f"A={tmp_path / 'e2e' / 'A'}", "--model",
                f"A2={tmp_path / 'e2e' / 'A' / 'checkpoint_epoch001' / 'model.pt'}", "--data", demo_shards,
                "--methods", "dense", "--out", str(out))
    assert ev.returncode == 0 and succeeded(ev), ev.stdout[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert any(sorted(r["models"]) == ["A", "A2"] for r in rows)


def test_reproduce_chain_smoke(ray_local, demo_shards, tmp_path):
    mod = job("reproduce")
    argv = ["--arch", "D", "--preset", "smoke", "--data", demo_shards, "--device", "cpu", "--workers", "1",
            "--max-epochs", "1", "--storage", str(tmp_path), "--name", "chain", "--limit", "20"]
    summary = mod.main(argv)
    assert [s.get("skipped") for s in summary] == [False] * 7 + [None]  # 7 stages, then the findings
    assert summary[-1]["stage"] == "the paper's findings"
    exp = tmp_path / "chain"
    for run in ("S256/A", "S256/D", "S384/D", "S256-512/D"):
        assert (exp / run / "done.json").exists() and (exp / run / "best.pt").exists(), run
    cfg = json.loads((exp / "S384" / "D" / "config.json").read_text())
    assert cfg["init"].endswith("S256/D") and cfg["lr"] == pytest.approx(1.25e-4)  # a tenth of A's 1.25e-3
    final = json.loads((exp / "eval" / "stage6" / "results.json").read_text())
    assert {r["method"] for r in final} >= {"dense", "multi-crop", "multi-crop+dense"}
    # the findings across every evaluation: D against A, the S=384 and jittered D against S=256, Q sets
    findings = json.loads((exp / "eval" / "findings.json").read_text())
    assert {"deeper nets err less", "scale jittering helps", "several test scales help",
            "multi-crop & dense beats either alone"} <= {f["finding"] for f in findings}
    assert all(f["compared"].count("multi-crop") >= 1 for f in findings if f["finding"] == "deeper nets err less")
    assert "| finding |" in (exp / "eval" / "findings.md").read_text()
    # a resubmission skips every finished stage
    assert all(s["skipped"] for s in mod.main(argv)[:-1])
