#!/usr/bin/env bash
# mixq plan from the command line: its JSON export size is what `mixq quantize` then writes, byte for
# byte; a config.json alone plans too; bad input is named and exits non-zero.
# Usage: test_plan_cli.sh MIXQ SOURCE_DIR
set -euo pipefail
source "$(dirname "$0")/cli_test_setup.sh"

"$mixq" plan --model "$model" --recipe llama_fp8 --json "$tmp/plan.json" > "$tmp/plan.txt"
grep -q '^export: ' "$tmp/plan.txt" || fail "no export line: $(cat "$tmp/plan.txt")"
"$mixq" quantize --model "$model" --recipe llama_fp8 --out "$tmp/out" > /dev/null 2>&1
planned=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["export_bytes"])' "$tmp/plan.json")
written=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["export_bytes"])' "$tmp/out.run/summary.json")
[ "$planned" = "$written" ] || fail "planned $planned bytes, quantize wrote $written"

# the recipe overrides quantize takes, plan takes too: the same export bytes under --layout and --samples
"$mixq" plan --model "$model" --recipe llama_nvfp4 --layout compressed-tensors --samples 3 --seq-len 100 \
  --json "$tmp/plan-ct.json" > "$tmp/plan-ct.txt"
grep -q 'each calibrates 3 of 3 sequences of 100 tokens' "$tmp/plan-ct.txt" || fail "plan --samples/--seq-len: $(cat "$tmp/plan-ct.txt")"
"$mixq" quantize --model "$model" --recipe llama_nvfp4 --layout compressed-tensors --samples 3 --seq-len 100 \
  --out "$tmp/ct" > /dev/null 2>&1 || fail "quantize --layout compressed-tensors failed"
planned=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["export_bytes"])' "$tmp/plan-ct.json")
written=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["export_bytes"])' "$tmp/ct.run/summary.json")
[ "$planned" = "$written" ] || fail "compressed-tensors: planned $planned bytes, quantize wrote $written"
if "$mixq" plan --model "$model" --recipe llama_nvfp4 --effective-bits 5 2> "$tmp/err.txt" > /dev/null; then
  fail "a budget for fixed rules was planned"
fi
grep -q 'needs a recipe with a search' "$tmp/err.txt" || fail "plan --effective-bits on fixed rules: $(cat "$tmp/err.txt")"

# a config.json alone (dtypes from torch_dtype)
"$mixq" plan --model "$src/tests/data/configs/nemotron3-super-120b-a12b.json" --recipe nemotron_super_nvfp4_release \
  --processes 16 > "$tmp/super.txt"
grep -q '123,611,033,088' "$tmp/super.txt" || fail "Super's parameter count: $(head -5 "$tmp/super.txt")"

# bad input: named, non-zero, nothing written
if "$mixq" plan --model "$tmp/nowhere" --recipe llama_fp8 2> "$tmp/err.txt"; then fail "a missing model was planned"; fi
grep -q "$tmp/nowhere" "$tmp/err.txt" || fail "the missing model is not named: $(cat "$tmp/err.txt")"
if "$mixq" plan --model "$model" --recipe no_such_recipe 2> "$tmp/err.txt"; then fail "an unknown recipe was planned"; fi
grep -q 'no_such_recipe' "$tmp/err.txt" || fail "the unknown recipe is not named: $(cat "$tmp/err.txt")"
mkdir "$tmp/broken" && cp "$model"/* "$tmp/broken/" && python3 - "$tmp/broken/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_hidden_layers"] += 1; json.dump(c, open(sys.argv[1], "w"))
PY
if "$mixq" plan --model "$tmp/broken" --recipe llama_fp8 2> "$tmp/err.txt"; then fail "a contradicting checkpoint was planned"; fi
grep -q 'does not match its config.json' "$tmp/err.txt" || fail "no mismatch message: $(cat "$tmp/err.txt")"
# an export given as the source: refused, by plan and by quantize, saying what it is
for cmd in plan "quantize --out $tmp/again"; do
  if "$mixq" $cmd --model "$tmp/out" --recipe llama_fp8 2> "$tmp/err.txt" > /dev/null; then
    fail "$cmd took an already quantized checkpoint"
  fi
  grep -q 'already quantized (quantization_config quant_method modelopt' "$tmp/err.txt" || fail "$cmd: $(cat "$tmp/err.txt")"
done
[ ! -e "$tmp/again" ] || fail "quantize wrote an output for a refused source"

# a budget the model cannot reach: planned, then refused as quantize would (exit 1)
tiny=$src/../shared/models/nemotron-h-tiny
if [ -d "$tiny" ]; then
  if "$mixq" plan --model "$tiny" --recipe auto_nemotron_nvfp4_fp8_5p0bits > "$tmp/out.txt" 2> "$tmp/err.txt"; then
    fail "an unreachable budget was planned without complaint"
  fi
  grep -q 'will refuse this' "$tmp/err.txt" || fail "no refusal: $(cat "$tmp/err.txt")"
  grep -q 'at the least' "$tmp/out.txt" || fail "the plan was not printed first: $(cat "$tmp/out.txt")"
fi
# layer by layer: the working copy is one layer; quantize refuses a search that way, before any work
"$mixq" plan --model "$model" --recipe llama_fp8 --layer-by-layer > "$tmp/lbl.txt" || fail "plan --layer-by-layer failed"
grep -q 'lm_head and one' "$tmp/lbl.txt" || fail "plan --layer-by-layer: $(cat "$tmp/lbl.txt")"
if "$mixq" quantize --model "$model" --recipe auto_nvfp4_fp8_6p0bits --layer-by-layer --out "$tmp/lbl" --quiet \
    2> "$tmp/err.txt" > /dev/null; then
  fail "quantize --layer-by-layer took a search"
fi
grep -q 'cannot run layer by layer' "$tmp/err.txt" || fail "no refusal: $(cat "$tmp/err.txt")"
[ ! -e "$tmp/lbl" ] && [ ! -e "$tmp/lbl.run" ] || fail "a refused layer-by-layer search left output"
echo "plan cli: ok"
