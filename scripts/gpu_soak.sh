#!/usr/bin/env bash
# GPU soak: served ResNet-101 on one GPU for MINUTES (default 10) at 80% of the maximum measured just before,
# through real TorchServe; then TorchServe is stopped. Needs TorchServe and Java importable
# (benchmarks/BENCHMARKS.md says how on a GPU machine).
#
#   OUT=gpu_out bash scripts/gpu_soak.sh                    # soak_resnet101.json + soak.log under $OUT
#   OUT=/tmp/soak setsid nohup bash scripts/gpu_soak.sh &   # detached; $OUT/DONE appears at the end
#
# Knobs (environment): MINUTES (10), WORKERS (4), BS (64), DELAY (20), PROCS (load processes, 8),
# MPS (auto | on | off: workers under an NVIDIA MPS daemon, torchserve-accel start --mps; the recorded soak ran without).
# Passing (torchserve-accel soak): no failed request, no worker restart, host RSS and GPU memory growth < 5%.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
rm -f "$OUT/DONE"
PY=${PYTHON:-python3}
MINUTES=${MINUTES:-10}
WORKERS=${WORKERS:-4}
BS=${BS:-64}
DELAY=${DELAY:-20}
PROCS=${PROCS:-8}
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
RUN=$WORK/run
TSA=("$PY" -m torchserve_accel)  # the checkout is on PYTHONPATH: no install needed

main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  timeout 300 "${TSA[@]}" sweep archives "$WORK/store" resnet101 || return 1
  timeout 150 "${TSA[@]}" --run-dir "$RUN" start --model-store "$WORK/store" --ports free --timeout 120 \
    --mps "${MPS:-auto}" || return 1
  local status=0
  timeout 600 "${TSA[@]}" sweep --run-dir "$RUN" up resnet101 "$WORKERS" --batch-size "$BS" \
      --max-batch-delay "$DELAY" --timeout 290 \
    && timeout "$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 600 }')" "${TSA[@]}" soak --run-dir "$RUN" --model resnet101 \
      --minutes "$MINUTES" --processes "$PROCS" --out "$OUT/soak_resnet101.json"
  status=$?
  timeout 60 "${TSA[@]}" --run-dir "$RUN" stop --timeout 30
  return $status
}

main 2>&1 | tee "$OUT/soak.log"
status=${PIPESTATUS[0]}
tail -n 200 "$RUN"/logs/model_log.log > "$OUT/model_log_tail.txt" 2>/dev/null
rm -rf "$WORK"
echo "$status" > "$OUT/DONE"
exit "$status"
