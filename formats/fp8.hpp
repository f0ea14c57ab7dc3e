// FP8 E4M3 weights with FP32 scales, per tensor or per output channel (row).
// weight_scale = amax / 448; code = E4M3_satfinite_RNE(w / weight_scale); value = code · weight_scale.
// Spec: shared/reference/autoquantize-numerics.md §2.5, §3 (multiplier MSE).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "formats/code_bytes.hpp"
#include "formats/weight_view.hpp"

namespace mixq {

inline constexpr float kE4M3Max = 448.0f;

enum class fp8_granularity : uint8_t { per_tensor, per_channel };
enum class fp8_selector : uint8_t { max, mse };  // mse: amax × c over the MSE multipliers, least error

struct fp8_options {
  fp8_granularity granularity = fp8_granularity::per_tensor;
  fp8_selector selector = fp8_selector::max;
  float amax = 0.0f;                     // > 0: per-tensor amax to use (shared by fused siblings)
  std::span<const float> multipliers{};  // empty = default_mse_multipliers()
  nonfinite_policy nonfinite = nonfinite_policy::reject;
};

struct fp8_weight {
  int64_t rows = 0, cols = 0;
  std::vector<float> scales;   // 1 (per tensor) or rows (per channel)
  code_bytes codes;  // [rows, cols] E4M3 bits

  float scale_of_row(int64_t r) const { return scales.size() == 1 ? scales[0] : scales[size_t(r)]; }
};

// amax / 448; 1 for an all-zero (amax <= 2^-24) weight, as ModelOpt exports it.
float fp8_scale_for_amax(float amax);

// The error when no MSE candidate's squared error is finite (amax · multiplier past the float
// range: an infinite scale); row < 0 for a per-tensor search.
format_error fp8_no_finite_candidate(std::string_view tensor, int64_t row, float amax);
inline uint8_t fp8_code(float w, float scale);

// Squared error of FP8 with `scale`: per row in double over 8 interleaved partial sums (lane j
// takes elements j, j+8, ...; lanes added in order at the end), then the row sums in row order.
// Every implementation keeps this order, so MSE choices agree bit for bit.
inline double fp8_row_sq_error(const float* row, int64_t n, float scale);
double fp8_sq_error(const weight_view& w, float scale);

fp8_weight fp8_quantize(const weight_view& w, const fp8_options& options = {});
void fp8_dequantize(const fp8_weight& q, std::span<float> out);

}  // namespace mixq

#include "formats/minifloat.hpp"

namespace mixq {
inline uint8_t fp8_code(float w, float scale) { return e4m3_encode(w / scale); }

inline double fp8_row_sq_error(const float* row, int64_t n, float scale) {
  double lane[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      const double d = double(row[i + j]) - double(e4m3_decode(fp8_code(row[i + j], scale)) * scale);
      lane[j] += d * d;
    }
  for (int j = 0; i + j < n; ++j) {
    const double d = double(row[i + j]) - double(e4m3_decode(fp8_code(row[i + j], scale)) * scale);
    lane[j] += d * d;
  }
  double err = 0.0;
  for (double l : lane) err += l;
  return err;
}
}  // namespace mixq
