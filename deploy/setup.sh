#!/usr/bin/env bash
# Install dftloop into a virtual environment (.venv by default).
#   bash deploy/setup.sh            # library + CLI
#   bash deploy/setup.sh --test     # plus the test tools
# Environment: DFTLOOP_VENV (default .venv), DFTLOOP_TORCH (default 2.13.0, the CPU build;
# set DFTLOOP_TORCH=none to keep whatever torch the venv has, e.g. a CUDA build on a GPU box).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${DFTLOOP_VENV:-$here/.venv}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if [ "${DFTLOOP_TORCH:-2.13.0}" != "none" ]; then
  "$py" -m pip install -q "torch==${DFTLOOP_TORCH:-2.13.0}"
fi
"$py" -m pip install -q -c "$here/deploy/constraints.txt" -e "$here$extras"
echo "dftloop installed in $venv"
