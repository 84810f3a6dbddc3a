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
  # torch/torchvision pinned to the builds on this machine's disk (pip takes them from there); on other
  # machines pip fetches the same releases.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" -e "$root[test]" 2>&1 | grep -v "is ignored: it is neither" || true
  "$venv/bin/python" -c "import vgg_ray, ray, torch" || { echo "set-up failed: see pip's output above" >&2; exit 1; }
}

cmd=${1:-}
shift || true
case "$cmd" in
  test)
    setup
    "$venv/bin/ruff" check vgg_ray jobs tests
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  demo)
    setup
    exec "$venv/bin/python" "$root/cluster/demo.py" "$@"
    ;;
  *)
    echo "usage: bash cluster/local.sh {test|demo} [extra args]" >&2
    exit 2
    ;;
esac
