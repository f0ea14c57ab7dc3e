// The CPU activation fake-quant kernels return, bit for bit, what
// formats/activation_quant.cpp returns: at every SIMD level, on one thread and
// on several, in place and not, for ordinary activations, outliers past the
// calibrated amax, NaN, infinities, signed zeros, subnormals, tiny blocks whose
// scale rounds to zero, and degenerate input scales.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "formats/activation_quant.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/fake_quant_activations.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq {
namespace {

// rows × cols activations: a Gaussian body, channels 24x larger (as on
// projections that read the residual stream), and special values sprinkled in:
// every finite one, and where asked NaN and infinities (which send the vectors
// that hold them to the reference's formulas).
std::vector<float> activations(int64_t rows, int64_t cols, uint32_t seed, bool nonfinite = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(rows * cols));
  for (size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * (i % size_t(cols) % 37 == 5 ? 24.0f : 1.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::denorm_min(),
                            -1e-40f,
                            1e-30f,
                            3e38f,
                            -3e38f,
                            1e5f};
  for (size_t i = 0; i < x.size(); i += 97) {
    const float v = specials[(i / 97) % std::size(specials)];
    if (nonfinite || std::isfinite(v)) x[i] = v;
  }
  // Blocks of tiny values (their dynamic scale underflows to zero) and of all
  // zeros.
  for (int64_t i = 0; i < 16; ++i) x[size_t(2 * 16 + i)] = 1e-9f * float(i), x[size_t(3 * 16 + i)] = 0.0f;
  return x;
}

::testing::AssertionResult same_bits(const std::vector<float> &got, const std::vector<float> &want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i)
    if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i]))
      return ::testing::AssertionFailure()
             << fmt::format("value {}: {} ({:#010x}), reference {} ({:#010x})", i, got[i],
                            std::bit_cast<uint32_t>(got[i]), want[i], std::bit_cast<uint32_t>(want[i]));
  return ::testing::AssertionSuccess();
}

const float kInputScales[] = {
    nvfp4_input_scale(30.0f), 0.01f, 1.0f, 0.0f, 1e-42f, 3e37f, std::numeric_limits<float>::infinity(), -0.5f};

// reference(x, input_scale, out) against kernel(x, input_scale, out), out apart and in place, at every
// SIMD level and input scale, on rows × cols activations with and without non-finite values.
template <class Reference, class Kernel>
void expect_the_reference_at_every_level(int64_t rows, int64_t cols, uint32_t seed, Reference reference, Kernel kernel) {
  for (bool nonfinite : {true, false}) {
    const std::vector<float> x = activations(rows, cols, seed, nonfinite);
    for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
      if (level > cpu::cpu_simd_level()) continue;
      cpu::limit_simd_level(level);
      for (float is : kInputScales) {
        std::vector<float> want(x.size()), got(x.size());
        reference(x, is, want);
        kernel(x, is, got);
        EXPECT_TRUE(same_bits(got, want)) << "level " << int(level) << ", input scale " << is;
        std::vector<float> in_place = x;
        kernel(in_place, is, in_place);
        EXPECT_TRUE(same_bits(in_place, want)) << "in place, level " << int(level) << ", input scale " << is;
      }
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

TEST(cpu_fake_quant_activations, nvfp4_bit_identical_at_every_level) {
  const int64_t cols = 4112;  // (80 rows: enough values for threads; each thread's share ends in a partial group)
  expect_the_reference_at_every_level(
      80, cols, 7,
      [&](std::span<const float> x, float is, std::span<float> out) { nvfp4_fake_quant_activations(x, cols, is, out); },
      [&](std::span<const float> x, float is, std::span<float> out) {
        cpu::nvfp4_fake_quant_activations(x, cols, is, out);
      });
}

TEST(cpu_fake_quant_activations, fp8_bit_identical_at_every_level) {
  expect_the_reference_at_every_level(
      300, 1000, 8,
      [](std::span<const float> x, float is, std::span<float> out) { fp8_fake_quant_activations(x, is, out); },
      [](std::span<const float> x, float is, std::span<float> out) { cpu::fp8_fake_quant_activations(x, is, out); });
}

// Called from threads (as the model runs sequences), each call works alone and
// agrees.
TEST(cpu_fake_quant_activations, inside_a_parallel_region_as_alone) {
  const int64_t cols = 2048, rows = 160;
  const std::vector<float> x = activations(rows, cols, 9);
  std::vector<float> want(x.size());
  nvfp4_fake_quant_activations(x, cols, 0.02f, want);
  std::vector<std::vector<float>> got(4, std::vector<float>(x.size()));
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 4; ++i) cpu::nvfp4_fake_quant_activations(x, cols, 0.02f, got[size_t(i)]);
  for (const auto &g : got) EXPECT_TRUE(same_bits(g, want));
}

TEST(cpu_fake_quant_activations, shapes_that_are_not_rows_of_blocks_are_refused) {
  std::vector<float> x(48), out(48);
  EXPECT_THROW(cpu::nvfp4_fake_quant_activations(x, 24, 1.0f, out),
               format_error);  // 24 is not a multiple of 16
  EXPECT_THROW(cpu::nvfp4_fake_quant_activations(x, 32, 1.0f, out),
               format_error);  // 48 values are not rows of 32
  EXPECT_THROW(cpu::nvfp4_fake_quant_activations(x, 0, 1.0f, out), format_error);
  std::vector<float> short_out(47);
  EXPECT_THROW(cpu::nvfp4_fake_quant_activations(x, 16, 1.0f, short_out), format_error);
  EXPECT_THROW(cpu::fp8_fake_quant_activations(x, 1.0f, short_out), format_error);
}

}  // namespace
}  // namespace mixq
