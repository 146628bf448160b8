#!/usr/bin/env bash
# The GPU experiments quoted in the README: render training data with EEVEE, train GS-LRM `small`
# for a fixed time, then evaluate on real scanned objects (gso25) and held-out procedural shapes;
# alongside, train G3R and compare it with per-scene Adam (bench/g3r.py).
# One phase per call of the GPU machine (a call lasts at most 10 minutes; training runs in the
# background between calls):
#   data     GS-LRM training views                      (foreground)
#   train    GS-LRM training starts (background); held-out + gso25 eval views render meanwhile
#   g3r      G3R data -> G3R training -> bench/g3r.py on held-out shapes and gso25 (background)
#   status   the logs' last lines
#   render   end-to-end EEVEE throughput through the local pool at 512² and 256² (RRES) on the
#            GPUs in GPUS (default 0; e.g. GPUS=0,1 on nvidia-h200-x2), RPROCS processes in all,
#            per-GPU memory/utilisation sampled meanwhile; figures and per-stage medians in JSON
#   bench    bench/render.py's per-stage table (processes BENCH_PROCS, after a warm-up shape)
#   eval     GS-LRM evaluation, PSNR curve, G3R tables -> $OUT
# Locally, for a toy-size rehearsal:
#   PY311=.venv/bin/python PY312=.venv/bin/python N=16 VIEWS=8 RES=32 PRESET=tiny bash bench/gpu_experiment.sh data
#   PY311=.venv/bin/python PY312=.venv/bin/python ENGINE=cycles RN=4 RVIEWS=2 RPROCS=2 RRES=32 bash bench/gpu_experiment.sh render
set -euo pipefail
phase=${1:?usage: gpu_experiment.sh data|train|g3r|status|render|bench|eval}
W=${W:-/tmp/zv}
OUT=${OUT:-$W/out}
N=${N:-1000}; VIEWS=${VIEWS:-12}; RES=${RES:-256}; PROCS=${PROCS:-12}; ENGINE=${ENGINE:-eevee}
PRESET=${PRESET:-small}; STEPS=${STEPS:-9000}; MINUTES=${MINUTES:-20}; BATCH=${BATCH:-8}; LR=${LR:-4e-4}
WARMUP=${WARMUP:-300}; DEPTH_W=${DEPTH_W:-0.1}; ALPHA_W=${ALPHA_W:-0.1}
# G3R: shapes x 40 random views (32 source + 8 held out) at G3R_RES
G3R_N=${G3R_N:-240}; G3R_RES=${G3R_RES:-128}; G3R_MINUTES=${G3R_MINUTES:-10}; G3R_STEPS=${G3R_STEPS:-3000}
G3R_PRESET=${G3R_PRESET:-small}; G3R_SHAPES=${G3R_SHAPES:-16}; G3R_ADAM=${G3R_ADAM:-24,100,1000}
G3R_LR=${G3R_LR:-1e-3}; G3R_PROCS=${G3R_PROCS:-4}; G3R_UNROLL_WARMUP=${G3R_UNROLL_WARMUP:-300}
EVAL_RES=${EVAL_RES:-256}
GSO=${GSO:-.device/gso25}; HELDOUT=${HELDOUT:-25}; TARGETS=${TARGETS:-4}
mkdir -p "$W" "$OUT"

if [ -z "${PY311:-}" ]; then  # on the GPU machine: Blender's Python 3.11 from the bpy parts
  source .device/bpy-env.sh >/dev/null
  [ -d /tmp/bpysite/pyarrow ] || python3.11 -m zipfile -e /tmp/bpyparts/pyarrow-21.0.0-cp311-cp311-manylinux_2_28_x86_64.whl /tmp/bpysite
  PY311=python3.11
fi
if [ -z "${PY312:-}" ]; then  # the system Python with torch; gsplat and tqdm go to /tmp/site
  [ -d /tmp/site/gsplat ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl312/*.whl
  export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
  PY312=python3
fi

eval_views() {  # held-out procedural shapes and gso25 with the GSO protocol (eval rig)
  $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/heldout" --n "$HELDOUT" --seed 1 --shard-size 64 --workers 4
  $PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/heldout" --rig eval --targets-per-ring "$TARGETS" --resolution "$EVAL_RES" --engine "$ENGINE" --workers 4 --shapes-per-shard 8
  $PY311 -m zeroverse.cli render --backend processes --no-progress --real "$GSO" --root "$W/gso" --resolution "$EVAL_RES" --engine "$ENGINE" --targets-per-ring "$TARGETS" --workers 1
}

case "$phase" in
data)
  t0=$(date +%s)
  $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/data" --n "$N" --shard-size 64 --workers "$(nproc)"
  $PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/data" --views "$VIEWS" --resolution "$RES" --engine "$ENGINE" --workers "$PROCS" --shapes-per-shard 16
  echo "data: $N shapes x $VIEWS views at ${RES}² ($ENGINE, $PROCS processes) in $(( $(date +%s) - t0 )) s" | tee "$OUT/data.txt"
  ;;
train)
  setsid nohup $PY312 -m zeroverse.cli train-lrm --root "$W/data" --preset "$PRESET" --out "$W/run" --steps "$STEPS" \
    --batch-size "$BATCH" --image-size "$RES" --warmup-steps "$WARMUP" --lr "$LR" --max-minutes "$MINUTES" --num-workers 10 \
    --depth-weight "$DEPTH_W" --alpha-weight "$ALPHA_W" \
    --image-every 500 --ckpt-every 1000 --log-every 25 > "$W/train.log" 2>&1 < /dev/null &
  t0=$(date +%s); eval_views > "$W/evalviews.log" 2>&1
  echo "held-out and gso25 eval views at ${EVAL_RES}² in $(( $(date +%s) - t0 )) s (beside training)" | tee "$OUT/evalviews.txt"
  tail -c 600 "$W/train.log"; echo; tail -n 1 "$W/run/metrics.jsonl" || true
  ;;
g3r)
  cat > "$W/g3r.sh" <<EOS
set -x
t0=\$(date +%s)
$PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/g3rdata" --n "$G3R_N" --seed 2 --shard-size 64 --workers 4
$PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/g3rdata" --views 40 --resolution "$G3R_RES" --engine "$ENGINE" --workers "$G3R_PROCS" --shapes-per-shard 8
$PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/g3rheld" --n "$G3R_SHAPES" --seed 1 --shard-size 64 --workers 4
$PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/g3rheld" --views 40 --resolution "$G3R_RES" --engine "$ENGINE" --workers 4 --shapes-per-shard 8
$PY311 -m zeroverse.cli render --backend processes --no-progress --real "$GSO" --root "$W/g3rgso" --rig random --views 40 --resolution "$G3R_RES" --engine "$ENGINE" --workers 1
echo "g3r data in \$(( \$(date +%s) - t0 )) s"
$PY312 -m zeroverse.cli train-lrm --model g3r --root "$W/g3rdata" --preset "$G3R_PRESET" --out "$W/g3r" --steps "$G3R_STEPS" \
  --batch-size 2 --image-size "$G3R_RES" --warmup-steps 50 --unroll-warmup "$G3R_UNROLL_WARMUP" --lr "$G3R_LR" --max-minutes "$G3R_MINUTES" \
  --num-workers 4 --log-every 25 --image-every 500 --ckpt-every 500
for set in g3rheld g3rgso; do
  $PY312 bench/g3r.py --root "$W/\$set" --checkpoint "$W/g3r/latest.pt" --shapes "$G3R_SHAPES" --image-size "$G3R_RES" \
    --source-views 32 --heldout-views 8 --adam-steps "$G3R_ADAM" --json "$W/\$set.json" > "$W/\$set.txt" 2>&1
done
echo g3r done
EOS
  setsid nohup bash "$W/g3r.sh" > "$W/g3r.log" 2>&1 < /dev/null &
  sleep 5; tail -n 5 "$W/g3r.log"
  ;;
status)
  tail -c 400 "$W/train.log"; echo; tail -n 1 "$W/run/metrics.jsonl" || true
  [ -f "$W/g3r.log" ] && { echo "--- g3r"; tail -c 300 "$W/g3r.log"; echo; tail -n 1 "$W/g3r/metrics.jsonl" 2>/dev/null || true; }
  true
  ;;
render)  # the farm's own executor end to end (scene build + render + encode + Parquet write)
  GPUS=${GPUS:-0}; RPROCS=${RPROCS:-12}; RN=${RN:-256}; RVIEWS=${RVIEWS:-16}; RRES=${RRES:-512 256}
  [ -f "$W/rb/shapes/manifest.json" ] || $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/rb" --n "$RN" --shard-size 64 --workers "$(nproc)"
  tag="gpus${GPUS//,/-}_p$RPROCS"
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$OUT/smi_$tag.csv" 2>/dev/null &
  smi=$!
  for R in $RRES; do
    rm -rf "$W/rb/views"
    $PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/rb" --views "$RVIEWS" --resolution $R --engine "$ENGINE" --workers "$RPROCS" \
      --shapes-per-shard 8 --gpus "$GPUS" --timings --json "$OUT/render_${R}_$tag.json" 2>/dev/null | sed "s/^/${R}² $tag: /" | tee -a "$OUT/render_e2e.txt"
  done
  kill $smi 2>/dev/null || true
  awk -F', ' '{u[$1]+=$2; m[$1]=($3+0>m[$1]?$3+0:m[$1]); n[$1]++} END {for (g in u) printf "GPU %s: mean util %.0f%%, peak %d MiB\n", g, u[g]/n[g], m[g]}' \
    "$OUT/smi_$tag.csv" | tee -a "$OUT/render_e2e.txt"
  ;;
bench)  # end-to-end EEVEE throughput at 512² for 1, 4 and 8 processes on this GPU
  [ -n "${BENCH_ROOT:-}" ] || { BENCH_ROOT="$W/rb"; [ -f "$W/rb/shapes/manifest.json" ] || $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/rb" --n "${RN:-256}" --shard-size 64 --workers "$(nproc)"; }
  $PY311 bench/render.py --root "$BENCH_ROOT" --engine "$ENGINE" --resolution "${BENCH_RES:-512}" --views 16 --procs "${BENCH_PROCS:-1,4,8}" \
    --shards-per-proc 2 --shapes-per-shard 4 ${GPUS:+--gpus $GPUS} --json "$OUT/render_bench.json" | tee "$OUT/render_bench.txt"
  ;;
eval)  # everything into one archive: a call brings back at most 8 files
  R="$W/results"; rm -rf "$R"; mkdir -p "$R"
  if [ -f "$W/run/latest.pt" ]; then
    $PY312 -m zeroverse.cli eval --checkpoint "$W/run/latest.pt" --views-root "$W/gso" --out "$R/eval_gso25" --no-progress
    $PY312 -m zeroverse.cli eval --checkpoint "$W/run/latest.pt" --views-root "$W/heldout" --out "$R/eval_heldout" --no-progress
    $PY312 bench/plot_curve.py "$W/run/metrics.jsonl" "$R/psnr_curve.png" psnr
    cp "$W/run/metrics.jsonl" "$W/run/run.json" "$W/train.log" "$R/"
    last=$(ls "$W/run/images" | tail -n 1); cp "$W/run/images/$last" "$R/train_grid.png"
  fi
  for f in g3rheld.txt g3rgso.txt g3rheld.json g3rgso.json g3r.log; do [ -f "$W/$f" ] && cp "$W/$f" "$R/"; done
  [ -f "$W/g3r/metrics.jsonl" ] && cp "$W/g3r/metrics.jsonl" "$R/g3r_metrics.jsonl"
  [ -d "$W/g3r/images" ] && { last=$(ls "$W/g3r/images" | tail -n 1); cp "$W/g3r/images/$last" "$R/g3r_train_grid.png"; }
  tar czf "$OUT/results.tgz" -C "$W" results
  cat "$R/eval_gso25/metrics.md" "$R/eval_heldout/metrics.md" 2>/dev/null | tail -n 12
  tail -n 12 "$W/g3rheld.txt" "$W/g3rgso.txt" 2>/dev/null
  true
  ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
