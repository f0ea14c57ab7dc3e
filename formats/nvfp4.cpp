#include "formats/nvfp4.hpp"

#include <array>
#include <cmath>

#include <fmt/format.h>

#include "formats/format_traits.hpp"
#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "formats/tensor_amax.hpp"

namespace mixq {

std::string_view selector_name(nvfp4_selector s) {
  switch (s) {
    case nvfp4_selector::max: return "max";
    case nvfp4_selector::mse_multiplier: return "mse_multiplier";
    case nvfp4_selector::mse_fp8_sweep: return "mse";
    case nvfp4_selector::four_over_six: return "four_over_six";
    case nvfp4_selector::mse_four_over_six: return "mse+four_over_six";
  }
  return "?";
}

std::span<const float> default_mse_multipliers() {
  // torch.linspace(0.25, 4.0, 39) in float32, as ModelOpt's MseCalibrator builds it.
  static const std::array<float, 39> values = [] {
    std::array<float, 39> v{};
    const float start = 0.25f, stop = 4.0f;
    const float step = (stop - start) / 38.0f;
    for (int i = 0; i < 39; ++i) v[i] = i < 19 ? start + step * float(i) : stop - step * float(38 - i);
    return v;
  }();
  return values;
}

float nvfp4_global_scale(float global_amax, float normalizer) {
  return nvfp4_scale_amax(global_amax) / (6.0f * normalizer);
}

namespace {

struct block_choice {
  uint8_t scale_bits = 0;
  float sq_error = INFINITY;
};

block_choice choose_by_amax_multipliers(const float* x, float block_amax, float global_amax, float normalizer,
                                        float ws2, std::span<const float> multipliers) {
  block_choice best;
  for (float c : multipliers) {
    const uint8_t bits = e4m3_encode(nvfp4_block_scale_f32(block_amax * c, global_amax, normalizer));
    const float err = nvfp4_block_sq_error(x, e4m3_decode_table()[bits] * ws2);
    if (err < best.sq_error || best.scale_bits == 0) best = {bits, err};  // strict: the first candidate wins ties
  }
  return best;
}

block_choice choose_by_fp8_sweep(const float* x, float ws2) {
  block_choice best;
  for (uint8_t bits = 1; bits <= 0x7e; ++bits) {  // every positive finite E4M3 value, ascending
    const float err = nvfp4_block_sq_error(x, e4m3_decode_table()[bits] * ws2);
    if (err < best.sq_error || best.scale_bits == 0) best = {bits, err};  // (even if every error is inf)
  }
  return best;
}

struct quantized_tensor {
  nvfp4_weight q;
  double sq_error = 0.0;
};

quantized_tensor quantize_with_normalizer(const weight_view& w, float global_amax, float normalizer,
                                          nvfp4_selector selector, std::span<const float> multipliers) {
  quantized_tensor out;
  nvfp4_weight& q = out.q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.normalizer = normalizer;
  q.global_scale = nvfp4_global_scale(global_amax, normalizer);
  q.packed.resize(size_t(w.size() / 2));
  q.block_scales.resize(size_t(w.size() / kNvfp4Block));
  for (int64_t b = 0; b < w.size() / kNvfp4Block; ++b) {
    const float* x = w.data + b * kNvfp4Block;
    float block_amax = 0.0f;
    for (int i = 0; i < kNvfp4Block; ++i) block_amax = std::fmax(block_amax, std::fabs(x[i]));
    const uint8_t bits = nvfp4_choose_block_scale(x, block_amax, global_amax, normalizer, selector, multipliers);
    q.block_scales[size_t(b)] = bits;
    out.sq_error += nvfp4_encode_block(x, e4m3_decode_table()[bits] * q.global_scale, q.packed.data() + b * (kNvfp4Block / 2));
  }
  return out;
}

}  // namespace

uint8_t nvfp4_choose_block_scale(const float* x, float block_amax, float global_amax, float normalizer,
                                 nvfp4_selector selector, std::span<const float> multipliers) {
  static constexpr float kFourOverSix[2] = {1.0f, 1.5f};
  const float ws2 = nvfp4_global_scale(global_amax, normalizer);
  switch (selector) {
    case nvfp4_selector::max: return e4m3_encode(nvfp4_max_block_scale_f32(block_amax, ws2));
    case nvfp4_selector::mse_multiplier:
      return choose_by_amax_multipliers(x, block_amax, global_amax, normalizer, ws2, multipliers).scale_bits;
    case nvfp4_selector::four_over_six:
      return choose_by_amax_multipliers(x, block_amax, global_amax, normalizer, ws2, kFourOverSix).scale_bits;
    case nvfp4_selector::mse_fp8_sweep:
    case nvfp4_selector::mse_four_over_six: return choose_by_fp8_sweep(x, ws2).scale_bits;
  }
  return 0;
}

float nvfp4_encode_block(const float* x, float scale, uint8_t* dst) {
  for (int i = 0; i < kNvfp4Block; i += 2) dst[i / 2] = nibbles_pack(nvfp4_code(x[i], scale), nvfp4_code(x[i + 1], scale));
  return nvfp4_block_sq_error(x, scale);
}

nvfp4_weight nvfp4_quantize(const weight_view& w_in, const nvfp4_options& options) {
  if (auto why = format_cannot_hold(format_id::nvfp4, w_in.rows, w_in.cols))
    throw format_error(fmt::format("tensor '{}': {}", w_in.name, *why));
  require_finite_static_amax(w_in.name, options.global_amax, "NVFP4");
  require_valid_multipliers(w_in.name, options.multipliers, "NVFP4");
  std::vector<float> cleaned;
  const weight_view w = finite_or_zeroed(w_in, options.nonfinite, cleaned);
  const float global_amax = options.global_amax > 0.0f ? options.global_amax : tensor_amax(w);
  const std::span<const float> multipliers =
      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers;

  switch (options.selector) {
    case nvfp4_selector::four_over_six:
      return quantize_with_normalizer(w, global_amax, kNvfp4FourOverSixNormalizer, options.selector, multipliers).q;
    case nvfp4_selector::mse_four_over_six: {
      auto standard = quantize_with_normalizer(w, global_amax, kNvfp4Normalizer, options.selector, multipliers);
      auto narrow = quantize_with_normalizer(w, global_amax, kNvfp4FourOverSixNormalizer, options.selector, multipliers);
      return narrow.sq_error < standard.sq_error ? std::move(narrow.q) : std::move(standard.q);
    }
    default:
      return quantize_with_normalizer(w, global_amax, kNvfp4Normalizer, options.selector, multipliers).q;
  }
}

void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out) {
  const int64_t n = q.rows * q.cols;
  if (int64_t(out.size()) != n) throw format_error(fmt::format("nvfp4_dequantize: output holds {} values, need {}", out.size(), n));
  for (int64_t i = 0; i < n; ++i) {
    const float scale = e4m3_decode_table()[q.block_scales[size_t(i / kNvfp4Block)]] * q.global_scale;
    out[size_t(i)] = kNvfp4Values[nibble_at(q.packed.data(), i)] * scale;
  }
}

}  // namespace mixq
