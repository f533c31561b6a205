#!/usr/bin/env bash
# Prepares what the cluster tier (test_slurm.py beside this file) needs, on a Debian host as
# root: the packages of a one-node SLURM cluster with accounting, installed when a command is
# missing.
#   slurmctld, slurmd, slurm-client (sbatch, squeue, scancel, sacct, sacctmgr): Debian's slurm-wlm
#   slurmdbd (sacct's records, which snakemake's SLURM executor reads), munge (authentication),
#   mariadb-server (slurmdbd's database).
# The daemons are started by the tests, in a temp directory, and stopped after them.
# Prints one line per step; stops at the first failure with a line naming it.
set -euo pipefail
LOG=${VIRNUCPRO_CLUSTER_LOG:-/var/cache/virnucpro-triton/cluster-apt.log}
mkdir -p "$(dirname "$LOG")"
say() { echo "cluster tier: $*"; }
fail() { echo "cluster tier: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "the cluster tier starts SLURM's daemons as root: run it as root"
declare -A PACKAGE=(
  [slurmctld]=slurmctld [slurmd]=slurmd [sbatch]=slurm-client [slurmdbd]=slurmdbd
  [munged]=munge [mariadbd]=mariadb-server [mariadb-install-db]=mariadb-server
)
missing=()
for command in "${!PACKAGE[@]}"; do
  # Daemons live in /usr/sbin, which a non-login root shell may lack on PATH.
  PATH=$PATH:/usr/sbin command -v "$command" > /dev/null || missing+=("${PACKAGE[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  say "installing Debian's $packages(log: $LOG)"
  # policy-rc.d 101: the packages' own services are not started (the tests start their own).
  policy=/usr/sbin/policy-rc.d
  created=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && created=1
  fi
  status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends $packages; } > "$LOG" 2>&1 || status=$?
  [ -z "$created" ] || rm -f $policy
  [ $status = 0 ] || fail "apt-get install $packages failed; see $LOG"
fi
say "$(PATH=$PATH:/usr/sbin slurmctld -V), MariaDB $(PATH=$PATH:/usr/sbin mariadbd --version | awk '{print $3}')"
