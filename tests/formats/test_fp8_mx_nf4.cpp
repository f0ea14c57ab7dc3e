// FP8, MX, NF4 weights, activation fake-quant and error metrics against brute-force references.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "formats/activation_quant.hpp"
#include "formats/error_metrics.hpp"
#include "formats/format_traits.hpp"
#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "formats/mx.hpp"
#include "formats/nf4.hpp"
#include "formats/packing.hpp"
#include "formats/weight_fake_quant.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

using testing::all_kinds;

// Nearest E4M3 code to v by search over all finite codes (|v| <= 448), ties to the even code.
uint8_t nearest_e4m3(double v) {
  uint8_t best = 0;
  double best_d = INFINITY;
  for (int c = 0; c < 256; ++c) {
    const float f = e4m3_t{uint8_t(c)}.to_float();
    if (std::isnan(f) || (c == 0x80)) continue;
    if ((f < 0) != (v < 0) && f != 0) continue;
    const double d = std::fabs(double(f) - v);
    if (d < best_d || (d == best_d && c % 2 == 0)) best_d = d, best = uint8_t(c);
  }
  return std::signbit(v) && best == 0 ? 0x80 : best;
}

double nearest_e2m1_value(double a) { return kE2M1Magnitudes[testing::nearest_e2m1(a)]; }

TEST(fp8, per_tensor_and_per_channel_max) {
  for (const auto& t : all_kinds(8, 48)) {
    fp8_options per_tensor;
    const fp8_weight q = fp8_quantize(t.view(), per_tensor);
    float amax = 0;
    for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
    ASSERT_EQ(q.scales.size(), 1u);
    EXPECT_EQ(q.scales[0], amax / 448.0f);
    for (size_t i = 0; i < t.values.size(); ++i)
      EXPECT_EQ(q.codes[i], nearest_e4m3(double(t.values[i] / q.scales[0]))) << t.name << " " << i;

    fp8_options per_channel;
    per_channel.granularity = fp8_granularity::per_channel;
    const fp8_weight qc = fp8_quantize(t.view(), per_channel);
    ASSERT_EQ(qc.scales.size(), size_t(t.rows));
    for (int64_t r = 0; r < t.rows; ++r) {
      float ra = 0;
      for (int64_t c = 0; c < t.cols; ++c) ra = std::fmax(ra, std::fabs(t.values[size_t(r * t.cols + c)]));
      EXPECT_EQ(qc.scales[size_t(r)], fp8_scale_for_amax(ra));
    }
  }
}

TEST(fp8, mse_scale_is_the_best_multiplier) {
  for (const auto& t : all_kinds(8, 64, 3)) {
    fp8_options o;
    o.selector = fp8_selector::mse;
    const fp8_weight q = fp8_quantize(t.view(), o);
    float amax = 0;
    for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
    double best = INFINITY;
    for (float c : default_mse_multipliers()) best = std::fmin(best, fp8_sq_error(t.view(), fp8_scale_for_amax(amax * c)));
    EXPECT_EQ(fp8_sq_error(t.view(), q.scales[0]), best) << t.name;
  }
}

TEST(fp8, default_multipliers_are_modelopts_39) {
  const auto m = default_mse_multipliers();
  ASSERT_EQ(m.size(), 39u);
  EXPECT_EQ(m.front(), 0.25f);
  EXPECT_EQ(m.back(), 4.0f);
  for (size_t i = 1; i < m.size(); ++i) EXPECT_NEAR(m[i] - m[i - 1], 3.75 / 38, 1e-6);
}

TEST(mx, shared_exponent_and_elements_follow_ocp) {
  for (format_id f : {format_id::mxfp4, format_id::mxfp8}) {
    for (const auto& t : all_kinds(4, 64, 9)) {
      const mx_weight q = mx_quantize(t.view(), f);
      std::vector<float> d(t.values.size());
      mx_dequantize(q, d);
      const int emax = f == format_id::mxfp4 ? 2 : 8;
      const double elem_max = f == format_id::mxfp4 ? 6.0 : 448.0;
      for (int64_t b = 0; b < int64_t(q.scales.size()); ++b) {
        float bmax = 0;
        for (int i = 0; i < 32; ++i) bmax = std::fmax(bmax, std::fabs(t.values[size_t(b * 32 + i)]));
        const int e = ue8m0_t{q.scales[size_t(b)]}.exponent();
        if (bmax == 0) {
          EXPECT_EQ(e, -127);
          continue;
        }
        EXPECT_EQ(e, std::max(-127, int(std::floor(std::log2(double(bmax)))) - emax));
        for (int i = 0; i < 32; ++i) {
          const double x = double(t.values[size_t(b * 32 + i)]) / std::ldexp(1.0, e);
          const double got = double(d[size_t(b * 32 + i)]) / std::ldexp(1.0, e);
          // got is the element grid value nearest to x (saturating at the element max)
          if (f == format_id::mxfp8) { EXPECT_EQ(got, e4m3_t{nearest_e4m3(std::clamp(x, -448.0, 448.0))}.to_float()); }
          if (f == format_id::mxfp4) { EXPECT_EQ(std::fabs(got), nearest_e2m1_value(std::fabs(x))); }
          EXPECT_LE(std::fabs(got), elem_max);
        }
      }
    }
  }
}

TEST(mx, powers_of_two_are_exact) {
  std::vector<float> w(32);
  for (int i = 0; i < 32; ++i) w[size_t(i)] = std::ldexp(1.0f, (i % 3) - 1) * (i % 2 ? -1.0f : 1.0f);
  for (format_id f : {format_id::mxfp4, format_id::mxfp8}) {
    std::vector<float> d(32);
    mx_dequantize(mx_quantize({w.data(), 1, 32, "p2"}, f), d);
    EXPECT_EQ(d, w) << traits_of(f).name;
  }
}

TEST(nf4, nearest_codebook_entry_ties_down) {
  const auto cb = nf4_codebook();
  ASSERT_EQ(cb.size(), 16u);
  EXPECT_EQ(cb[7], 0.0f);
  for (float v = -1.0f; v <= 1.0f; v += 1.0f / 1024) {
    int best = 0;
    for (int k = 1; k < 16; ++k)
      if (std::fabs(v - cb[size_t(k)]) < std::fabs(v - cb[size_t(best)])) best = k;  // strict: lower wins ties
    EXPECT_EQ(nf4_code(v), best) << v;
  }
  const float mid = (cb[9] + cb[10]) * 0.5f;
  EXPECT_EQ(nf4_code(mid), 9);
}

TEST(nf4, blocks_scale_by_fp16_absmax) {
  for (const auto& t : all_kinds(2, 128, 4)) {
    const nf4_weight q = nf4_quantize(t.view());
    std::vector<float> d(t.values.size());
    nf4_dequantize(q, d);
    for (size_t b = 0; b < q.scales.size(); ++b) {
      float bmax = 0;
      for (int i = 0; i < 64; ++i) bmax = std::fmax(bmax, std::fabs(t.values[b * 64 + size_t(i)]));
      EXPECT_EQ(q.scales[b], fp16_encode(bmax));
      const float s = fp16_decode(q.scales[b]);
      for (int i = 0; i < 64; ++i) {
        const size_t k = b * 64 + size_t(i);
        const float expect = s > 0 ? nf4_codebook()[nf4_code(t.values[k] / s)] * s : 0.0f;
        EXPECT_EQ(d[k], expect);
      }
    }
  }
}

TEST(activations, nvfp4_dynamic_blocks_under_a_static_scale) {
  const auto t = testing::make_tensor(testing::tensor_kind::outliers, 4, 64, 8);
  float amax = 0;
  for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
  const float is = nvfp4_input_scale(amax);
  EXPECT_EQ(is, amax / 2688.0f);
  std::vector<float> out(t.values.size());
  nvfp4_fake_quant_activations(t.values, 64, is, out);
  for (size_t b = 0; b < out.size(); b += 16) {
    float bmax = 0;
    for (int i = 0; i < 16; ++i) bmax = std::fmax(bmax, std::fabs(t.values[b + size_t(i)]));
    const float sf = e4m3_t{e4m3_encode(std::fmin(bmax / (6.0f * is), 448.0f))}.to_float();
    for (int i = 0; i < 16; ++i) {
      const float x = t.values[b + size_t(i)];
      const float step = sf * is;
      EXPECT_EQ(out[b + size_t(i)], step > 0 ? e2m1_t{nvfp4_code(x, step)}.to_float() * step : 0.0f);
    }
  }
  // Beyond the calibrated amax, values saturate at 6·448·input_scale.
  std::vector<float> big(16, 10.0f * amax), big_out(16);
  nvfp4_fake_quant_activations(big, 16, is, big_out);
  EXPECT_FLOAT_EQ(big_out[0], 6.0f * 448.0f * is);
}

TEST(activations, fp8_static_per_tensor) {
  std::vector<float> x = {0.0f, 1.0f, -2.0f, 3.3f, 1000.0f};
  std::vector<float> out(x.size());
  const float is = fp8_input_scale(4.0f);
  fp8_fake_quant_activations(x, is, out);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], -2.0f);
  EXPECT_EQ(out[4], 448.0f * is);  // saturates at the calibrated range
  EXPECT_EQ(out[3], e4m3_t{nearest_e4m3(3.3 / double(is))}.to_float() * is);
}

TEST(error_metrics, known_values) {
  const std::vector<float> ref = {1, 2, 3, 4}, approx = {1, 2, 3, 3};
  const error_stats s = error_between(ref, approx);
  EXPECT_DOUBLE_EQ(s.mse, 0.25);
  EXPECT_DOUBLE_EQ(s.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(s.snr_db, 10 * std::log10(30.0));
  EXPECT_TRUE(std::isinf(error_between(ref, ref).snr_db));
  const auto blocks = error_per_block(ref, approx, 3);
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0].mse, 0.0);
  EXPECT_EQ(blocks[1].mse, 1.0);
}

TEST(format_traits, table_is_complete_and_consistent) {
  EXPECT_EQ(all_formats().size(), size_t(format_id::count));
  EXPECT_EQ(traits_of(format_id::nvfp4).effective_bits, 4.5);
  EXPECT_EQ(traits_of(format_id::mxfp4).effective_bits, 4.25);
  EXPECT_EQ(traits_of(format_id::nf4).effective_bits, 4.25);
  EXPECT_EQ(traits_of(format_id::fp8_per_tensor).effective_bits, 8.0);
  EXPECT_EQ(traits_of(format_id::bf16).effective_bits, 16.0);
  for (const auto& f : all_formats()) {
    EXPECT_EQ(parse_format(f.name), f.id);
    const double scale_bits = f.block_scale == scale_kind::e4m3 || f.block_scale == scale_kind::e8m0 ? 8
                              : f.block_scale == scale_kind::f16                                    ? 16
                                                                                                     : 0;
    if (f.block_size > 0) { EXPECT_EQ(f.effective_bits, f.element_bits + scale_bits / f.block_size) << f.name; }
  }
  EXPECT_FALSE(parse_format("int3").has_value());
  EXPECT_TRUE(format_cannot_hold(format_id::nvfp4, 64, 172).has_value());  // stories260K's down_proj
  EXPECT_FALSE(format_cannot_hold(format_id::fp8_per_tensor, 64, 172).has_value());
  EXPECT_TRUE(format_cannot_hold(format_id::mxfp4, 64, 48).has_value());
  EXPECT_FALSE(format_cannot_hold(format_id::nvfp4, 64, 48).has_value());
}

TEST(fake_quant_weight, every_format_round_trips_within_its_precision) {
  const auto t = testing::make_tensor(testing::tensor_kind::normal, 8, 128, 12);
  for (const auto& f : all_formats()) {
    weight_quant_spec spec;
    spec.format = f.id;
    std::vector<float> out(t.values.size());
    fake_quant_weight(t.view(), spec, out);
    const double snr = error_between(t.values, out).snr_db;
    // A b-bit format gives roughly 6 dB per bit of mantissa+exponent resolution; floors per family.
    const double floor_db = f.element_bits == 16 ? 40 : f.element_bits == 8 ? 25 : 12;
    EXPECT_GT(snr, floor_db) << describe(spec);
  }
}

}  // namespace
}  // namespace mixq
