#!/usr/bin/env bash
# The whole GoogleTest suite under AddressSanitizer + UndefinedBehaviorSanitizer (GCC, -O1: the
# kernels' hot loops are not unrolled there, so this also builds them as an unoptimized build
# would). Any report fails its test. Slower than scripts/test.sh (~20 min to build on 2 cores);
# not part of CI. Usage: scripts/sanitize.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-sanitize}
flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"

if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else bash scripts/install-deps.sh || true; fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXQ_CUDA=OFF -DMIXQ_BENCH=OFF \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$build" --parallel "$(nproc)"
# (Open MPI keeps its own allocations to the end: leak reports would be its, not ours)
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$build" && ctest --output-on-failure --timeout 900 -j "$(nproc)")
