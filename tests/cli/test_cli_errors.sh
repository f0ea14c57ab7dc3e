#!/usr/bin/env bash
# Bad command lines: each refused up front with a message naming the option or path, exit non-zero,
# nothing written, nothing of the user's deleted.
# Usage: test_cli_errors.sh MIXQ SOURCE_DIR
set -euo pipefail
source "$(dirname "$0")/cli_test_setup.sh"

# refused: the command, then the text its error must hold
refused() {
  local want=$1; shift
  if "$@" > "$tmp/out.txt" 2> "$tmp/err.txt"; then fail "accepted: $*"; fi
  grep -qF -- "$want" "$tmp/err.txt" || fail "$*: no '$want' in: $(head -c 400 "$tmp/err.txt")"
  [ "$(wc -c < "$tmp/err.txt")" -lt 600 ] || fail "$*: an error of $(wc -c < "$tmp/err.txt") bytes"
}

q=(quantize --model "$model" --recipe llama_fp8 --out "$tmp/q")
refused "--samples: Value 0 not in range" "$mixq" "${q[@]}" --samples 0
refused "--samples: Value -1 not in range" "$mixq" "${q[@]}" --samples -1
refused "--seq-len: Value 1 not in range" "$mixq" "${q[@]}" --seq-len 1
refused "--eval-ctx: Value 0 not in range" "$mixq" "${q[@]}" --eval-ctx 0
refused "0 is not a budget" "$mixq" quantize --model "$model" --recipe auto_nvfp4_fp8_5p4bits --out "$tmp/q" \
  --effective-bits 0
refused "--measure-front measures a search's front; built-in:llama_fp8 has fixed rules" "$mixq" "${q[@]}" --measure-front
mkdir "$tmp/calib.txt"
refused "calib.txt: a directory" "$mixq" "${q[@]}" --calib "$tmp/calib.txt"
printf '{"text": "Once upon a time."}\n{"text": "a\\ud800"}\n' > "$tmp/bad.jsonl"
refused "bad.jsonl:2: not valid JSON" "$mixq" "${q[@]}" --calib "$tmp/bad.jsonl"
[ ! -e "$tmp/q" ] || fail "a refused command line wrote $tmp/q"
refused "--ctx: Value 0 not in range" "$mixq" eval --model "$model" \
  --data "$src/../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin" --ctx 0

# --force replaces --out whole: an --out holding the model is refused, and the model stays
mkdir -p "$tmp/parent" && cp -r "$model" "$tmp/parent/model"
refused "contains the source checkpoint" "$mixq" quantize --model "$tmp/parent/model" --recipe llama_fp8 \
  --out "$tmp/parent" --force
[ -f "$tmp/parent/model/config.json" ] || fail "the model under --out was deleted"
refused "is the export" "$mixq" "${q[@]}" --run-dir "$tmp/q"

# inspect: a tensor-parallel degree of 0, and findings that cannot be written
"$mixq" quantize --model "$model" --recipe llama_nvfp4 --out "$tmp/nv" > /dev/null 2>&1
refused "--tp: Value 0 not in range 1 to 65536" "$mixq" inspect "$tmp/nv" --tp 0
refused "cannot write the findings" "$mixq" inspect "$tmp/nv" --json "$tmp/no/such/dir/x.json"
"$mixq" inspect "$tmp/nv" --json "$tmp/nv.json" > /dev/null || fail "inspect of a clean export failed"
[ -s "$tmp/nv.json" ] || fail "inspect --json wrote nothing"
# qerror: a baseline that is no format, or not one of those measured
refused "--baseline: unknown format 'bogus'" "$mixq" qerror --formats nvfp4/max,fp8/max --baseline bogus
refused "--baseline nvfp4/four_over_six is not among --formats" "$mixq" qerror --formats nvfp4/max,fp8/max \
  --baseline nvfp4/four_over_six
# more calibration sequences asked than the data holds: run, and say so
"$mixq" quantize --model "$model" --recipe llama_fp8 --out "$tmp/few" --samples 1000 > "$tmp/few.txt" 2>&1 ||
  fail "quantize --samples 1000: $(tail -3 "$tmp/few.txt")"
grep -q "(of 1000 asked: the data holds no more)" "$tmp/few.txt" || fail "no note of the samples cut: $(grep calibration: "$tmp/few.txt")"
# an FP8 KV cache with no quantized linear: the export could not carry its scheme
printf 'name: kv_only\nquantize:\n  default: bf16\nkv_cache: fp8\n' > "$tmp/kv_only.yaml"
refused "kv_cache: fp8 with every linear BF16" "$mixq" quantize --model "$model" --recipe "$tmp/kv_only.yaml" --out "$tmp/kv"
[ ! -e "$tmp/kv" ] || fail "a refused KV-only run wrote $tmp/kv"
# a seed that would wrap around; qerror of an export (its scale tensors are no weights)
refused "-1 is not a seed" "$mixq" synth --arch llama --out "$tmp/s" --seed -1
refused "already quantized" "$mixq" qerror --model "$tmp/nv"
echo "cli errors: ok"
