#!/usr/bin/env bash
# launch/slurm/quantize.sbatch on a one-node SLURM cluster started here (tests/slurm/local_cluster.sh):
# a 2-task job writes the checkpoint one process writes, byte for byte, and a job whose processes
# all fail exits non-zero with mixq's message in its log, without hanging.
# Usage: test_slurm_quantize.sh MIXQ SOURCE_DIR. Exit 77 (skipped) without slurm-wlm, unless CI=true.
set -euo pipefail
mixq=$(realpath "$1")
src=$(realpath "$2")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm-wlm / munge not installed (scripts/install-deps.sh installs them)"
  [ "${CI:-}" = true ] && exit 1 || exit 77
fi
if [ "$(id -u)" -ne 0 ]; then echo "skipped: the one-node cluster needs root"; exit 77; fi
work=$(mktemp -d /tmp/mixq-slurm-XXXXXX)
chmod 755 "$work"  # (munged runs as the munge user)
cleanup() { bash "$src/tests/slurm/local_cluster.sh" stop "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT
bash "$src/tests/slurm/local_cluster.sh" start "$work/cluster"
export SLURM_CONF=$work/cluster/slurm.conf
export OMP_NUM_THREADS=1

"$mixq" synth --arch llama --out "$work/model" >/dev/null
"$mixq" quantize --model "$work/model" --recipe llama_nvfp4 --out "$work/one" --quiet >/dev/null

timeout 240 sbatch --wait --time=4 --ntasks 2 --chdir="$work" --output="$work/job.out" --export=ALL,MIXQ="$mixq" \
  "$src/launch/slurm/quantize.sbatch" --model "$work/model" --recipe llama_nvfp4 --out "$work/two" --quiet
grep -q "processes:    2 (started by srun" "$work/job.out" || { cat "$work/job.out"; echo "FAIL: not 2 processes"; exit 1; }
diff -r "$work/one" "$work/two" || { echo "FAIL: the 2-task export differs from one process's"; exit 1; }

# --out exists: every process refuses, the job fails and says why once
if timeout 240 sbatch --wait --time=4 --ntasks 2 --chdir="$work" --output="$work/fail.out" --export=ALL,MIXQ="$mixq" \
    "$src/launch/slurm/quantize.sbatch" --model "$work/model" --recipe llama_nvfp4 --out "$work/two" --quiet; then
  echo "FAIL: the job succeeded"; exit 1
fi
[ "$(grep -c "mixq: error: .*two: already exists" "$work/fail.out")" = 1 ] || { cat "$work/fail.out"; echo "FAIL: message"; exit 1; }
echo "ok: 2 SLURM tasks wrote one process's bytes; a failing job exited non-zero with one message"
