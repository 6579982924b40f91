#!/usr/bin/env bash
# Install the packages the throw-away SLURM test cluster (tests/slurm_cluster.py) needs:
# Debian's slurm-wlm (slurmctld + slurmd + slurm-client, 22.05 on Debian 12) and munge.
# Idempotent and non-interactive; run as root. It installs packages and nothing else:
# no daemon is started or enabled here (the tests start their own, with their own
# configuration, munge key and sockets, and stop them again).
set -euo pipefail

PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm.sh: must run as root" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-slurm.sh: already installed: ${PACKAGES[*]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Keep the packages' maintainer scripts from starting munge/slurmd/slurmctld with the
# distribution defaults (invoke-rc.d honours policy-rc.d; exit 101 = "action forbidden").
# Only if no policy exists already, and removed again on exit.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

# apt-get update only when the package lists are missing or the install fails on stale ones.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -q
fi
if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for b in slurmctld slurmd sbatch squeue sinfo scontrol munged mungekey; do
    command -v "$b" >/dev/null || { echo "install-slurm.sh: $b missing after install" >&2; exit 1; }
done
echo "install-slurm.sh: installed $(dpkg-query -W -f='${Version}' slurmd) slurm, $(dpkg-query -W -f='${Version}' munge) munge"
