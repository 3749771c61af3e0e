#!/usr/bin/env bash
# scencode's test cluster: a real single-node SLURM on 127.0.0.1 (munge + slurmctld + slurmd).
# Used by tests/test_slurm.py and .ci/run; written from the recipe in the shared SLURM notes.
# The node advertises 2 fake GPUs as a GRES, so jobs that ask for `--gpus`/`--gres=gpu:N` are scheduled
# (they run on the CPU: there is no GPU behind them). Idempotent; needs root and Debian's packages.
#   usage: local-slurm.sh start | stop | status
# Afterwards: sbatch/squeue/sinfo work; Snakemake's SLURM executor plugin works with
# `slurm-status-command: squeue` (no accounting database here; MinJobAge keeps finished jobs visible).
set -euo pipefail
cmd=${1:-start}
conf=/etc/slurm/slurm.conf

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p /etc/munge /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  local host cpus mem
  host=$(hostname); cpus=$(nproc)
  mem=$(( $(free -m | awk '/Mem:/{print $2}') - 1024 ))
  cat >"$conf" <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  echo "Name=gpu File=/dev/null" >/etc/slurm/gres.conf
  echo "Name=gpu File=/dev/zero" >>/etc/slurm/gres.conf
  [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || slurmctld
  [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || slurmd
  for _ in $(seq 30); do
    state=$(sinfo -h -o %t 2>/dev/null | head -n 1)
    case "$state" in idle|mix|alloc) echo "local SLURM up: $(sinfo -h -o '%N %G %t')"; return 0 ;;
      drain*|inval*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;; esac
    sleep 1
  done
  echo "local SLURM did not come up; see /var/log/slurm/" >&2
  return 1
}

stop() {
  for p in /run/slurmd.pid /run/slurmctld.pid; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
