#!/usr/bin/env bash
# Served ResNet-101 on one GPU, then on every GPU of the host, in one run: does throughput scale with GPUs?
# Each step starts TorchServe with CUDA_VISIBLE_DEVICES limited to the first G GPUs (TorchServe then hands out
# gpu_id round-robin over them), registers WORKERS_PER_GPU x G workers, drives a closed loop sized to G, and
# stops the server. Writes scaling.json (every run and the ratio) and scaling.log under $OUT.
#
#   OUT=gpu_out bash scripts/gpu_scaling_check.sh          # TorchServe + Java importable (benchmarks/BENCHMARKS.md)
# Knobs: GPUS (default: all, from nvidia-smi), WORKERS_PER_GPU (6), BS (64), DELAY (20), WARMUP (5), DURATION (15),
# PROCS (load processes, 8), MPS (0 (default) | 1 | auto:
# workers under an NVIDIA MPS daemon, torchserve-accel start --mps), CONC_PER_SLOT (in flight per batch slot of the workers, 1.5), SET (model-config
# changes for the archive, e.g. "handler.blocking_sync=true"; several separated by spaces).
# A CPU dry run: GPUS=2 WORKERS_PER_GPU=1 BS=4 DURATION=5 PROCS=2.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
GPUS=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)}
WORKERS_PER_GPU=${WORKERS_PER_GPU:-6}
BS=${BS:-64}
DELAY=${DELAY:-20}
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-15}
CONC_PER_SLOT=${CONC_PER_SLOT:-1.5}
case "${MPS:-0}" in 1|on) MPS_FLAG=(--mps on) ;; auto) MPS_FLAG=(--mps auto) ;; *) MPS_FLAG=(--mps off) ;; esac
SET_FLAGS=()
for change in ${SET:-}; do SET_FLAGS+=(--set "$change"); done
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/scaling.XXXXXX")
TSA=("$PY" -m torchserve_accel)  # the checkout is on PYTHONPATH: no install needed

main() {
  ((GPUS >= 1)) || { echo "no GPU found (set GPUS=N for a dry run)"; return 1; }
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
  timeout 300 "${TSA[@]}" sweep archives "$WORK/store" resnet101 --workers 1 "${SET_FLAGS[@]}" || return 1
  local counts=(1) g
  ((GPUS > 1)) && counts+=("$GPUS")
  for g in "${counts[@]}"; do
    local run="$WORK/run-$g" workers=$((WORKERS_PER_GPU * g)) procs=${PROCS:-8}
    local conc
    conc=$(awk -v w="$workers" -v b="$BS" -v c="$CONC_PER_SLOT" 'BEGIN { printf "%d", w * b * c }')
    echo "=== $g GPU(s): $workers workers, batch $BS, delay $DELAY ms, $conc in flight${MPS:+, MPS ${MPS}}${SET:+, $SET}"
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((g - 1))) timeout 150 "${TSA[@]}" --run-dir "$run" start \
      --model-store "$WORK/store" --ports free --timeout 120 "${MPS_FLAG[@]}" || return 1
    timeout 600 "${TSA[@]}" sweep --run-dir "$run" up resnet101 "$workers" --batch-size "$BS" \
        --max-batch-delay "$DELAY" --timeout 290 \
      && timeout $((WARMUP + DURATION + 120)) "${TSA[@]}" bench --run-dir "$run" resnet101 \
        --concurrency "$conc" --processes "$procs" --warmup "$WARMUP" --duration "$DURATION" \
        --label "resnet101-${g}gpu" --out "$WORK/results/resnet101-${g}gpu.json"
    timeout 60 "${TSA[@]}" --run-dir "$run" stop --timeout 30
  done
  "$PY" - "$WORK/results" "$OUT/scaling.json" "${counts[@]}" <<'PY'
import json, pathlib, sys
results, out, counts = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
runs = {g: json.loads((results / f"resnet101-{g}gpu.json").read_text())
        for g in counts if (results / f"resnet101-{g}gpu.json").exists()}
rate = {g: r["results"]["ok_rps"] for g, r in runs.items()}
report = {"runs": runs, "ok_rps": rate,
          "scaling": (rate[counts[-1]] / rate["1"]) if len(counts) > 1 and "1" in rate and counts[-1] in rate else None}
out.write_text(json.dumps(report, indent=1))
for g, r in runs.items():
    res = r["results"]
    print(f"{g} GPU(s): {res['ok_rps']:.0f} img/s, p99 {res['latency_ms']['p99']:.1f} ms, "
          f"errors {sum(res['errors'].values())}, mean batch {res['server']['mean_batch_size']}")
print("scaling:", None if report["scaling"] is None else f"{report['scaling']:.2f}x", "(target >= 1.8x)")
PY
}

main 2>&1 | tee "$OUT/scaling.log"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
