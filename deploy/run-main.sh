#!/usr/bin/env bash
# Install everything and run the main job on embedded defaults (store under ./dftloop-runs):
#  1. evaluate the perov_5 test split against itself with the papers' metrics;
#  2. the generate-and-relax flow (Prefect, ephemeral API; CHGNet relaxation; analysis into the store).
# Override the flow's model with DFTLOOP_MAIN_MODEL (default: the "dataset" smoke-test model, which
# rattles dataset structures; set e.g. diffcsp with DFTLOOP_MAIN_TRAIN_CONFIG=cpu-small to train first).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash deploy/setup-system.sh
bash deploy/setup.sh
export DFTLOOP_HOME=${DFTLOOP_HOME:-$here/dftloop-runs}
mkdir -p "$DFTLOOP_HOME"
.venv/bin/dftloop evaluate --dataset perov_5 --split test --limit 200 --no-coverage \
  --out "$DFTLOOP_HOME/perov_5_self_metrics.json"
.venv/bin/python - <<PY
from flows.pipeline import generate_and_relax
result = generate_and_relax(
    model="${DFTLOOP_MAIN_MODEL:-dataset}",
    train_config=${DFTLOOP_MAIN_TRAIN_CONFIG:+\"$DFTLOOP_MAIN_TRAIN_CONFIG\"}${DFTLOOP_MAIN_TRAIN_CONFIG:-None},
    dataset="perov_5", n=4, relaxer="chgnet", dft="none",
)
print("samples:", result.get("sample_dir"))
print("store:", result.get("store"))
PY
.venv/bin/dftloop results list | head -20
