// Fast CPU quantizers: OpenMP over blocks / rows, reading BF16 / F16 / F32 in place, with loops
// written for the compiler's vectorizer and, for the NVFP4 and FP8 hot paths, AVX-512 kernels
// (quantize_nvfp4.cpp, quantize.cpp). Each returns exactly (bit for bit) what the scalar
// reference in formats/ returns for the same values widened to fp32; tests/kernels check it.
#pragma once

#include <span>

#include "formats/fp8.hpp"
#include "formats/mx.hpp"
#include "formats/nf4.hpp"
#include "formats/nvfp4.hpp"
#include "formats/weight_fake_quant.hpp"
#include "kernels/cpu/source_matrix.hpp"

namespace mixq::cpu {

// NVFP4 mse_multiplier over BF16 (F16) takes its candidate codes from a table by the block max's
// 7 (10) mantissa bits from this many blocks on (the table's exact build then pays for itself).
inline constexpr int64_t kNvfp4MultiplierTableBlocks = 8192;
inline constexpr int64_t kNvfp4MultiplierTableBlocksF16 = 8 * kNvfp4MultiplierTableBlocks;
// The NVFP4 MSE searches over BF16 (with AVX2) take their error estimates from a table of every
// term (~40 KiB, ~10 µs to build) from this many blocks on.
inline constexpr int64_t kNvfp4TermTableBlocks = 8192;
nvfp4_weight nvfp4_quantize(const source_matrix& w, const nvfp4_options& options = {});
fp8_weight fp8_quantize(const source_matrix& w, const fp8_options& options = {});
mx_weight mx_quantize(const source_matrix& w, format_id format, nonfinite_policy nonfinite = nonfinite_policy::reject);
nf4_weight nf4_quantize(const source_matrix& w, nonfinite_policy nonfinite = nonfinite_policy::reject);

void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out);
void fp8_dequantize(const fp8_weight& q, std::span<float> out);
void mx_dequantize(const mx_weight& q, std::span<float> out);
void nf4_dequantize(const nf4_weight& q, std::span<float> out);

// One F32 row's squared FP8 error under each candidate scale fp8_scale_for_amax(amax · m), summed
// as fp8_row_sq_error sums it, bit for bit (the MSE searches' exact step).
void fp8_row_errors(const float* x, int64_t n, float amax, std::span<const float> multipliers, double* err);

// The fast twin of mixq::fake_quant_weight.
void fake_quant_weight(const source_matrix& w, const weight_quant_spec& spec, std::span<float> out);

}  // namespace mixq::cpu
