#!/usr/bin/env bash
# Builds everything and runs the whole test suite (ctest prints its summary; non-zero on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build
(cd build && ctest --output-on-failure --timeout 600 -j "$(nproc)")

# The CPU kernels also compile unoptimized (-O0): an intrinsic's immediate must not depend on a loop
# being unrolled.
cmake -S . -B build-debug -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMIXQ_TESTS=OFF -DMIXQ_BENCH=OFF -DMIXQ_CUDA=OFF >/dev/null
cmake --build build-debug --target mixq_kernels_cpu --parallel "$(nproc)"

# Fuzz the parsers for a bounded time (libFuzzer + ASan + UBSan; clang builds them separately).
if command -v clang++ >/dev/null; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DMIXQ_FUZZ=ON -DMIXQ_CUDA=OFF >/dev/null
  cmake --build build-fuzz --parallel "$(nproc)"
  for corpus in tests/fuzz/corpus/*/; do
    target=$(basename "$corpus")
    work=$(mktemp -d)
    cp "$corpus"* "$work"/
    echo "fuzzing $target for ${MIXQ_FUZZ_SECONDS:-45} s"
    if ! (cd "$work" && "$OLDPWD/build-fuzz/tests/fuzz/fuzz_$target" "$work" \
          -max_total_time="${MIXQ_FUZZ_SECONDS:-45}" -max_len=4096 > "$work/log" 2>&1); then
      tail -n 40 "$work/log"
      echo "fuzz_$target found a failing input (above; the file is in $work)" >&2
      exit 1
    fi
    grep -E "^Done" "$work/log" || true
    rm -rf "$work"
  done
fi
