# Common environment of the deploy scripts. Source it in every shell that runs the `prefect` CLI
# against the server the scripts started:
#   source deploy/env.sh                  # exports everything below
#   bash deploy/env.sh                    # prints the export lines instead
# DFTLOOP_HOME: project directory (store, samples, reports, Prefect home); default ./dftloop-runs
# PREFECT_SERVER_API_HOST / PREFECT_SERVER_API_PORT: where the server listens (127.0.0.1:4200);
#   PREFECT_API_URL follows them unless it is set itself.
# PREFECT_FLOWS_HEARTBEAT_FREQUENCY: seconds between flow-run heartbeats (default 60); a run
#   that misses DFTLOOP_CRASH_AFTER_HEARTBEATS (3) of them is marked Crashed (deploy/deploy.sh
#   creates that automation).
# PREFECT_LOGGING_EXTRA_LOGGERS: library loggers whose records go to the flow-run logs
#   (generators.trainer: epochs, losses, ETA of a training).
DFTLOOP_ROOT=${DFTLOOP_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export DFTLOOP_ROOT
export DFTLOOP_HOME=${DFTLOOP_HOME:-$DFTLOOP_ROOT/dftloop-runs}
mkdir -p "$DFTLOOP_HOME"
DFTLOOP_HOME=$(cd "$DFTLOOP_HOME" && pwd)
export PREFECT_HOME=${PREFECT_HOME:-$DFTLOOP_HOME/prefect}
export PREFECT_SERVER_API_HOST=${PREFECT_SERVER_API_HOST:-127.0.0.1}
export PREFECT_SERVER_API_PORT=${PREFECT_SERVER_API_PORT:-4200}
export PREFECT_API_URL=${PREFECT_API_URL:-http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT/api}
export PREFECT_UI_URL=${PREFECT_UI_URL:-${PREFECT_API_URL%/api}}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-60}
export DFTLOOP_CRASH_AFTER_HEARTBEATS=${DFTLOOP_CRASH_AFTER_HEARTBEATS:-3}
export PREFECT_LOGGING_EXTRA_LOGGERS=${PREFECT_LOGGING_EXTRA_LOGGERS:-generators.trainer}
export PREFECT_CLI_PROMPT=false
VENV=${DFTLOOP_VENV:-$DFTLOOP_ROOT/.venv}
PREFECT="$VENV/bin/prefect"
PYTHON="$VENV/bin/python"
mkdir -p "$PREFECT_HOME"

# cli_hint: how another shell's `prefect` CLI reaches this server
cli_hint() {
  echo "For the prefect CLI in any shell, first run (from $DFTLOOP_ROOT):"
  echo "  source deploy/env.sh"
  echo "or export at least:"
  echo "  export PREFECT_API_URL=$PREFECT_API_URL"
  echo "Without it the CLI starts a temporary server of its own, which knows no deployment."
}

# wait_for_api SECONDS: poll $PREFECT_API_URL/health until it answers
wait_for_api() {
  local timeout=${1:-180} start=$SECONDS
  until "$PYTHON" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
      "$PREFECT_API_URL/health" >/dev/null 2>&1; do
    if (( SECONDS - start > timeout )); then
      echo "Prefect API at $PREFECT_API_URL not healthy after ${timeout}s" >&2
      echo "(start it with deploy/start-prefect-server.sh --background; another port: export" \
        "PREFECT_SERVER_API_PORT=... before every script)" >&2
      return 1
    fi
    sleep 1
  done
}

# run as a script (not sourced): print the export lines for `eval` or copying
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for name in DFTLOOP_ROOT DFTLOOP_HOME PREFECT_HOME PREFECT_API_URL PREFECT_UI_URL \
      PREFECT_SERVER_API_HOST PREFECT_SERVER_API_PORT PREFECT_SERVER_ANALYTICS_ENABLED \
      PREFECT_FLOWS_HEARTBEAT_FREQUENCY DFTLOOP_CRASH_AFTER_HEARTBEATS \
      PREFECT_LOGGING_EXTRA_LOGGERS; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done
fi
