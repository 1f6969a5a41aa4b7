#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by deploy/slurm/start-cluster.sh (by its pid files).
set -uo pipefail
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "stopped $(basename "$pidfile" .pid) ($pid)"
  fi
done
