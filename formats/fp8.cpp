#include "formats/fp8.hpp"

#include <cmath>
#include <string>

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "formats/tensor_amax.hpp"

namespace mixq {

float fp8_scale_for_amax(float amax) {
  if (!(amax > 0x1p-24f)) return 1.0f;  // as ModelOpt exports an all-zero weight: amax taken as 448
  return amax / kE4M3Max;
}

format_error fp8_no_finite_candidate(std::string_view tensor, int64_t row, float amax) {
  return format_error(fmt::format(
      "tensor '{}'{}: no FP8 MSE candidate scale gives a finite error (amax {} times every multiplier is past "
      "the float range); use multipliers that keep amax · m below 3.4e38",
      tensor, row >= 0 ? fmt::format(" row {}", row) : std::string(), amax));
}

double fp8_sq_error(const weight_view& w, float scale) {
  double err = 0.0;
  for (int64_t r = 0; r < w.rows; ++r) err += fp8_row_sq_error(w.row(r), w.cols, scale);
  return err;
}

namespace {

// The scale for rows [r0, r1) of w, whose maximum is amax, under the selector (row: r0 per channel,
// -1 per tensor, for the error).
float choose_scale(const weight_view& w, int64_t r0, int64_t r1, float amax, fp8_selector selector,
                   std::span<const float> multipliers, int64_t row) {
  if (selector == fp8_selector::max) return fp8_scale_for_amax(amax);
  const weight_view part{w.row(r0), r1 - r0, w.cols, w.name};
  float best_scale = 0.0f;
  double best = INFINITY;
  for (float c : multipliers) {
    const float scale = fp8_scale_for_amax(amax * c);
    const double err = fp8_sq_error(part, scale);
    if (err < best) best = err, best_scale = scale;  // strict: the first multiplier wins ties
  }
  if (!(best < INFINITY)) throw fp8_no_finite_candidate(w.name, row, amax);
  return best_scale;
}

}  // namespace

fp8_weight fp8_quantize(const weight_view& w_in, const fp8_options& options) {
  if (w_in.rows <= 0 || w_in.cols <= 0) throw format_error(fmt::format("tensor '{}': empty shape", w_in.name));
  require_finite_static_amax(w_in.name, options.amax, "FP8");
  require_valid_multipliers(w_in.name, options.multipliers, "FP8");
  std::vector<float> cleaned;
  const weight_view w = finite_or_zeroed(w_in, options.nonfinite, cleaned);
  const std::span<const float> multipliers =
      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers;

  fp8_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.codes.resize(size_t(w.size()));
  if (options.granularity == fp8_granularity::per_tensor) {
    const float amax = options.amax > 0.0f ? options.amax : tensor_amax(w);
    q.scales = {choose_scale(w, 0, w.rows, amax, options.selector, multipliers, -1)};
  } else {
    q.scales.resize(size_t(w.rows));
    for (int64_t r = 0; r < w.rows; ++r)
      q.scales[size_t(r)] = choose_scale(w, r, r + 1, row_amax(w, r), options.selector, multipliers, r);
  }
  for (int64_t r = 0; r < w.rows; ++r) {
    const float scale = q.scale_of_row(r);
    for (int64_t c = 0; c < w.cols; ++c) q.codes[size_t(r * w.cols + c)] = fp8_code(w.row(r)[c], scale);
  }
  return q;
}

void fp8_dequantize(const fp8_weight& q, std::span<float> out) {
  if (int64_t(out.size()) != q.rows * q.cols)
    throw format_error(fmt::format("fp8_dequantize: output holds {} values, need {}", out.size(), q.rows * q.cols));
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      out[size_t(r * q.cols + c)] = e4m3_decode_table()[q.codes[size_t(r * q.cols + c)]] * q.scale_of_row(r);
}

}  // namespace mixq
