#!/usr/bin/env bash
# The GPU experiment quoted in the README: render training data with EEVEE, train GS-LRM `small`
# for a fixed time, then evaluate on real scanned objects (gso25) and held-out procedural shapes.
# One phase per call of the GPU machine (a call lasts at most 10 minutes; training runs in the
# background between calls). Locally, for a toy-size rehearsal:
#   PY311=.venv/bin/python PY312=.venv/bin/python N=16 VIEWS=8 RES=32 PRESET=tiny bash bench/gpu_experiment.sh data
set -euo pipefail
phase=${1:?usage: gpu_experiment.sh data|train|status|eval}
W=${W:-/tmp/zv}
OUT=${OUT:-$W/out}
N=${N:-1000}; VIEWS=${VIEWS:-12}; RES=${RES:-256}; PROCS=${PROCS:-12}; ENGINE=${ENGINE:-eevee}
PRESET=${PRESET:-small}; STEPS=${STEPS:-6000}; MINUTES=${MINUTES:-13}; BATCH=${BATCH:-8}; LR=${LR:-3e-4}
EVAL_RES=${EVAL_RES:-256}
GSO=${GSO:-.device/gso25}; HELDOUT=${HELDOUT:-25}; TARGETS=${TARGETS:-4}
mkdir -p "$W" "$OUT"

if [ -z "${PY311:-}" ]; then  # on the GPU machine: Blender's Python 3.11 from the bpy parts
  source .device/bpy-env.sh >/dev/null
  [ -d /tmp/bpysite/pyarrow ] || python3.11 -m zipfile -e /tmp/bpyparts/pyarrow-21.0.0-cp311-cp311-manylinux_2_28_x86_64.whl /tmp/bpysite
  PY311=python3.11
fi
if [ -z "${PY312:-}" ]; then  # the system Python with torch; gsplat and tqdm go to /tmp/site
  [ -d /tmp/site/gsplat ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl312x/*.whl
  export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
  PY312=python3
fi

case "$phase" in
data)
  t0=$(date +%s)
  $PY311 -m pipelines.local_pool generate --root "$W/data" --n "$N" --shard-size 64 --processes "$(nproc)"
  $PY311 -m pipelines.local_pool render --root "$W/data" --views "$VIEWS" --resolution "$RES" --engine "$ENGINE" --processes "$PROCS" --shapes-per-shard 16
  t1=$(date +%s)
  echo "data: $N shapes x $VIEWS views at ${RES}² ($ENGINE, $PROCS processes) in $((t1 - t0)) s" | tee "$OUT/data.txt"
  $PY311 -m pipelines.local_pool generate --root "$W/heldout" --n "$HELDOUT" --seed 1 --shard-size 64 --processes 4
  $PY311 -m pipelines.local_pool render --root "$W/heldout" --rig eval --targets-per-ring "$TARGETS" --resolution "$EVAL_RES" --engine "$ENGINE" --processes 4 --shapes-per-shard 8
  $PY311 -m pipelines.local_pool real --src "$GSO" --root "$W/gso" --resolution "$EVAL_RES" --engine "$ENGINE" --targets-per-ring "$TARGETS" --processes 1
  echo "held-out and gso25 eval views at ${EVAL_RES}² in $(( $(date +%s) - t1 )) s" | tee -a "$OUT/data.txt"
  ;;
train)
  setsid nohup $PY312 -m zeroverse.cli train-lrm --root "$W/data" --preset "$PRESET" --out "$W/run" --steps "$STEPS" \
    --batch-size "$BATCH" --image-size "$RES" --warmup-steps 500 --lr "$LR" --max-minutes "$MINUTES" --num-workers 12 \
    --image-every 500 --ckpt-every 1000 --log-every 25 > "$W/train.log" 2>&1 < /dev/null &
  sleep 60; tail -c 600 "$W/train.log"; echo; tail -n 1 "$W/run/metrics.jsonl" || true
  ;;
status)
  tail -c 400 "$W/train.log"; echo; tail -n 1 "$W/run/metrics.jsonl" || true
  ;;
bench)  # end-to-end EEVEE throughput at 512² for 1, 4 and 8 processes on this GPU
  $PY311 bench/render.py --root "${BENCH_ROOT:-.device/root}" --engine eevee --resolution 512 --views 16 --procs "${BENCH_PROCS:-1,4,8}" --shards-per-proc 2 --shapes-per-shard 2 | tee "$OUT/render_bench.txt"
  ;;
eval)
  $PY312 -m zeroverse.cli eval --checkpoint "$W/run/latest.pt" --views-root "$W/gso" --out "$OUT/eval_gso25"
  $PY312 -m zeroverse.cli eval --checkpoint "$W/run/latest.pt" --views-root "$W/heldout" --out "$OUT/eval_heldout"
  if [ "$RES" != "$EVAL_RES" ]; then  # also at the eval renders' own resolution
    $PY312 -m zeroverse.cli eval --checkpoint "$W/run/latest.pt" --views-root "$W/gso" --out "$OUT/eval_gso25_$EVAL_RES" --model-resolution "$EVAL_RES"
  fi
  $PY312 bench/plot_curve.py "$W/run/metrics.jsonl" "$OUT/psnr_curve.png" psnr
  cp "$W/run/metrics.jsonl" "$W/run/run.json" "$OUT/"
  last=$(ls "$W/run/images" | tail -n 1); cp "$W/run/images/$last" "$OUT/train_grid.png"
  cat "$OUT/eval_gso25/metrics.md" "$OUT/eval_heldout/metrics.md" 2>/dev/null | tail -n 12
  ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
