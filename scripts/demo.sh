#!/usr/bin/env bash
# The main job on the embedded default: build, then measure every format and scale selector on the
# built-in tensor set (and on ../shared/models/stories260K when it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build
./build/mixq formats
echo
./build/mixq qerror
if [ -d ../shared/models/stories260K ]; then
  echo
  ./build/mixq qerror --model ../shared/models/stories260K
fi
