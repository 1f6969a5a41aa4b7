#!/usr/bin/env bash
# System packages dftloop uses beside Python (Debian/Ubuntu):
#   quantum-espresso      pw.x for the DFT stage (brings Open MPI)
#   libopenblas0-serial   a fast BLAS for pw.x (~1.7x on these machines)
#   slurm-wlm             a one-node SLURM cluster for the work-pool tests
#   chromium              headless browser for the Prefect UI test
# Safe to rerun: apt skips what is installed. Needs root (or sudo).
set -euo pipefail
packages=(quantum-espresso libopenblas0-serial slurm-wlm chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get here: install ${missing[*]} with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
