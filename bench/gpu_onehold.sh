#!/usr/bin/env bash
# GS-LRM in one machine hold (data -> training -> evaluation), plus the recipe ablation.
# One phase per call of the GPU machine (a call lasts at most 10 minutes; training runs in the
# background between calls, started with setsid):
#   data    training views (random rig + evaluation-layout views) on every GPU, held-out shapes
#           and gso25 with the evaluation rig                                  (background)
#   train   bench/train.py (throughput), the main run on every GPU (torchrun/DDP, the clock
#           schedule), then the ablation runs side by side, then every evaluation  (background)
#   wait    returns when the background work is done or after WAIT seconds
#   status  the logs' last lines
#   results summary table, bench/results/gslrm_onehold.json, curve, grids -> $OUT/onehold.tgz
# Locally, a toy-size rehearsal of every phase (CPU, Cycles, tiny preset):
#   TOY=1 bash bench/gpu_onehold.sh data && TOY=1 bash bench/gpu_onehold.sh train && \
#   TOY=1 bash bench/gpu_onehold.sh wait && TOY=1 bash bench/gpu_onehold.sh results
set -euo pipefail
phase=${1:?usage: gpu_onehold.sh data|train|wait|status|results}
W=${W:-/tmp/zv1}
OUT=${OUT:-$W/out}
if [ -n "${TOY:-}" ]; then  # CPU rehearsal
  : "${N:=12}" "${VIEWS:=10}" "${LAYOUT:=4}" "${RES:=32}" "${PROCS:=2}" "${ENGINE:=cycles}" "${PRESET:=tiny}"
  : "${MAIN_MIN:=0.5}" "${ABL_STEPS:=6}" "${ABL_RES:=16}" "${LOWRES:=16}" "${BATCH:=2}" "${HELDOUT:=2}" "${TARGETS:=2}"
  : "${GSO_LIMIT:=2}" "${EVAL_RES:=32}" "${WARMUP:=2}" "${LOG:=2}" "${NPROC:=1}" "${BENCH:=}" "${WORKERS:=0}"
  : "${PY311:=.venv/bin/python}" "${PY312:=.venv/bin/python}"
fi
N=${N:-2000}; VIEWS=${VIEWS:-10}; LAYOUT=${LAYOUT:-4}; RES=${RES:-256}; PROCS=${PROCS:-24}; ENGINE=${ENGINE:-eevee}
PRESET=${PRESET:-small}; BATCH=${BATCH:-8}; LR=${LR:-4e-4}; WARMUP=${WARMUP:-300}; LOWRES=${LOWRES:-128}
MAIN_MIN=${MAIN_MIN:-8}; ABL_STEPS=${ABL_STEPS:-800}; ABL_RES=${ABL_RES:-128}; LOG=${LOG:-25}
HELDOUT=${HELDOUT:-25}; TARGETS=${TARGETS:-4}; EVAL_RES=${EVAL_RES:-256}; GSO=${GSO:-.device/gso25}; GSO_LIMIT=${GSO_LIMIT:-}
WORKERS=${WORKERS:-8}; BENCH=${BENCH-1}; RENDER_BENCH=${RENDER_BENCH-1}
mkdir -p "$W" "$OUT"

if [ -z "${PY311:-}" ]; then  # on the GPU machine: Blender's Python 3.11 from the bpy parts
  source .device/bpy-env.sh >/dev/null
  [ -d /tmp/bpysite/pyarrow ] || python3.11 -m zipfile -e /tmp/bpyparts/pyarrow-21.0.0-cp311-cp311-manylinux_2_28_x86_64.whl /tmp/bpysite
  PY311=python3.11
fi
if [ -z "${PY312:-}" ]; then  # the system Python with torch; gsplat goes to /tmp/site
  [ -d /tmp/site/gsplat ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl312/*.whl
  export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
  PY312=python3
fi
if command -v nvidia-smi >/dev/null 2>&1; then NGPU=$(nvidia-smi -L | wc -l); else NGPU=0; fi
NPROC=${NPROC:-$(( NGPU > 0 ? NGPU : 1 ))}
GPU_LIST=$(seq -s, 0 $(( NGPU > 0 ? NGPU - 1 : 0 )))
gpus_arg() { [ "$NGPU" -gt 0 ] && echo "--gpus $GPU_LIST" || true; }

# The ablation: each row adds one change to the one above, same data, seed, steps and size.
V1_MODEL="--model-option distance=camera --model-option scale_activation=sigmoid --model-option init_scale=0.01 --model-option init_opacity=0.2"
ABLATIONS=(
  "a0_v1|v1 recipe (camera-distance rays, 0.01 sigmoid scales, no QK-norm, bf16 head, novel views only, depth 0.1, random inputs)|$V1_MODEL --model-option qk_norm=false --model-option fp32_head=false --no-supervise-inputs --depth-weight 0.1 --depth-weight-end 0.1 --view-sampling random"
  "a1_object|+ object-centred Gaussians in the cube, GS-LRM scale/opacity init|--model-option qk_norm=false --model-option fp32_head=false --no-supervise-inputs --depth-weight 0.1 --depth-weight-end 0.1 --view-sampling random"
  "a2_qk|+ QK-norm, fp32 head|--no-supervise-inputs --depth-weight 0.1 --depth-weight-end 0.1 --view-sampling random"
  "a3_inputs|+ input views supervised|--depth-weight 0.1 --depth-weight-end 0.1 --view-sampling random"
  "a4_depth|+ depth weight 1.0 decaying to 0.1|--view-sampling random"
  "a5_layout|+ 25% of samples with evaluation-layout inputs (the full recipe at ${ABL_RES}²)|"
)

train_cmd() {  # train_cmd OUT ARGS...: one GS-LRM run of the recipe (defaults) with overrides
  local out=$1; shift
  echo -m zeroverse.cli train-lrm --root "$W/data" --preset "$PRESET" --out "$out" --batch-size "$BATCH" --lr "$LR" \
    --warmup-steps "$WARMUP" --num-workers "$WORKERS" --log-every "$LOG" --image-every 1000000 --ckpt-every 1000000 "$@"
}

case "$phase" in
data)  # in the background (it can outlast one call); `wait` polls it
  rm -f "$W/done"
  setsid nohup bash "$0" data-fg > "$W/data.log" 2>&1 < /dev/null &
  sleep 20; tail -n 3 "$W/data.log"
  ;;
data-fg)
  if [ "$NGPU" -gt 0 ]; then  # per-GPU load while rendering: does every GPU render?
    nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -lms 1000 > "$W/render_smi.csv" &
    SMI=$!
  fi
  t0=$(date +%s)
  $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/data" --n "$N" --shard-size 64 --workers "$(nproc)"
  $PY311 -m zeroverse.cli generate --backend processes --no-progress --root "$W/heldout" --n "$HELDOUT" --seed 1 --shard-size 64 --workers 4
  tg=$(date +%s)
  if [ "$NGPU" -gt 0 ] && [ -n "$RENDER_BENCH" ]; then  # end-to-end EEVEE figures on 1 and all GPUs
    PPG=$(( PROCS / NGPU ))
    for cfg in "512 0 $PPG" "512 $GPU_LIST $PROCS" "256 0 $PPG"; do
      set -- $cfg
      $PY311 bench/render.py --root "$W/data" --engine eevee --resolution "$1" --views 16 --procs "$3" --gpus "$2" \
        --shards-per-proc 2 --shapes-per-shard 2 --json "$W/render_${1}_gpus${2//,/}.json" > "$W/render_${1}_gpus${2//,/}.txt" 2>&1 || true
      tail -n 3 "$W/render_${1}_gpus${2//,/}.txt"
    done
  fi
  t1=$(date +%s)
  $PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/data" --views "$VIEWS" --layout-views "$LAYOUT" --resolution "$RES" \
    --engine "$ENGINE" --workers "$PROCS" --shapes-per-shard 16 $(gpus_arg)
  t2=$(date +%s)
  $PY311 -m zeroverse.cli render --backend processes --no-progress --root "$W/heldout" --rig eval --targets-per-ring "$TARGETS" --resolution "$EVAL_RES" \
    --engine "$ENGINE" --workers 4 --shapes-per-shard 8 $(gpus_arg)
  $PY311 -m zeroverse.cli render --backend processes --no-progress --real "$GSO" --root "$W/gso" --resolution "$EVAL_RES" --engine "$ENGINE" \
    --targets-per-ring "$TARGETS" --workers 1 ${GSO_LIMIT:+--limit $GSO_LIMIT}
  t3=$(date +%s)
  views=$(( N * VIEWS ))
  printf '{"shapes": %d, "views": %d, "resolution": %d, "generate_s": %d, "render_s": %d, "views_per_s": %.1f, "gpus": %d, "processes": %d, "eval_views_s": %d}\n' \
    "$N" "$views" "$RES" $((tg - t0)) $((t2 - t1)) "$(python3 -c "print($views / max(1, $t2 - $t1))")" "$NGPU" "$PROCS" $((t3 - t2)) | tee "$W/data.json"
  [ -n "${SMI:-}" ] && kill "$SMI" || true
  echo done > "$W/done"
  ;;
train)
  rm -f "$W/done"
  cat > "$W/train.sh" <<EOS
set -x
cd "$PWD"
export PYTHONPATH="${PYTHONPATH:-$PWD}"
[ -n "$BENCH" ] && $PY312 bench/train.py --presets small --image-size 128 --json "$W/bench_128.json" > "$W/bench_train.log" 2>&1
[ -n "$BENCH" ] && $PY312 bench/train.py --presets small --json "$W/bench_256.json" >> "$W/bench_train.log" 2>&1
t0=\$(date +%s)
if [ "$NPROC" -gt 1 ]; then
  $PY312 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" $(train_cmd "$W/main" --steps 1000000 --max-minutes "$MAIN_MIN" --schedule time --low-res "$LOWRES") > "$W/main.log" 2>&1
else
  $PY312 $(train_cmd "$W/main" --steps 1000000 --max-minutes "$MAIN_MIN" --schedule time --low-res "$LOWRES") > "$W/main.log" 2>&1
fi
echo "main run \$(( \$(date +%s) - t0 )) s" > "$W/main_time.txt"
# Main-run evaluation beside the ablation runs (the GPUs have room for both).
( $PY312 -m zeroverse.cli eval --checkpoint "$W/main/latest.pt" --views-root "$W/gso" --out "$W/main/eval_gso25" --no-progress > "$W/eval_main.log" 2>&1
  $PY312 -m zeroverse.cli eval --checkpoint "$W/main/latest.pt" --views-root "$W/heldout" --out "$W/main/eval_heldout" --no-progress >> "$W/eval_main.log" 2>&1 ) &
EOS
  i=0
  for row in "${ABLATIONS[@]}"; do
    IFS='|' read -r name _ args <<< "$row"
    [ -n "${ABL_ROWS:-}" ] && [[ ",$ABL_ROWS," != *",$name,"* ]] && continue  # e.g. ABL_ROWS=a0_v1,a5_layout
    gpu=$(( NGPU > 0 ? i % NGPU : 0 ))
    cat >> "$W/train.sh" <<EOS
( CUDA_VISIBLE_DEVICES=$gpu $PY312 $(train_cmd "$W/$name" --steps "$ABL_STEPS" --image-size "$ABL_RES" --low-res 0 --warmup-steps $(( WARMUP < ABL_STEPS / 4 ? WARMUP : ABL_STEPS / 4 )) $args) > "$W/$name.log" 2>&1
  CUDA_VISIBLE_DEVICES=$gpu $PY312 -m zeroverse.cli eval --checkpoint "$W/$name/latest.pt" --views-root "$W/gso" --out "$W/$name/eval_gso25" --no-progress >> "$W/$name.log" 2>&1
  CUDA_VISIBLE_DEVICES=$gpu $PY312 -m zeroverse.cli eval --checkpoint "$W/$name/latest.pt" --views-root "$W/heldout" --out "$W/$name/eval_heldout" --no-progress >> "$W/$name.log" 2>&1 ) &
EOS
    i=$((i + 1))
  done
  echo "wait; echo done > '$W/done'" >> "$W/train.sh"
  setsid nohup bash "$W/train.sh" > "$W/train_sh.log" 2>&1 < /dev/null &
  sleep 5; tail -n 3 "$W/train_sh.log"
  ;;
wait)
  end=$(( $(date +%s) + ${WAIT:-560} ))
  while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
  [ -f "$W/done" ] && echo "background work done" || echo "still running"
  tail -n 2 "$W/main/metrics.jsonl" 2>/dev/null || true
  ;;
status)
  tail -c 600 "$W/train_sh.log"; echo; tail -n 1 "$W/main/metrics.jsonl" 2>/dev/null || true
  for f in "$W"/a*_*.log; do [ -f "$f" ] && { echo "--- $f"; tail -c 200 "$f"; echo; }; done; true
  ;;
results)
  R="$W/results"; rm -rf "$R"; mkdir -p "$R"
  $PY312 bench/onehold_summary.py --work "$W" --out "$R" --ablations "$(printf '%s\n' "${ABLATIONS[@]}" | cut -d'|' -f1,2 | tr '\n' ';')"
  for f in bench_train.log bench_128.json bench_256.json data.json data.log render_smi.csv main.log main_time.txt \
           render_512_gpus0.json render_512_gpus01.json render_256_gpus0.json render_512_gpus0.txt render_512_gpus01.txt render_256_gpus0.txt; do
    [ -f "$W/$f" ] && cp "$W/$f" "$R/"
  done
  tar czf "$OUT/onehold.tgz" -C "$W" results
  cat "$R/summary.md"
  ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
