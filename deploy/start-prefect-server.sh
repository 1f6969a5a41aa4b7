#!/usr/bin/env bash
# Start a local Prefect server: SQLite database under $PREFECT_HOME (= $DFTLOOP_HOME/prefect),
# listening on $PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT (default 127.0.0.1:4200).
#   deploy/start-prefect-server.sh               # foreground (Ctrl-C stops it)
#   deploy/start-prefect-server.sh --background  # detach, wait until healthy, pid in $PREFECT_HOME/server.pid
# Stop a background server with deploy/stop-prefect-server.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
echo "Prefect server: $PREFECT_API_URL (PREFECT_HOME=$PREFECT_HOME)"
if [ "${1:-}" != "--background" ]; then
  cli_hint
  exec "$PREFECT" server start
fi
log="$PREFECT_HOME/server.log"
setsid "$PREFECT" server start >"$log" 2>&1 < /dev/null &
echo $! > "$PREFECT_HOME/server.pid"
if ! wait_for_api "${PREFECT_SERVER_STARTUP_TIMEOUT:-180}"; then
  tail -n 30 "$log" >&2
  exit 1
fi
echo "healthy (pid $(cat "$PREFECT_HOME/server.pid"), log $log); UI: $PREFECT_UI_URL"
cli_hint
