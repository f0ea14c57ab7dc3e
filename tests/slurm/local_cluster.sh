#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the tests (Debian's slurm-wlm + munge, as root):
#   local_cluster.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and slurmd, and waits
#                                until the node takes jobs; prints the SLURM_CONF to export
#   local_cluster.sh stop DIR    stops the daemons it started
set -euo pipefail
cmd=${1:?start or stop}
dir=$(realpath -m "${2:?a state directory}")

stop() {
  for pid in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  sleep 1
}

if [ "$cmd" = stop ]; then stop; exit 0; fi

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
cp "$dir/munge/munged.pid" "$dir/munged.pid" 2>/dev/null || sleep 1 && cp "$dir/munge/munged.pid" "$dir/munged.pid"
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
