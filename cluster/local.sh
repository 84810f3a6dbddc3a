#!/usr/bin/env bash
# The single-node launcher: `bash cluster/local.sh test` or `bash cluster/local.sh demo`.
#   test: create .venv if missing, install vgg_ray with its test extra, run the whole test suite.
#   demo: the same set-up, then a local Ray head (token auth on, dashboard on 127.0.0.1), the smoke
#         preset trained on the embedded demo data by `ray job submit`, then the ensemble evaluation;
#         the head it started is stopped on the way out.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${VGG_RAY_VENV:-$root/.venv}

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  # A first install brings torch with its CUDA libraries (~7 GB in the venv, more while pip unpacks):
  # say so in one line rather than let pip fail half-way with "No space left on device".
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    local free_kb need_gb=10
    free_kb=$(df -Pk "$venv" | awk 'NR == 2 {print $4}')
    if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
      echo "set-up: installing torch into $venv needs ~$need_gb GB free on its disk; $((free_kb / 1024)) MB free" >&2
      exit 1
    fi
  fi
  # torch/torchvision pinned to the builds on this machine's disk (pip takes them from there); on other
  # machines pip fetches the same releases.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" -e "$root[test]" 2>&1 | grep -v "is ignored: it is neither" || true
  "$venv/bin/python" -c "import vgg_ray, ray, torch" || { echo "set-up failed: see pip's output above" >&2; exit 1; }
}

# Stop the head this script started, by its PID, and forget it: `ray start` recorded its address in
# /tmp/ray/ray_current_cluster, where a later bare ray.init() would find a dead head and wait for minutes.
stop_head() {
  local pid=$1 port=$2 recorded=/tmp/ray/ray_current_cluster
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -f "$recorded" ] && grep -q ":$port\$" "$recorded"; then rm -f "$recorded"; fi
  echo "stopped the local Ray head (pid $pid)"
}

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

demo() {
  export PATH="$venv/bin:$PATH"  # the head's workers and the jobs' drivers run this venv's python
  # Token authentication on (Ray 2.60's default, made explicit): the head and `ray job submit` read the
  # token from ~/.ray/auth_token. `ray start` never makes one (a fresh machine has none); this does, once.
  # The token is a password to the cluster: made under umask 077, and set to 0600 if an earlier run (or an
  # older Ray) left it readable by others.
  export RAY_AUTH_MODE=token
  local token=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  (umask 077 && ray get-auth-token --generate >/dev/null 2>&1) || { echo "could not create $token" >&2; exit 1; }
  if [ -f "$token" ]; then chmod 600 "$token"; fi
  local port dash runs head_pid logdir
  port=$(free_port); dash=$(free_port)
  runs=${VGG_RAY_DEMO_RUNS:-$root/runs}
  logdir=$(mktemp -d /tmp/vgg_ray_demo.XXXXXX)
  # --block keeps the head in the foreground of this background process: stopping that PID stops exactly
  # the head this script started, and nothing else running on the machine. On SIGTERM, Ray 2.60 first
  # drains the node for up to 30 s, for Ray Serve (after the e2e test's jobs it waited all 30 s out):
  # this head serves nothing, so it stops at once.
  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 ray start --head --block --port="$port" --dashboard-host=127.0.0.1 \
    --dashboard-port="$dash" --num-cpus=8 --include-dashboard=true >"$logdir/head.log" 2>&1 &
  head_pid=$!
  # keep the script's own exit status: the head's TERM status is not the demo's
  trap 'rc=$?; stop_head '"$head_pid"' '"$port"'; exit $rc' EXIT
  export RAY_ADDRESS="http://127.0.0.1:$dash"
  for _ in $(seq 120); do
    ray job list >/dev/null 2>&1 && break
    kill -0 "$head_pid" 2>/dev/null || { cat "$logdir/head.log"; echo "the Ray head did not start" >&2; exit 1; }
    sleep 1
  done
  echo "Ray head up; dashboard on $RAY_ADDRESS (127.0.0.1 only)"
  local env='{"working_dir": ".", "excludes": [".venv/", ".git/", "runs/", "results/", ".cache/", ".whl/"]}'
  # The smoke preset (1/16 width, 32-pixel crops) on the demo data, two configurations side by side.
  ray job submit --runtime-env-json "$env" -- python jobs/train.py --arch A,B --preset smoke \
    --data demo --device cpu --workers 2 --storage "$runs" --name demo "$@"
  ray job submit --runtime-env-json "$env" -- python jobs/eval_ensemble.py --data demo \
    --model "A=$runs/demo/A" --model "B=$runs/demo/B" --out "$runs/demo/eval"
  echo
  echo "metrics:  $runs/demo/A/metrics.csv  $runs/demo/B/metrics.csv"
  echo "curves:   $runs/demo/A/curves.png   $runs/demo/B/curves.png"
  echo "results:  $runs/demo/eval/results.md ($runs/demo/eval/results.json, posteriors in $runs/demo/eval/posteriors/)"
}

cmd=${1:-}
shift || true
case "$cmd" in
  test)
    setup
    "$venv/bin/ruff" check vgg_ray jobs tests bench
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  demo)
    setup
    demo "$@"
    ;;
  *)
    echo "usage: bash cluster/local.sh {test|demo} [extra args]" >&2
    exit 2
    ;;
esac
