// NormalFloat-4 (QLoRA, Dettmers et al. 2023): 16 quantiles of N(0,1) normalized to [-1, 1],
// blocks of 64 along K scaled by their absmax, stored as FP16. value = codebook[code] · absmax.
// Codes are the nearest codebook entry; an input exactly between two entries takes the lower one
// (bitsandbytes' dQuantizeNF4 compares with '>').
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "formats/code_bytes.hpp"
#include "formats/weight_view.hpp"

namespace mixq {

inline constexpr int kNf4Block = 64;
std::span<const float> nf4_codebook();  // 16 values, ascending; code 7 is 0
uint8_t nf4_code(float normalized);     // normalized = w / absmax, in [-1, 1]

struct nf4_weight {
  int64_t rows = 0, cols = 0;
  code_bytes packed;             // [rows, cols/2], low nibble = even element
  std::vector<uint16_t> scales;  // [rows, cols/64] FP16 absmax
};

// Quantizes one 64-block into 32 packed bytes at dst; returns its FP16 scale bits.
uint16_t nf4_quantize_block(const float* x, uint8_t* dst);

nf4_weight nf4_quantize(const weight_view& w, nonfinite_policy nonfinite = nonfinite_policy::reject);
void nf4_dequantize(const nf4_weight& q, std::span<float> out);

}  // namespace mixq
