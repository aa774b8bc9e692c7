#!/usr/bin/env bash
# One entry point for everything a GPU machine must check: correctness and speed of the fast paths.
# Usage: scripts/gpu_check.sh [tests|resnet|preprocess|decode-load|bert|bert-fp8|bert-profile|bert-floor|oom]...
#        (bert-fp8: MINILM=<an all-MiniLM-L6-v2 HF directory> adds the real-weights accuracy section)
#        (decode-load: needs nvidia-nvimgcodec-cu13 and nvidia-nvjpeg for its hardware-decoder phase)
#        (no argument: tests, resnet, preprocess, bert; tests: the gpu-marked tests of the model code, pass/fail)
# Results (JSON + logs) go under $OUT (default ./gpu_out); a short table is printed last.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, torchvision, transformers; print("torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(tests resnet preprocess bert)
status=0
for section in "${sections[@]}"; do
  echo "=== $section"
  case "$section" in
    tests)  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_images.py tests/test_resnet.py \
              tests/test_resnet_handler.py tests/test_bert_handler.py tests/test_text_gpu.py tests/test_text_tensorrt.py \
              tests/test_jpeg_corpus.py tests/test_text_fp8.py tests/test_cuda_wait.py \
              2>&1 | tee "$OUT/gpu_tests.log" || status=1 ;;
    resnet) python3 benchmarks/bench_resnet.py --out "$OUT/resnet.json" 2>&1 | tee "$OUT/resnet.log" || status=1 ;;
    preprocess) python3 benchmarks/bench_preprocess.py --out "$OUT/preprocess.json" 2>&1 | tee "$OUT/preprocess.log" || status=1 ;;
    decode-load) python3 benchmarks/bench_decode_load.py --out "$OUT/decode_load.json" 2>&1 \
              | tee "$OUT/decode_load.log" || status=1 ;;
    bert)   python3 benchmarks/bench_bert.py --out "$OUT/bert.json" 2>&1 | tee "$OUT/bert.log" || status=1 ;;
    bert-fp8) python3 benchmarks/bench_bert_fp8.py --out "$OUT/bert_fp8.json" ${MINILM:+--minilm "$MINILM"} 2>&1 \
              | tee "$OUT/bert_fp8.log" || status=1 ;;
    bert-profile) python3 benchmarks/bench_bert.py --profile --out "$OUT/bert_profile.json" 2>&1 | tee "$OUT/bert_profile.log" || status=1 ;;
    bert-floor) python3 benchmarks/bert_floor.py --out "$OUT/bert_floor.json" 2>&1 | tee "$OUT/bert_floor.log" || status=1 ;;
    oom)    python3 benchmarks/check_oom_split.py --out "$OUT/oom_split.json" 2>&1 | tee "$OUT/oom.log" || status=1 ;;
    *) echo "unknown section $section"; status=2 ;;
  esac
done
exit $status
