// OCP Microscaling (MX v1.0) weights: blocks of 32 along K share a power-of-two E8M0 scale.
//   shared exponent X = floor(log2(block amax)) − emax(element)   (emax: E2M1 2, E4M3 8)
//   element = RNE, saturating, of w / 2^X;  value = element · 2^X
// MXFP4 elements are E2M1 (packed two per byte, low nibble even); MXFP8 elements are E4M3.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "formats/code_bytes.hpp"
#include "formats/format_traits.hpp"
#include "formats/weight_view.hpp"

namespace mixq {

inline constexpr int kMxBlock = 32;

struct mx_weight {
  format_id format = format_id::mxfp4;  // mxfp4 or mxfp8
  int64_t rows = 0, cols = 0;
  code_bytes elements;  // mxfp4: [rows, cols/2] nibbles; mxfp8: [rows, cols] E4M3
  code_bytes scales;    // [rows, cols/32] E8M0 bits
};

// The E8M0 shared exponent of a block with maximum magnitude `amax` (-127 for an all-zero block).
int mx_shared_exponent(float amax, format_id format);

// Quantizes one 32-block: returns its E8M0 scale bits, writes 32 element codes (unpacked) to codes.
uint8_t mx_quantize_block(const float* x, format_id format, uint8_t* codes);

// Moves the unpacked element codes of a whole tensor into q.elements (packing MXFP4 nibbles).
void mx_store_elements(mx_weight& q, code_bytes& codes);

mx_weight mx_quantize(const weight_view& w, format_id format, nonfinite_policy nonfinite = nonfinite_policy::reject);
void mx_dequantize(const mx_weight& q, std::span<float> out);

}  // namespace mixq
