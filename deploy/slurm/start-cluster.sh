#!/usr/bin/env bash
# Start the one-node SLURM cluster (munged, slurmctld, slurmd) as root, without systemd.
# Idempotent: daemons already running (live pid files) are left alone. Needs `slurm-wlm` installed.
# Waits until the node `localhost` is idle. Stop with deploy/slurm/stop-cluster.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=/etc/slurm/slurm.conf
if [ ! -f "$conf" ]; then
  install -D -m 644 "$here/slurm.conf" "$conf"
elif ! cmp -s "$here/slurm.conf" "$conf"; then
  echo "note: $conf differs from $here/slurm.conf; keeping the installed one" >&2
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -f /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key (is munge installed?)" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
alive /run/slurmctld.pid || /usr/sbin/slurmctld
alive /run/slurmd.pid || /usr/sbin/slurmd -N localhost
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
  case "$state" in
    idle*|mix*|alloc*) echo "SLURM up: node localhost $state"; exit 0 ;;
    down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "SLURM node not ready after 60 s (state: ${state:-unknown}); see /var/log/slurm" >&2
exit 1
