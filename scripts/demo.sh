#!/usr/bin/env bash
# The main job on the embedded default: build, make a synthetic Nemotron-H checkpoint (hybrid
# Mamba-2 + attention + latent MoE, 170 M parameters, BF16), describe and check it, then measure
# every format and scale selector on its weights (and on ../shared/models/stories260K when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build
./build/mixq formats
echo
./build/mixq synth --arch nemotron_h --preset small --out out/nemotron_h-small --force
echo
./build/mixq inspect out/nemotron_h-small
echo
./build/mixq qerror --model out/nemotron_h-small
if [ -d ../shared/models/stories260K ]; then
  echo
  ./build/mixq qerror --model ../shared/models/stories260K
  echo
  ./build/mixq eval --model ../shared/models/stories260K \
    --data ../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin --ctx 512
fi
if [ -d ../shared/models/nemotron-h-tiny ]; then
  echo
  ./build/mixq eval --model ../shared/models/nemotron-h-tiny \
    --data ../shared/data/tinystories/TinyStories-valid-reduced.txt --ctx 512
fi
