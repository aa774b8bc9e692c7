#!/usr/bin/env bash
# The lowest releases setup.py declares (torch 2.4), tested on the CPU: .venv-lowest gets this checkout installed
# editable with its dev extras under the pins of scripts/lowest_torch.txt, then the model unit tests run there (the
# integration tests run on .venv only). Run by scripts/run_tests.sh in CI; by hand: bash scripts/lowest_torch.sh
# [pytest args]. PyPI's torch 2.4.1 is a CUDA build: a fresh set-up downloads ~2.6 GB with its nvidia-* libraries
# (5.3 GB in the venv), one package at a time so that the disk holds little more than the venv. Quick when nothing
# changed: the install is skipped while setup.py and the pins are unchanged.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-lowest"
py="$venv/bin/python"
pins="$root/scripts/lowest_torch.txt"
say() { echo "[lowest-torch] $*" >&2; }
# pip's progress bars where a person watches; one line per download in logs.
progress=$([ -t 1 ] && echo on || echo off)

if [ ! -x "$py" ]; then
  # The main venv's interpreter where scripts/bootstrap.sh made one: torch 2.4 has wheels for Python 3.8 to 3.12.
  base=${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}
  if ! "$base" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
    say "error: torch 2.4 needs Python 3.10 to 3.12 for $venv (set PYTHON=/path/to/python3.x)"; exit 1
  fi
  say "creating $venv with $("$base" -V 2>&1)"
  "$base" -m venv "$venv"
fi

stamp="$venv/.torchserve-accel-installed"
want="$(cat "$root/setup.py" "$pins" | sha256sum | cut -d' ' -f1) $root"
installed_here() {
  "$py" - "$root" "$pins" <<'PY' 2>/dev/null
import importlib.metadata, importlib.util, pathlib, sys
root, pins = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2])
for line in pins.read_text().splitlines():
    name, _, version = line.split("#")[0].strip().partition("==")
    if name and importlib.metadata.version(name).split("+")[0] != version:
        sys.exit(1)
spec = importlib.util.find_spec("torchserve_accel")
sys.exit(0 if spec is not None and pathlib.Path(spec.origin).resolve().parent.parent == root else 1)
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed_here; then
  say "installing torchserve-accel[dev] with $(grep -E '^(torch|torchvision|transformers)==' "$pins" | paste -sd' ')" \
      "into $venv (a fresh machine downloads ~2.6 GB) ..."
  start=$SECONDS
  free_mb=$(df -Pm "$venv" | awk 'NR == 2 {print $4}')
  [ "$free_mb" -ge 7000 ] || say "warning: $free_mb MB free where $venv lies; a fresh install needs about 6,500 MB"
  # One pip call for everything holds every downloaded wheel (2.6 GB) beside the growing venv (5.3 GB) until the
  # end, which filled a CI machine's disk. Torch alone first, then each of its CUDA libraries in a call of its own
  # (with their own dependencies), nothing cached: at most one wheel waits on disk beside the venv.
  export PIP_NO_CACHE_DIR=1
  torch_pin=$(grep -E '^torch==' "$pins")
  "$py" -m pip install --progress-bar "$progress" --no-deps "$torch_pin"
  # torch's own pins of its CUDA libraries, as constraints too: one library's dependency on another is unpinned.
  cuda_pins="$venv/torch-cuda-pins.txt"
  "$py" - > "$cuda_pins" <<'PY'
import importlib.metadata
from pip._vendor.packaging.requirements import Requirement
for line in importlib.metadata.requires("torch") or []:
    req = Requirement(line)
    if req.name.startswith(("nvidia-", "triton")) and (req.marker is None or req.marker.evaluate({"extra": ""})):
        print(str(req).split(";")[0])
PY
  while read -r req; do
    "$py" -m pip install --progress-bar "$progress" -c "$pins" -c "$cuda_pins" "$req" < /dev/null
  done < "$cuda_pins"
  "$py" -m pip install --progress-bar "$progress" -c "$pins" -c "$cuda_pins" -e "$root[dev]"
  echo "$want" > "$stamp"
  say "installed in $((SECONDS - start)) s"
fi

cd "$root"
versions=$("$py" -c 'import importlib.metadata as m
print(", ".join(f"{n} {m.version(n)}" for n in ("torch", "torchvision", "transformers", "numpy")))')
say "model unit tests on $versions"
status=0
"$py" -m pytest -q -m "not integration" \
  tests/test_dependency_range.py tests/test_library_shape.py tests/test_serving.py tests/test_multi_gpu_placement.py \
  tests/test_images.py tests/test_resnet.py tests/test_resnet_handler.py \
  tests/test_bert_handler.py tests/test_bert_archive.py tests/test_text_*.py tests/test_wire_formats.py "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  status=1
fi
exit "$status"
