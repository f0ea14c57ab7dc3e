#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the tests (Debian's slurm-wlm + munge, as root):
#   local_cluster.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and slurmd, and waits
#                                until the node takes jobs; prints the SLURM_CONF to export
#   local_cluster.sh stop DIR    cancels its jobs and stops the daemons it started
# Exit 77 when not root.
set -euo pipefail
cmd=${1:?start or stop}
dir=$(realpath -m "${2:?a state directory}")

stop() {
  # jobs first (their steps and processes), then the daemons
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
    SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null | xargs -r env SLURM_CONF="$dir/slurm.conf" scancel 2>/dev/null || true
    sleep 1
  fi
  local pids=()
  for file in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
    if [ -f "$file" ]; then pids+=("$(cat "$file")"); fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do  # (slurmctld saves its state first: wait, then insist)
    local alive=0
    for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    [ "$alive" = 1 ] || return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

if [ "$cmd" = stop ]; then stop; exit 0; fi

if [ "$(id -u)" -ne 0 ]; then echo "local_cluster.sh: needs root (slurmd, and munged as the munge user)" >&2; exit 77; fi
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "local_cluster.sh: $tool not found (scripts/install-deps.sh installs slurm-wlm)" >&2; exit 1; }
done
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 755 "$dir"  # (munged runs as the munge user: every directory above must be open to it)
chown munge:munge "$dir/munge"
host=$(hostname -s)
cat > "$dir/slurm.conf" <<CONF
ClusterName=mixq-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$((16817 + RANDOM % 1000))
SlurmdPort=$((17818 + RANDOM % 1000))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
runuser -u munge -- munged --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
  --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" --force
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  case "$state" in idle*|mix*|alloc*) echo "SLURM_CONF=$dir/slurm.conf"; exit 0 ;; esac
  sleep 1
done
echo "local_cluster.sh: the node did not come up (state '${state:-none}'); logs in $dir" >&2
stop
exit 1
