// NVFP4 weights: E2M1 values in blocks of 16 along K, one E4M3 scale per block, one FP32 global
// scale per tensor. Dequantized value = e2m1 × weight_scale[block] × weight_scale_2.
// Spec: shared/reference/autoquantize-numerics.md §2.2–2.3 (export path of ModelOpt's
// NVFP4QTensor), §3 (MSE), §4 (four-over-six).
//
// This file is the scalar reference. kernels/cpu has the fast paths, which must match it bit for bit.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "formats/code_bytes.hpp"
#include "formats/weight_view.hpp"

namespace mixq {

inline constexpr int kNvfp4Block = 16;
inline constexpr float kNvfp4Normalizer = 448.0f;            // E4M3 max: largest block scale
inline constexpr float kNvfp4FourOverSixNormalizer = 256.0f; // leaves room for the ×1.5 of M=4
inline constexpr float kNvfp4MinBlockScale = 0.001953125f;   // 2^-9, the smallest E4M3 subnormal

// How each block's E4M3 scale is chosen.
enum class nvfp4_selector : uint8_t {
  max,                // block max -> 6
  mse_multiplier,     // block max × c, c over a multiplier list, least squared error
  mse_fp8_sweep,      // every positive finite E4M3 code (126), least squared error
  four_over_six,      // normalizer 256; block max -> 6 or -> 4, whichever has lower error
  mse_four_over_six,  // the FP8 sweep under both normalizers (448, 256); the tensor keeps the better
};

std::string_view selector_name(nvfp4_selector s);

// ModelOpt's default multiplier candidates for the weight MSE search: 0.25 .. 4.0, 39 values.
std::span<const float> default_mse_multipliers();

struct nvfp4_options {
  nvfp4_selector selector = nvfp4_selector::max;
  float global_amax = 0.0f;              // > 0: use this (shared by fused siblings); else max|W|
  std::span<const float> multipliers{};  // for mse_multiplier; empty = default_mse_multipliers()
  nonfinite_policy nonfinite = nonfinite_policy::reject;
};

struct nvfp4_weight {
  int64_t rows = 0, cols = 0;
  float global_scale = 0.0f;          // weight_scale_2 = global_amax / (6 · normalizer)
  float normalizer = kNvfp4Normalizer;
  code_bytes packed;        // [rows, cols/2] E2M1 nibbles, low nibble = even element
  code_bytes block_scales;  // [rows, cols/16] E4M3 bits

  int64_t blocks_per_row() const { return cols / kNvfp4Block; }
};

// ---- the per-block arithmetic, shared by every implementation --------------------------------

// weight_scale_2 for a tensor whose (shared) amax is g; an all-zero tensor gets amax 1.
float nvfp4_global_scale(float global_amax, float normalizer);
// FP32 block scales before E4M3 rounding, in ModelOpt's exact float32 operation order (so exports
// match it bit for bit), each clamped to [2^-9, 448]:
//  - the max rule (ModelOpt's dynamic path): a / (6 · weight_scale_2), 1 for an all-zero block;
//  - scales searched from a block amax a = max·c (its static path: MSE multipliers, 4/6):
//    ((a/6 or 1 if that is 0) · normalizer) / (global_amax / 6).
inline float nvfp4_max_block_scale_f32(float block_amax, float weight_scale_2);
inline float nvfp4_block_scale_f32(float block_amax, float global_amax, float normalizer);
// Squared error of a 16-block quantized with the dequantization step `scale` =
// weight_scale·weight_scale_2, in float, summed as a fixed tree (lanes j and j+8, then j+4, ...)
// so that vectorized implementations reproduce it bit for bit.
inline float nvfp4_block_sq_error(const float* w, float scale);
// One magnitude a's term of that error: (a − level · scale)², level its E2M1 rounding of a / scale.
inline float nvfp4_sq_error_term(float a, float scale);
// E2M1 nibble of w under `scale` (sign bit set for w < 0, as ModelOpt does).
inline uint8_t nvfp4_code(float w, float scale);

// The E4M3 scale bits the selector picks for one 16-block x with maximum magnitude block_amax.
// (mse_four_over_six picks per block like mse_fp8_sweep; the normalizer choice is per tensor.)
uint8_t nvfp4_choose_block_scale(const float* x, float block_amax, float global_amax, float normalizer,
                                 nvfp4_selector selector, std::span<const float> multipliers);
// Packs the 16 codes of x under `scale` into 8 bytes at dst; returns the block's squared error.
float nvfp4_encode_block(const float* x, float scale, uint8_t* dst);

// The value of each NVFP4 nibble as the runtimes dequantize it: E2M1, except that 0x8 (the code
// of a small negative that rounds to zero) reads as +0, as in ModelOpt's NVFP4QTensor.
inline constexpr float kNvfp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                           0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// ---- whole tensors ----------------------------------------------------------------------------

nvfp4_weight nvfp4_quantize(const weight_view& w, const nvfp4_options& options = {});
// out: rows·cols floats.
void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out);

}  // namespace mixq

#include "formats/minifloat.hpp"

namespace mixq {
inline float nvfp4_clamp_block_scale(float s) {
  s = s < kNvfp4MinBlockScale ? kNvfp4MinBlockScale : s;
  return s > 448.0f ? 448.0f : s;
}

inline float nvfp4_max_block_scale_f32(float block_amax, float weight_scale_2) {
  const float s = block_amax / (6.0f * weight_scale_2);
  return nvfp4_clamp_block_scale(s == 0.0f ? 1.0f : s);
}

// The global amax the scales use: the weight's (or the static one), but 1 for an all-zero weight
// and for one whose max is below 2^-100, where the per-code steps would underflow to 0 (its values
// all take code 0 then).
inline float nvfp4_scale_amax(float global_amax) { return global_amax > 0x1p-100f ? global_amax : 1.0f; }

inline float nvfp4_block_scale_f32(float block_amax, float global_amax, float normalizer) {
  const float g = nvfp4_scale_amax(global_amax);
  float t = block_amax / 6.0f;
  if (t == 0.0f) t = 1.0f;  // ModelOpt substitutes 1 before rescaling: an all-zero block gets 6·m/g
  return nvfp4_clamp_block_scale(t * normalizer / (g / 6.0f));
}

inline float nvfp4_sq_error_term(float a, float scale) {
  const float d = e2m1_round_magnitude(a / scale) * scale;
  return (a - d) * (a - d);
}

inline float nvfp4_block_sq_error(const float* w, float scale) {
  float t[kNvfp4Block];
  for (int i = 0; i < kNvfp4Block; ++i) t[i] = nvfp4_sq_error_term(w[i] < 0.0f ? -w[i] : w[i], scale);
  for (int width = kNvfp4Block / 2; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) t[i] += t[i + width];
  return t[0];
}

inline uint8_t nvfp4_code(float w, float scale) {
  const float a = (w < 0.0f ? -w : w) / scale;
  return static_cast<uint8_t>((w < 0.0f ? 0x8 : 0x0) | e2m1_magnitude_code(a));
}
}  // namespace mixq
