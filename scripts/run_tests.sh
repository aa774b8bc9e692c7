#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite, integration tests included
# (they start real TorchServe instances on free loopback ports). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
status=0
"$root/.venv/bin/python" -m pytest -q tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  status=1
fi
exit "$status"
