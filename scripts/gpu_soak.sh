#!/usr/bin/env bash
# GPU soak of several models at once on one GPU, through one real TorchServe (workers under MPS where it can run):
# each model at 80% of its maximum measured just before, for MINUTES (default 10), with 1% bad inputs; then one
# worker of each model SIGKILLed under the same load, one model at a time while every model keeps its load, and
# its recovery measured. TorchServe is stopped at the end.
# Needs TorchServe and Java importable (benchmarks/BENCHMARKS.md says how on a GPU machine).
#
#   OUT=gpu_out bash scripts/gpu_soak.sh                                            # in the foreground
#   OUT=/tmp/o setsid nohup bash scripts/gpu_soak.sh > /tmp/o.log 2>&1 &             # detached: poll for /tmp/o/DONE
#
# Under $OUT: soak_<model>.json and .log per model, soak_combined.json (both verdicts; docs/reliability.md says what
# is judged), soak.log (this output), torchserve_logs.txt (log tails), and last DONE, holding the exit status (0:
# every soak passed). About 14.5 minutes with the defaults: ~1.5 min to build and register (BERT-Large's random
# checkpoint builds while ResNet-101's workers start), then per model, concurrently, MEASURE_S of full batches (each
# model's maximum is measured while the other's closed loop runs too), WARMUP_S at the rate, MINUTES of soak, and
# KILL_WINDOW_S of load around the kill, one model's kill after the other's.
#
# Knobs (environment): MODELS ("resnet101 bert_large"), MINUTES (10), BAD (0.01: share of bad inputs), KILL (1; 0:
# no kill), KILL_AFTER_S (5), KILL_WINDOW_S (30), MEASURE_S (15), WARMUP_S (20), TIMEOUT (15 s per request: a request
# the killed worker never answers ends then), PROCS (load processes per model, 4), MPS (auto | on | off),
# SET_<model> (model-config changes for that archive, e.g. SET_resnet101="minWorkers=4 maxWorkers=4 batchSize=32";
# default: each archive's own workers and batching), PYTHON (python3). A CPU dry run (~4 min; the first batches of
# ResNet-101 on a CPU take seconds, so the maximum needs a longer measurement): MODELS=resnet101
# SET_resnet101="minWorkers=2 maxWorkers=2 batchSize=8" MINUTES=0.3 MEASURE_S=30 WARMUP_S=5 KILL_AFTER_S=3
# KILL_WINDOW_S=20 TIMEOUT=60 PROCS=1 BAD=0.1.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
rm -f "$OUT/DONE"
PY=${PYTHON:-python3}
read -r -a MODEL_LIST <<< "${MODELS:-resnet101 bert_large}"
MINUTES=${MINUTES:-10}
BAD=${BAD:-0.01}
KILL=${KILL:-1}
KILL_AFTER_S=${KILL_AFTER_S:-5}
KILL_WINDOW_S=${KILL_WINDOW_S:-30}
MEASURE_S=${MEASURE_S:-15}
WARMUP_S=${WARMUP_S:-20}
TIMEOUT=${TIMEOUT:-15}
PROCS=${PROCS:-4}
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
RUN=$WORK/run
STORE=$WORK/store
T0=$SECONDS
TSA=("$PY" -m torchserve_accel)  # the checkout is on PYTHONPATH: no install needed
ts_up=0

note() { echo "=== [$(date +%T) +$((SECONDS - T0))s] $*"; }

cleanup() {
  if ((ts_up)); then timeout 90 "${TSA[@]}" --run-dir "$RUN" stop --timeout 30 || true; fi
}

# archive MODEL: build MODEL.mar (random weights; SET_<MODEL> changes its model-config), then register it with the
# archive's own workers and batching; the registration returns once its workers have loaded the model.
archive() {
  local model=$1 sets=() change var="SET_$1"
  for change in ${!var:-}; do sets+=(--set "$change"); done
  timeout -k 10 300 "${TSA[@]}" build "$model" --output-dir "$STORE" --force "${sets[@]}" \
    && timeout -k 10 600 "${TSA[@]}" --run-dir "$RUN" register "$model.mar"
}

main() {
  trap cleanup EXIT
  note "gpu_soak: ${MODEL_LIST[*]}, $MINUTES min, bad inputs $BAD, kill $KILL, work dir $WORK"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  mkdir -p "$STORE"
  timeout 150 "${TSA[@]}" --run-dir "$RUN" start --model-store "$STORE" --ports free --timeout 120 \
    --mps "${MPS:-auto}" || return 1
  ts_up=1

  note "archives and registration, one model per background job (logs: archive_<model>.log)"
  local model pids=() failed=0 i
  for model in "${MODEL_LIST[@]}"; do
    archive "$model" > "$OUT/archive_$model.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    model=${MODEL_LIST[$i]}
    if wait "${pids[$i]}"; then
      echo "$model: registered"
    else
      echo "$model: archive or registration FAILED"
      tail -n 20 "$OUT/archive_$model.log"
      failed=1
    fi
  done
  ((failed == 0)) || return 1

  note "soaks, all models at once (logs: soak_<model>.log)"
  local limit kill=() files=() others other
  # the soak's own seconds, 10% more for the pauses between segments, then per model a kill window and the
  # recovery timeout (300 s; the kills take turns), and 180 s spare
  limit=$(awk -v m="$MINUTES" -v a="$MEASURE_S" -v b="$WARMUP_S" -v c="$KILL_WINDOW_S" -v n="${#MODEL_LIST[@]}" \
    'BEGIN { printf "%d", m * 66 + a + b + n * (c + 300) + 180 }')
  # the kills take turns (one model's kill and recovery never overlap another's), every model under load meanwhile
  ((KILL)) && kill=(--kill-worker --kill-after-s "$KILL_AFTER_S" --kill-window-s "$KILL_WINDOW_S"
                    --kill-turns "$WORK/kill_turns")
  pids=()
  for model in "${MODEL_LIST[@]}"; do
    others=()
    for other in "${MODEL_LIST[@]}"; do [ "$other" = "$model" ] || others+=(--alongside "$other"); done
    timeout -k 30 "$limit" "${TSA[@]}" soak --run-dir "$RUN" --model "$model" --minutes "$MINUTES" \
      --measure-s "$MEASURE_S" --warmup-s "$WARMUP_S" --processes "$PROCS" --timeout "$TIMEOUT" \
      --bad-fraction "$BAD" "${kill[@]}" "${others[@]}" --out "$OUT/soak_$model.json" > "$OUT/soak_$model.log" 2>&1 &
    pids+=($!)
    files+=("$OUT/soak_$model.json")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    echo "${MODEL_LIST[$i]}: soak exit $?"
  done
  note "verdict"
  timeout 60 "${TSA[@]}" soak-combine "${files[@]}" --out "$OUT/soak_combined.json"
}

main 2>&1 | tee "$OUT/soak.log"
status=${PIPESTATUS[0]}
{
  for f in "$RUN/torchserve.out" "$RUN/logs/ts_log.log" "$RUN/logs/model_log.log"; do
    [ -f "$f" ] && { echo "----- $f (last 300 lines)"; tail -n 300 "$f"; }
  done
} > "$OUT/torchserve_logs.txt" 2>&1
echo "total $((SECONDS - T0)) s, exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/soak.log"
rm -rf "$WORK"
echo "$status" > "$OUT/DONE"
exit "$status"
