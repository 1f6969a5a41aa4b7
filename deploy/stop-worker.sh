#!/usr/bin/env bash
# Stop a background worker (deploy/start-worker.sh <pool> --background): SIGINT twice, then KILL.
set -euo pipefail
source "$(dirname "$0")/env.sh"
pool=${1:-local}
pidfile="$PREFECT_HOME/worker-$pool.pid"
[ -f "$pidfile" ] || { echo "no $pidfile" >&2; exit 0; }
pid=$(cat "$pidfile")
kill -INT "$pid" 2>/dev/null || true
sleep 2
kill -INT "$pid" 2>/dev/null || true
for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$pidfile"
echo "stopped worker $pool ($pid)"
