#!/usr/bin/env bash
# Create the work pools and register every deployment of deploy/prefect.yaml with the server at
# $PREFECT_API_URL (start it first: deploy/start-prefect-server.sh --background).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DFTLOOP_ROOT"
wait_for_api 60
"$PREFECT" work-pool create local --type process --overwrite
# the slurm pool's type (slurm-sbatch, flows/slurm_worker.py) is not one the CLI knows
"$PYTHON" -m flows.slurm_worker --pool slurm --create-pool
"$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml
"$PREFECT" deployment ls
