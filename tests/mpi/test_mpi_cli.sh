#!/usr/bin/env bash
# The mixq command line under mpirun: `mixq eval` across 2 processes prints one process's figures
# (once), and a subcommand that does not run across processes is refused once, with exit code 2.
# Usage: test_mpi_cli.sh MIXQ MPIEXEC
set -euo pipefail
mixq=$1
mpiexec=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

"$mixq" synth --arch nemotron_h --out "$work/model" >/dev/null
python3 -c 'import struct, sys; open(sys.argv[1], "wb").write(struct.pack("<300H", *[(i * 37 + 11) % 200 for i in range(300)]))' \
  "$work/tokens.u16.bin"
"$mixq" eval --model "$work/model" --data "$work/tokens.u16.bin" --ctx 32 > "$work/one.txt"
"$mpiexec" -np 2 --oversubscribe "$mixq" eval --model "$work/model" --data "$work/tokens.u16.bin" --ctx 32 > "$work/two.txt"
for line in "mean NLL" "ppl:"; do
  [ "$(grep -c "^$line" "$work/two.txt")" = 1 ] || { cat "$work/two.txt"; echo "FAIL: '$line' not printed once"; exit 1; }
  diff <(grep "^$line" "$work/one.txt") <(grep "^$line" "$work/two.txt") || { echo "FAIL: $line differs"; exit 1; }
done

set +e
"$mpiexec" -np 2 --oversubscribe "$mixq" synth --out "$work/refused" > "$work/refused.txt" 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] || { echo "FAIL: synth under mpirun was not refused"; exit 1; }
[ "$(grep -c "only \`mixq quantize\` and \`mixq eval\` run across processes" "$work/refused.txt")" = 1 ] ||
  { cat "$work/refused.txt"; echo "FAIL: the refusal is not said once"; exit 1; }
[ ! -e "$work/refused" ] || { echo "FAIL: synth wrote under mpirun"; exit 1; }
# processes started with different command lines (MPMD): told once, no MPI error, exit 2
set +e
timeout 120 "$mpiexec" --oversubscribe -np 1 "$mixq" eval --model "$work/model" --data "$work/tokens.u16.bin" --ctx 32 \
  : -np 1 "$mixq" eval --model "$work/model" --data "$work/tokens.u16.bin" --ctx 16 > "$work/mixed.txt" 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { cat "$work/mixed.txt"; echo "FAIL: mismatched processes ran (rc $rc)"; exit 1; }
[ "$(grep -c "process 1 was started with other arguments than process 0" "$work/mixed.txt")" = 1 ] ||
  { cat "$work/mixed.txt"; echo "FAIL: the mismatch is not said once"; exit 1; }
echo "ok: eval across 2 processes gives one process's figures; synth under mpirun and mismatched command lines refused"
