#!/usr/bin/env bash
# Stop the background Prefect server started by deploy/start-prefect-server.sh --background.
set -euo pipefail
source "$(dirname "$0")/env.sh"
pidfile="$PREFECT_HOME/server.pid"
[ -f "$pidfile" ] || { echo "no $pidfile" >&2; exit 0; }
pid=$(cat "$pidfile")
# the server runs in its own session (setsid): signal its process group
kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null || true
for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$pidfile"
echo "stopped Prefect server $pid"
