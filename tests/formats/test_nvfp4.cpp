// NVFP4 weights against a brute-force reference written independently here: nearest E2M1 value by
// search (ties to the even code), every E4M3 block scale tried in double precision.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "formats/packing.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

using testing::all_kinds;
using testing::nearest_e2m1;


double block_error_double(const float* x, double scale) {
  const double grid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  double e = 0;
  for (int i = 0; i < 16; ++i) {
    const double a = std::fabs(double(x[i]));
    const double d = grid[nearest_e2m1(a / scale)] * scale;
    e += (a - d) * (a - d);
  }
  return e;
}

std::vector<float> dequantized(const nvfp4_weight& q) {
  std::vector<float> out(size_t(q.rows * q.cols));
  nvfp4_dequantize(q, out);
  return out;
}

TEST(nvfp4, max_rule_follows_the_spec) {
  for (const auto& t : all_kinds(8, 128)) {
    const nvfp4_weight q = nvfp4_quantize(t.view());
    float amax = 0;
    for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
    ASSERT_EQ(q.global_scale, amax / (6.0f * 448.0f)) << t.name;
    for (int64_t b = 0; b < q.rows * q.blocks_per_row(); ++b) {
      const float* x = t.values.data() + b * 16;
      float bmax = 0;
      for (int i = 0; i < 16; ++i) bmax = std::fmax(bmax, std::fabs(x[i]));
      double s = bmax == 0 ? 1.0 : double(bmax) / (6.0 * double(q.global_scale));
      s = std::clamp(s, std::ldexp(1.0, -9), 448.0);
      // The stored scale is the nearest E4M3 value to s (checked by search over all codes).
      double best_d = INFINITY;
      for (int c = 1; c <= 0x7e; ++c) best_d = std::fmin(best_d, std::fabs(e4m3_t{uint8_t(c)}.to_float() - s));
      const float sf = e4m3_t{q.block_scales[size_t(b)]}.to_float();
      ASSERT_EQ(std::fabs(sf - s), best_d) << t.name << " block " << b;
      const double step = double(sf * q.global_scale);
      for (int i = 0; i < 16; ++i) {
        const uint8_t nib = nibble_at(q.packed.data(), b * 16 + i);
        const float a = std::fabs(x[i]) / float(step);
        EXPECT_EQ(nib & 7, nearest_e2m1(a)) << t.name << " element " << b * 16 + i;
        EXPECT_EQ((nib & 8) != 0, x[i] < 0.0f);
      }
    }
  }
}

TEST(nvfp4, low_nibble_holds_the_even_element) {
  std::vector<float> w(16, 0.0f);
  w[0] = 6.0f;   // code 7
  w[1] = -1.0f;  // code 0xA
  const nvfp4_weight q = nvfp4_quantize({w.data(), 1, 16, "w"});
  EXPECT_EQ(q.packed[0], 0xA7);
  EXPECT_EQ(q.block_scales[0], 0x7e);  // the block holding the tensor max gets scale 448
  const auto d = dequantized(q);
  EXPECT_EQ(d[0], 6.0f);
  EXPECT_EQ(d[1], -1.0f);
}

TEST(nvfp4, fp8_sweep_is_the_exhaustive_minimum) {
  for (const auto& t : all_kinds(4, 128, 11)) {
    nvfp4_options o;
    o.selector = nvfp4_selector::mse_fp8_sweep;
    const nvfp4_weight q = nvfp4_quantize(t.view(), o);
    for (int64_t b = 0; b < q.rows * q.blocks_per_row(); ++b) {
      const float* x = t.values.data() + b * 16;
      double best = INFINITY;
      for (int c = 1; c <= 0x7e; ++c)
        best = std::fmin(best, block_error_double(x, double(e4m3_t{uint8_t(c)}.to_float() * q.global_scale)));
      const double got = block_error_double(x, double(e4m3_t{q.block_scales[size_t(b)]}.to_float() * q.global_scale));
      EXPECT_LE(got, best * (1 + 1e-5) + 1e-30) << t.name << " block " << b;
    }
  }
}


TEST(nvfp4, selectors_never_lose_to_what_they_search_over) {
  for (const auto& t : all_kinds(16, 256, 21)) {
    auto err = [&](nvfp4_selector s) {
      nvfp4_options o;
      o.selector = s;
      const auto d = dequantized(nvfp4_quantize(t.view(), o));
      double e = 0;
      for (size_t i = 0; i < d.size(); ++i) e += double(d[i] - t.values[i]) * double(d[i] - t.values[i]);
      return e;
    };
    const double e_max = err(nvfp4_selector::max), e_mult = err(nvfp4_selector::mse_multiplier);
    const double e_sweep = err(nvfp4_selector::mse_fp8_sweep), e_46 = err(nvfp4_selector::four_over_six);
    const double e_both = err(nvfp4_selector::mse_four_over_six);
    const double tol = 1 + 1e-6;
    EXPECT_LE(e_sweep, e_max * tol) << t.name;   // the sweep includes the max-rule scale
    EXPECT_GT(e_mult, 0.0) << t.name;            // (1.0 is not among ModelOpt's multipliers: no bound vs max)
    EXPECT_LE(e_both, e_sweep * tol) << t.name;  // mse+4/6 keeps the better of the two sweeps
    EXPECT_LE(e_both, e_46 * tol) << t.name;     // and the 256-sweep contains both 4/6 candidates
  }
}

TEST(nvfp4, four_over_six_uses_normalizer_256_and_picks_per_block) {
  const auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 8, 256, 5);
  nvfp4_options o;
  o.selector = nvfp4_selector::four_over_six;
  const nvfp4_weight q = nvfp4_quantize(t.view(), o);
  EXPECT_EQ(q.normalizer, 256.0f);
  float amax = 0;
  for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
  EXPECT_EQ(q.global_scale, amax / (6.0f * 256.0f));
  int chose_four = 0;
  for (int64_t b = 0; b < q.rows * q.blocks_per_row(); ++b) {
    const float* x = t.values.data() + b * 16;
    float bmax = 0;
    for (int i = 0; i < 16; ++i) bmax = std::fmax(bmax, std::fabs(x[i]));
    const uint8_t s6 = e4m3_encode(nvfp4_block_scale_f32(bmax, amax, 256.0f));
    const uint8_t s4 = e4m3_encode(nvfp4_block_scale_f32(bmax * 1.5f, amax, 256.0f));
    const uint8_t got = q.block_scales[size_t(b)];
    ASSERT_TRUE(got == s6 || got == s4);
    const float e6 = nvfp4_block_sq_error(x, e4m3_t{s6}.to_float() * q.global_scale);
    const float e4 = nvfp4_block_sq_error(x, e4m3_t{s4}.to_float() * q.global_scale);
    EXPECT_EQ(got, e4 < e6 ? s4 : s6) << "block " << b;
    chose_four += got != s6;
  }
  EXPECT_GT(chose_four, 0);  // heavy tails make M=4 win somewhere
}

TEST(nvfp4, zero_tensor_and_zero_blocks_are_safe) {
  std::vector<float> w(64, 0.0f);
  const nvfp4_weight q = nvfp4_quantize({w.data(), 2, 32, "zeros"});
  for (float v : dequantized(q)) EXPECT_EQ(v, 0.0f);
  EXPECT_GT(q.global_scale, 0.0f);
  for (uint8_t s : q.block_scales) EXPECT_EQ(s, e4m3_encode(1.0f));
}

TEST(nvfp4, shared_global_amax_for_fused_siblings) {
  const auto t = testing::make_tensor(testing::tensor_kind::normal, 4, 64, 3);
  nvfp4_options o;
  o.global_amax = 10.0f;
  const nvfp4_weight q = nvfp4_quantize(t.view(), o);
  EXPECT_EQ(q.global_scale, 10.0f / (6.0f * 448.0f));
}

TEST(nvfp4, shape_the_format_cannot_hold_is_a_clear_error) {
  std::vector<float> w(172 * 2, 0.1f);
  try {
    nvfp4_quantize({w.data(), 2, 172, "model.layers.0.mlp.down_proj.weight"});
    FAIL() << "expected an error";
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.down_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("multiple of its block size 16"), std::string::npos) << e.what();
  }
}

TEST(nvfp4, nonfinite_weights_are_refused_or_counted) {
  std::vector<float> w(64, 0.5f);
  w[37] = NAN;
  w[50] = INFINITY;
  try {
    nvfp4_quantize({w.data(), 2, 32, "layer.weight"});
    FAIL() << "expected an error";
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'layer.weight' [1, 5] (flat index 37)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 non-finite values"), std::string::npos) << e.what();
  }
  nvfp4_options o;
  o.nonfinite = nonfinite_policy::zero;
  const auto d = dequantized(nvfp4_quantize({w.data(), 2, 32, "layer.weight"}, o));
  EXPECT_EQ(d[37], 0.0f);
  EXPECT_EQ(d[50], 0.0f);
  EXPECT_EQ(d[0], 0.5f);
}

}  // namespace
}  // namespace mixq
