# Sourced by the command-line tests (test_*_cli.sh, test_cli_errors.sh) after `set -euo pipefail`:
# mixq and src from the arguments, model (stories260K; exit 77 = skipped where ../shared is absent,
# a failure in CI), a scratch directory tmp removed on exit, and fail.
mixq=$1
src=$2
model=$src/../shared/models/stories260K
if [ ! -d "$model" ]; then
  if [ "${CI:-}" = true ]; then echo "FAIL: $model is missing"; exit 1; fi
  echo "skip: $model is missing"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
