#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite, integration tests included
# (they start real TorchServe instances on free loopback ports). Extra arguments go to pytest.
# Then, in CI (CI set) or with LOWEST_TORCH=1, the model unit tests again on the lowest releases setup.py declares
# (scripts/lowest_torch.sh: torch 2.4 on the CPU; about 7 minutes on a fresh machine, 3.5 once .venv-lowest exists);
# LOWEST_TORCH=0 skips them. A failure in either run fails the command.
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
case "${LOWEST_TORCH:-${CI:-}}" in
  "" | 0 | false) ;;
  *)
    lowest=0
    bash "$root/scripts/lowest_torch.sh" || lowest=$?
    echo "[tests] whole suite: exit $status; model tests on the lowest torch: exit $lowest" >&2
    [ "$status" -ne 0 ] || status=$lowest
    ;;
esac
exit "$status"
