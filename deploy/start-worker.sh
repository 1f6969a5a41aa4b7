#!/usr/bin/env bash
# Start a worker for a work pool against $PREFECT_API_URL.
#   deploy/start-worker.sh [local|slurm] [--background]
# `local`: Prefect's process worker (each flow run is a subprocess of the worker).
# `slurm`: flows.slurm_worker (each flow run is an sbatch job; see docs/orchestration.md).
# Background workers write $PREFECT_HOME/worker-<pool>.{pid,log}; stop with deploy/stop-worker.sh <pool>
# (Prefect workers ignore SIGTERM: they are stopped with SIGINT).
set -euo pipefail
source "$(dirname "$0")/env.sh"
pool=${1:-local}
case "$pool" in
  local) cmd=("$PREFECT" worker start --pool local --type process --name "local-$(hostname)-$$") ;;
  slurm) cmd=("$PYTHON" -m flows.slurm_worker --pool slurm) ;;
  *) echo "unknown pool $pool (local|slurm)" >&2; exit 2 ;;
esac
cd "$DFTLOOP_ROOT"
if [ "${2:-}" != "--background" ]; then
  cli_hint
  exec "${cmd[@]}"
fi
log="$PREFECT_HOME/worker-$pool.log"
setsid "${cmd[@]}" >>"$log" 2>&1 < /dev/null &
echo $! > "$PREFECT_HOME/worker-$pool.pid"
echo "worker for pool $pool started (pid $!, log $log)"
cli_hint
