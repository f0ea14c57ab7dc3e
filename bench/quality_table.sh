#!/usr/bin/env bash
# Perplexity of one model under every fixed recipe that matters: BF16, FP8 (W8A8, with and without
# the FP8 KV cache), NVFP4 weight-only (W4A16) and W4A4, each NVFP4 with every weight scale selector.
# Every linear except lm_head is quantized; a layer a format cannot hold stays BF16 (the summary
# says which). Calibration: the built-in text (not the evaluation data). Prints a Markdown table.
# Usage: bench/quality_table.sh [MODEL_DIR] [EVAL_DATA] [CTX]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/models/stories260K}
data=${2:-../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin}
ctx=${3:-512}
mixq=${MIXQ:-./build/mixq}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

row() {  # name format selector kv
  local name=$1 format=$2 selector=$3 kv=$4 weights=""
  [ -n "$selector" ] && weights="      weights: $selector"
  cat > "$work/$name.yaml" <<YAML
name: $name
quantize:
  rules:
    - match: lm_head
      format: bf16
    - match: "*router*"
      format: bf16
    - match: "*"
      format: $format
$weights
kv_cache: $kv
YAML
  "$mixq" quantize --model "$model" --recipe "$work/$name.yaml" --out "$work/$name" --quiet \
    --eval "$data" --eval-ctx "$ctx" > "$work/$name.log"
  local ppl bits size
  ppl=$(sed -n 's/.*fake-quant \([0-9.]*\), export \([0-9.]*\).*/\2/p' "$work/$name.log")
  bits=$(sed -n 's/^effective bits over all linears: //p' "$work/$name.log")
  size=$(sed -n 's/^checkpoint size: .* -> \(.*\) (.*/\1/p' "$work/$name.log")
  printf '| %-28s | %9s | %6s | %10s |\n' "$name" "$ppl" "$bits" "$size"
  rm -rf "$work/$name" "$work/$name.run"
}

source_ppl=$("$mixq" eval --model "$model" --data "$data" --ctx "$ctx" | sed -n 's/^ppl: *//p')
echo "model: $model   data: $data   ctx: $ctx"
echo
printf '| %-28s | %9s | %6s | %10s |\n' "recipe" "ppl" "bits" "size"
printf '|%s|%s|%s|%s|\n' "------------------------------" "-----------" "--------" "------------"
printf '| %-28s | %9s | %6s | %10s |\n' "source (unquantized)" "$source_ppl" "-" "-"
row fp8_w8a8 fp8 max none
row fp8_w8a8_kv_fp8 fp8 max fp8
row fp8_w8a8_mse fp8 mse none
for selector in max mse mse_multiplier four_over_six mse+four_over_six; do
  row "nvfp4_w4a16_${selector/+/_}" nvfp4_w4a16 "$selector" none
done
for selector in max mse mse_multiplier four_over_six mse+four_over_six; do
  row "nvfp4_w4a4_${selector/+/_}" nvfp4 "$selector" none
done
