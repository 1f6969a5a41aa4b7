# Common environment of the deploy scripts (sourced, not run).
# DFTLOOP_HOME: project directory (store, samples, reports, Prefect home); default ./dftloop-runs
# PREFECT_SERVER_API_HOST / PREFECT_SERVER_API_PORT: where the server listens (127.0.0.1:4200).
DFTLOOP_ROOT=${DFTLOOP_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export DFTLOOP_ROOT
export DFTLOOP_HOME=${DFTLOOP_HOME:-$DFTLOOP_ROOT/dftloop-runs}
mkdir -p "$DFTLOOP_HOME"
DFTLOOP_HOME=$(cd "$DFTLOOP_HOME" && pwd)
export PREFECT_HOME=${PREFECT_HOME:-$DFTLOOP_HOME/prefect}
export PREFECT_SERVER_API_HOST=${PREFECT_SERVER_API_HOST:-127.0.0.1}
export PREFECT_SERVER_API_PORT=${PREFECT_SERVER_API_PORT:-4200}
export PREFECT_API_URL=${PREFECT_API_URL:-http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT/api}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export PREFECT_CLI_PROMPT=false
VENV=${DFTLOOP_VENV:-$DFTLOOP_ROOT/.venv}
PREFECT="$VENV/bin/prefect"
PYTHON="$VENV/bin/python"
mkdir -p "$PREFECT_HOME"

# wait_for_api SECONDS: poll $PREFECT_API_URL/health until it answers
wait_for_api() {
  local timeout=${1:-180} start=$SECONDS
  until "$PYTHON" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
      "$PREFECT_API_URL/health" >/dev/null 2>&1; do
    if (( SECONDS - start > timeout )); then
      echo "Prefect API at $PREFECT_API_URL not healthy after ${timeout}s" >&2
      return 1
    fi
    sleep 1
  done
}
