#!/usr/bin/env bash
# The GPU figures, stage by stage, on one GPU node (this workplace's device machine, or any node with
# vgg_ray's dependencies importable). Each stage writes its JSON and log under OUT (default
# bench/results/gpu-<date>/) and fits in 10 minutes on an H100.
#
#   bash bench/gpu_figures.sh train   # bench_train D, then E: synthetic, ray, ray-gpu, peer; --project-scaling
#   bash bench/gpu_figures.sh ablate  # bench_train D,E synthetic ablation (fp32 -> ... -> compile)
#   bash bench/gpu_figures.sh data    # bench_data: per-core decoders and nvJPEG (no pipelines), 16 procs
#   bash bench/gpu_figures.sh eval    # bench_eval D and E at paper size
#   bash bench/gpu_figures.sh job     # jobs/train.py --arch D --preset paper, --decode cpu then gpu
#
# Several stages in one call: bash bench/gpu_figures.sh train data eval
# Knobs (environment): STAGE_S (each stage's time limit, 590 s), ARCHS ("D E"), BENCH_PATHS (the train
# stage's --paths), BENCH_ARGS (its extra flags; default --project-scaling), EPOCHS (the job stage's
# --max-epochs, 8), DECODES (its --decode values, "cpu gpu"), OUT (where logs and JSON go).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-bench/results/gpu-$(date +%F)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cpus=$(nproc)

stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "${STAGE_S:-590}" "$@" 2>&1 | grep -v "is ignored: it is neither\|Parquet dataset sampling" | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

job() {
  # The run users start: D, paper preset, on ImageNet-sized JPEG shards (bench's photos), a few hundred
  # steps, once per --decode. The driver starts its own local Ray (what `ray job submit` would run on the
  # head; the device machine lacks the dashboard's dependencies, so no job server here).
  local data runs decode epochs=${EPOCHS:-8}
  data=$($py -c "from bench.common import resolve; print(resolve('photos'))")
  for decode in ${DECODES:-cpu gpu}; do
    runs=$(mktemp -d /tmp/gpu_job.XXXXXX)
    stage "job-$decode" env -u RAY_ADDRESS $py jobs/train.py --arch D --preset paper --data "$data" \
      --device gpu --workers 1 --decode "$decode" --max-epochs "$epochs" --storage "$runs" --name gpu
    cp "$runs/gpu/D/metrics.csv" "$out/job-$decode-metrics.csv" || true
  done
}

for s in "$@"; do
  case "$s" in
    train) for a in ${ARCHS:-D E}; do stage "train-$a" $py -m bench.bench_train --preset paper --data photos \
             --arch "$a" --paths ${BENCH_PATHS:-synthetic,ray,ray-gpu,peer} ${BENCH_ARGS:---project-scaling} --procs "$cpus" \
             --out "$out/train-$a.json"; done ;;
    ablate) stage ablate $py -m bench.bench_train --preset paper --data photos --arch D,E --paths synthetic \
              --ablate --out "$out/ablate.json" ;;
    data) stage data $py -m bench.bench_data --data photos --pipelines none --procs "$cpus" \
            --out "$out/data.json" ;;
    eval) for a in D E; do stage "eval-$a" $py -m bench.bench_eval --arch "$a" --preset paper --images 64 \
            --json "$out/eval-$a.json"; done ;;
    job) job ;;
    *) echo "unknown stage $s (train, ablate, data, eval, job)" >&2; exit 2 ;;
  esac
done
