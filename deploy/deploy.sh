#!/usr/bin/env bash
# Create the work pools, register every deployment of deploy/prefect.yaml with the server at
# $PREFECT_API_URL (start it first: deploy/start-prefect-server.sh --background) and create the
# automation that marks a flow run Crashed when its heartbeats stop (flows/crash_detection.py:
# DFTLOOP_CRASH_AFTER_HEARTBEATS missed beats of PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DFTLOOP_ROOT"
wait_for_api 60
"$PREFECT" work-pool create local --type process --overwrite
# the slurm pool's type (slurm-sbatch, flows/slurm_worker.py) is not one the CLI knows
"$PYTHON" -m flows.slurm_worker --pool slurm --create-pool
"$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml
"$PYTHON" -m flows.crash_detection --missed "$DFTLOOP_CRASH_AFTER_HEARTBEATS"
"$PREFECT" deployment ls
cli_hint
