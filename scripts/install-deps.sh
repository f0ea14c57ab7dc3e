#!/usr/bin/env bash
# Installs the Debian bookworm packages mixq builds and tests with. Idempotent: installs only
# what is missing, and does nothing (not even `apt-get update`) when everything is present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git python3
  libopenmpi-dev openmpi-bin            # MPI runtime for the distributed pipeline
  libeigen3-dev                         # dense linear algebra (matrix expressions in forward/backward)
  libopenblas-openmp-dev                # sgemm behind Eigen: AVX2 / AVX-512 kernels picked at load time
  libhdf5-dev                           # run-directory stats / scores store
  libyaml-cpp-dev                       # recipes
  libfmt-dev libspdlog-dev              # formatting and logging
  libgtest-dev libgmock-dev             # unit tests
  libbenchmark-dev                      # bench/
  libglpk-dev                           # test-only: proves the search solver optimal
  libcli11-dev                          # the mixq command line
  nlohmann-json3-dev                    # safetensors headers, HF configs, goldens
  libsentencepiece-dev                  # SentencePiece tokenizers
  libomp-dev clang                      # OpenMP runtime for clang; clang builds the fuzz targets
  slurmctld slurmd slurm-client munge   # SLURM: launch/slurm, tested on a one-node cluster
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo $0)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
