#!/usr/bin/env bash
# Install everything (system packages, venv with test tools) and run the default test suite.
# Extra arguments go to pytest, e.g. `bash deploy/run-tests.sh -m slow` for the long tests.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash deploy/setup-system.sh
bash deploy/setup.sh --test
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when a selection collects no test; that is not a success.
exit $status
