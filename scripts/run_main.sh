#!/usr/bin/env bash
# The main job: set up (scripts/bootstrap.sh), then build, serve and query ResNet-101 (scripts/main.py).
# Options pass through, e.g.: bash scripts/run_main.sh --weights resnet101.pth --images 64 --ports free
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/python" scripts/main.py "$@"
