#!/usr/bin/env bash
# Builds everything and runs the whole test suite (ctest prints its summary; non-zero on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build
cd build
ctest --output-on-failure --timeout 600 -j "$(nproc)"
