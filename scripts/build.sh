#!/usr/bin/env bash
# Installs the dependencies (when run as root and something is missing), configures and builds.
# Usage: scripts/build.sh [build-dir]      (env: MIXQ_CMAKE_ARGS for extra CMake options)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else bash scripts/install-deps.sh || true; fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MIXQ_CMAKE_ARGS:-}
cmake --build "$build" --parallel "$(nproc)"
