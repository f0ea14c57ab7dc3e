#!/usr/bin/env bash
# The main job on the embedded default: build, make a synthetic Nemotron-H checkpoint (hybrid
# Mamba-2 + attention + latent MoE, 170 M parameters, BF16), plan and quantize it with NVIDIA's released
# Nemotron 3 Super mix (routed experts NVFP4, shared experts and Mamba projections FP8, FP8 KV cache,
# the rest BF16) on the built-in calibration text, verify the export by re-loading it, and check it
# the way vLLM will. With ../shared present, the same on the real trained models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build
./build/mixq formats
echo
./build/mixq synth --arch nemotron_h --preset small --out out/nemotron_h-small --force
echo
./build/mixq plan --model out/nemotron_h-small --recipe nemotron_super_nvfp4_release
echo
./build/mixq quantize --model out/nemotron_h-small --recipe nemotron_super_nvfp4_release \
  --out out/nemotron_h-small-nvfp4 --force
echo
./build/mixq inspect out/nemotron_h-small-nvfp4
tinystories=../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin
if [ -d ../shared/models/stories260K ]; then
  echo
  ./build/mixq qerror --model ../shared/models/stories260K
  echo
  ./build/mixq quantize --model ../shared/models/stories260K --recipe llama_nvfp4 --out out/stories260K-nvfp4 \
    --force --eval "$tinystories" --eval-ctx 512
fi
if [ -d ../shared/models/nemotron-h-tiny ]; then
  echo
  ./build/mixq quantize --model ../shared/models/nemotron-h-tiny --recipe nemotron_super_nvfp4_release \
    --out out/nemotron-h-tiny-nvfp4 --force --eval "$tinystories" --eval-ctx 512
fi
