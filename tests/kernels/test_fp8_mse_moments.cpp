// FP8 MSE over F32 weights of any values (kernels/cpu/fp8_mse_moments): each candidate's estimate
// holds the reference's sum within its bound, the bound is tight enough to leave one contender on
// ordinary weights, and the per-tensor choice (scale and codes) is the reference's bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/fp8_mse_moments.hpp"
#include "kernels/cpu/quantize.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

float max_magnitude(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// F32 tensors whose values are not BF16 values, at magnitudes from near F32's subnormals to 2^100
// (and sizes that are not a multiple of 16: the counting loop's scalar tail).
std::vector<testing::test_tensor> f32_tensors(uint32_t seed) {
  std::vector<testing::test_tensor> out;
  for (int shift : {-100, -30, 0, 20, 100})
    for (auto t : testing::all_kinds(12, 96, seed + uint32_t(shift + 100))) {
      for (auto& v : t.values) v = std::ldexp(v, shift);
      out.push_back(t);
    }
  for (auto t : testing::all_kinds(7, 13, seed)) out.push_back(t);
  return out;
}

TEST(fp8_mse_moments, estimates_hold_the_reference_sums) {
  int checked = 0, single = 0, separated = 0;
  const std::vector<float> wide = {1e-4f, 0.01f, 0.25f, 0.6f, 1.0f, 1.37f, 4.0f, 50.0f, 3000.0f};
  const auto standard = default_mse_multipliers();
  for (const auto& t : f32_tensors(7)) {
    const cpu::source_matrix s{t.values.data(), cpu::source_dtype::f32, t.rows, t.cols, t.name};
    const weight_view w{t.values.data(), t.rows, t.cols, t.name};
    const float weight_max = max_magnitude(t.values);
    for (float amax_factor : {1.0f, 0.3f, 2.5f})  // the weight's own amax, a static one below, above
      for (std::span<const float> list : {std::span<const float>(standard), std::span<const float>(wide)}) {
        const float amax = weight_max * amax_factor;
        std::vector<cpu::fp8_moment_estimate> est;
        const auto kept = cpu::fp8_moment_contenders(s, weight_max, amax, list, &est);
        ASSERT_TRUE(kept.has_value()) << t.name;
        ASSERT_EQ(est.size(), list.size());
        std::vector<double> exact;
        for (size_t c = 0; c < list.size(); ++c) {
          const float scale = fp8_scale_for_amax(amax * list[c]);
          if (!std::isfinite(scale)) continue;
          const double want = fp8_sq_error(w, scale);
          EXPECT_LE(std::abs(est[c].value - want), est[c].bound) << t.name << " candidate " << c;
          EXPECT_LE(est[c].bound, 1e-2 * want + 1e-300) << t.name << " candidate " << c;  // tight, too
          exact.push_back(want);
          ++checked;
        }
        // Where the least error leads the next by 1e-5, the bound leaves it alone, nearly always.
        // (Weights below 2^-24 give every candidate scale 1: all tie.)
        std::sort(exact.begin(), exact.end());
        if (exact.size() > 1 && exact[1] - exact[0] > 1e-5 * exact[0]) {
          single += kept->size() == 1;
          ++separated;
        }
      }
  }
  EXPECT_GT(checked, 2000);
  EXPECT_GT(separated, 80);
  EXPECT_GE(single, separated * 95 / 100);
}

// The integer counts reach the moments' doubles in flushes (every 2^24 − 1 elements by default):
// with a flush every 37 or every 1000 elements the estimates are the same but for rounding, within
// their bounds of the reference's sums, and the contenders are the same.
TEST(fp8_mse_moments, flushed_counts_give_the_same_estimates) {
  const auto standard = default_mse_multipliers();
  int compared = 0;
  for (const auto& t : f32_tensors(23)) {
    const cpu::source_matrix s{t.values.data(), cpu::source_dtype::f32, t.rows, t.cols, t.name};
    const weight_view w{t.values.data(), t.rows, t.cols, t.name};
    const float weight_max = max_magnitude(t.values);
    std::vector<cpu::fp8_moment_estimate> once;
    const auto kept = cpu::fp8_moment_contenders(s, weight_max, weight_max, standard, &once);
    ASSERT_TRUE(kept.has_value()) << t.name;
    for (int64_t every : {37, 1000}) {
      std::vector<cpu::fp8_moment_estimate> flushed;
      EXPECT_EQ(cpu::fp8_moment_contenders(s, weight_max, weight_max, standard, &flushed, every), kept) << t.name;
      ASSERT_EQ(flushed.size(), once.size());
      for (size_t c = 0; c < once.size(); ++c) {
        if (std::isnan(once[c].value)) continue;
        // (the same sums grouped otherwise: equal but for rounding, far inside the bounds)
        EXPECT_NEAR(flushed[c].value, once[c].value, 1e-9 * once[c].value + 1e-300) << t.name << " " << every;
        const double want = fp8_sq_error(w, fp8_scale_for_amax(weight_max * standard[c]));
        EXPECT_LE(std::abs(flushed[c].value - want), flushed[c].bound) << t.name << " " << every;
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 1000);
}

// The whole per-tensor search through cpu::fp8_quantize: the reference's scale and codes.
TEST(fp8_mse_moments, per_tensor_choice_is_the_reference) {
  std::mt19937 rng(3);
  for (const auto& t : f32_tensors(11))
    for (int trial = 0; trial < 2; ++trial) {
      fp8_options o;
      o.selector = fp8_selector::mse;
      std::vector<float> list;
      if (trial == 1) {  // a random list: unsorted, with duplicates that force exact ties
        std::uniform_real_distribution<float> m(0.2f, 5.0f);
        for (int k = 0; k < 12; ++k) list.push_back(m(rng));
        list.push_back(list[3]);
        o.multipliers = list;
        o.amax = max_magnitude(t.values) * 0.7f;  // a static amax below the weight's: saturation
      }
      const weight_view w{t.values.data(), t.rows, t.cols, t.name};
      const cpu::source_matrix s{t.values.data(), cpu::source_dtype::f32, t.rows, t.cols, t.name};
      const fp8_weight ref = fp8_quantize(w, o), fast = cpu::fp8_quantize(s, o);
      EXPECT_EQ(fast.scales, ref.scales) << t.name << " trial " << trial;
      EXPECT_EQ(fast.codes, ref.codes) << t.name << " trial " << trial;
    }
}

// Values straddling the code boundaries of a scale, an all-zero weight, and candidates whose
// scales overflow: still the reference's choice (or its error).
TEST(fp8_mse_moments, edge_cases_match_the_reference) {
  std::vector<float> v(64 * 32);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(1, 125);
  for (auto& x : v) {  // E4M3 values (scale 1) and their neighbours, where rounding turns
    const float q = e4m3_decode(uint8_t(code(rng)));
    x = rng() % 2 ? std::nextafter(q, 0.0f) : std::nextafter(q, 1000.0f);
  }
  const auto check = [](const std::vector<float>& values, const fp8_options& o) {
    const weight_view w{values.data(), 64, 32, "w"};
    const cpu::source_matrix s{values.data(), cpu::source_dtype::f32, 64, 32, "w"};
    std::string ref_error, fast_error;
    fp8_weight ref, fast;
    try { ref = fp8_quantize(w, o); } catch (const format_error& e) { ref_error = e.what(); }
    try { fast = cpu::fp8_quantize(s, o); } catch (const format_error& e) { fast_error = e.what(); }
    EXPECT_EQ(fast_error, ref_error);
    EXPECT_EQ(fast.scales, ref.scales);
    EXPECT_EQ(fast.codes, ref.codes);
  };
  fp8_options o;
  o.selector = fp8_selector::mse;
  const float close[] = {0.999f, 1.0f, 1.001f, 448.0f / 449.0f};
  const float overflowing[] = {1e38f, 1.0f, 2e38f};  // the infinite scales err by NaN, never chosen
  const float all_overflowing[] = {1e38f, 2e38f};    // every scale infinite: an error naming the tensor
  for (std::span<const float> list : {std::span<const float>(close), std::span<const float>(overflowing),
                                      std::span<const float>(all_overflowing)}) {
    o.multipliers = list;
    check(v, o);
  }
  check(std::vector<float>(v.size(), 0.0f), fp8_options{.selector = fp8_selector::mse});
}

}  // namespace
}  // namespace mixq
