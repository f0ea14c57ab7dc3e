// The fast CPU kernels return exactly what the scalar references in formats/ return, for every
// format and selector, from F32, BF16 and F16 sources, on every kind of test tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <cmath>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "kernels/cpu/fp8_mse_histogram.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cpu/simd_dispatch.hpp"
#include "../sourced_tensor.hpp"
#include "../test_tensors.hpp"

#if MIXQ_HAVE_SIMD_TARGETS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#include "kernels/cpu/e2m1_avx2.hpp"
#include "kernels/cpu/e4m3_avx2.hpp"
namespace mixq {
namespace {
// The AVX2 E2M1 helpers against the scalar references over floats given by their bits (levels,
// their codes, the codes straight from the rounding, unsaturated levels below 7): the mismatches.
int64_t avx2_e2m1_mismatches(const std::vector<uint32_t>& bits) {
  namespace v = cpu::e2m1_avx2;
  int64_t bad = 0;
  for (size_t i = 0; i + 8 <= bits.size(); i += 8) {
    const __m256 q = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits.data() + i)));
    alignas(32) uint32_t level_codes[8], codes[8];
    alignas(32) float levels[8], rounded[8];
    const __m256 l = v::e2m1_levels(q);
    _mm256_store_si256(reinterpret_cast<__m256i*>(level_codes), v::e2m1_code_of_level(l));
    _mm256_store_ps(levels, l);
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), v::e2m1_codes(q));
    _mm256_store_ps(rounded, v::e2m1_rounded(q));
    for (int j = 0; j < 8; ++j) {
      const float x = std::bit_cast<float>(bits[i + size_t(j)]);
      const uint32_t code = e2m1_magnitude_code(x);
      const uint32_t level = std::bit_cast<uint32_t>(e2m1_round_magnitude(x));
      bad += level_codes[j] != code || codes[j] != code || std::bit_cast<uint32_t>(levels[j]) != level ||
             (x < 7.0f && std::bit_cast<uint32_t>(rounded[j]) != level);
    }
  }
  return bad;
}
// Block scales given by their bits whose codes and values differ from the reference's clamp,
// encode and decode.
int64_t block_scale_mismatches(const uint32_t* bits, const uint32_t* codes, const float* values, int n) {
  int64_t bad = 0;
  for (int j = 0; j < n; ++j) {
    const uint8_t code = e4m3_encode(nvfp4_clamp_block_scale(std::bit_cast<float>(bits[j])));
    bad += codes[j] != code || std::bit_cast<uint32_t>(values[j]) != std::bit_cast<uint32_t>(e4m3_decode(code));
  }
  return bad;
}
// The AVX2 block-scale rounding (clamped to [2^-9, 448], then the multiply-add rounding) of 8
// floats by their bits against the reference's clamp, encode and decode: the mismatches.
int64_t avx2_block_scale_mismatches(const uint32_t* bits) {
  const cpu::e4m3_avx2::block_scale r =
      cpu::e4m3_avx2::round_block_scale(_mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits))));
  alignas(32) uint32_t codes[8];
  alignas(32) float values[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(codes), r.code);
  _mm256_store_ps(values, r.value);
  return block_scale_mismatches(bits, codes, values, 8);
}
}  // namespace
}  // namespace mixq
#pragma GCC pop_options
MIXQ_BEGIN_AVX512_REGION
#include "kernels/cpu/e4m3_avx512.hpp"
namespace mixq {
namespace {
// The same for the AVX-512 form, 16 floats.
int64_t avx512_block_scale_mismatches(const uint32_t* bits) {
  const cpu::e4m3_avx512::block_scale r = cpu::e4m3_avx512::round_block_scale(_mm512_castsi512_ps(_mm512_loadu_si512(bits)));
  alignas(64) uint32_t codes[16];
  alignas(64) float values[16];
  _mm512_store_si512(codes, r.code);
  _mm512_store_ps(values, r.value);
  return block_scale_mismatches(bits, codes, values, 16);
}
}  // namespace
}  // namespace mixq
MIXQ_END_AVX512_REGION
#endif

namespace mixq {
namespace {

using testing::all_kinds;
using testing::as_dtype;
using testing::kDtypes;
using testing::sourced;
using testing::view_of;


// The 16-lane arithmetic against the scalar references, 16 floats at a time.
template <class Check>
int64_t count_lane_mismatches(uint32_t first, uint32_t last, uint32_t stride, Check check) {
  int64_t mismatches = 0;
  for (uint64_t u = first; u <= last; u += 16ull * stride) {
    float in[16];
    for (uint32_t j = 0; j < 16; ++j) in[j] = std::bit_cast<float>(uint32_t(std::min<uint64_t>(u + j * stride, last)));
    cpu::lanes::v16f v;
    std::memcpy(&v, in, sizeof v);
    mismatches += check(v, in);
  }
  return mismatches;
}

TEST(cpu_kernels, lane_e2m1_rounding_matches_the_reference) {
  // Every float in [2^-4, 1024) (all the rounding boundaries), every 97th below, and inf.
  auto check = [](cpu::lanes::v16f q, const float* in) {
    const auto codes = cpu::lanes::e2m1_codes(q);
    const auto mags = cpu::lanes::e2m1_magnitudes(codes);
    int bad = 0;
    for (int j = 0; j < 16; ++j) bad += codes[j] != e2m1_magnitude_code(in[j]) || mags[j] != e2m1_round_magnitude(in[j]);
    return bad;
  };
  EXPECT_EQ(count_lane_mismatches(0, 0x3d800000u, 97, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x3d800000u, 0x44800000u, 1, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x7f000000u, 0x7f800000u, 4099, check), 0);  // huge values and inf saturate
}

// Every float from 0 to +inf at a stride, and every one within 4096 ulps of each rounding threshold,
// level and saturation point, and of the largest floats.
TEST(cpu_kernels, avx2_e2m1_rounding_matches_the_reference) {
#if MIXQ_HAVE_SIMD_TARGETS
  if (cpu::cpu_simd_level() < cpu::simd_level::avx2) GTEST_SKIP() << "no AVX2";
  int64_t mismatches = 0;
  std::vector<uint32_t> bits;
  for (uint64_t first = 0; first < 0x7f800000u; first += 61u << 20) {  // in chunks of 2^20 values
    bits.clear();
    for (uint64_t u = first; u < std::min<uint64_t>(first + (61u << 20), 0x7f800000u); u += 61) bits.push_back(uint32_t(u));
    while (bits.size() % 8 != 0) bits.push_back(0);
    mismatches += avx2_e2m1_mismatches(bits);
  }
  bits.clear();
  for (float t : {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 0x1p106f,
                  0x1p107f, 0x1p127f})
    for (int d = -4096; d <= 4096; ++d) bits.push_back(uint32_t(int64_t(std::bit_cast<uint32_t>(t)) + d));
  for (uint32_t u = 0x7f800000u - 4096; u <= 0x7f800000u; ++u) bits.push_back(u);
  while (bits.size() % 8 != 0) bits.push_back(0);
  EXPECT_EQ(mismatches + avx2_e2m1_mismatches(bits), 0);
#else
  GTEST_SKIP() << "no x86 SIMD targets";
#endif
}

TEST(cpu_kernels, lane_e4m3_codec_matches_the_reference) {
  // Every positive float a block scale can take (after the [2^-9, 448] clamp), and all codes.
  auto check = [](cpu::lanes::v16f s, const float* in) {
    const auto codes = cpu::lanes::e4m3_encode(s);
    const auto values = cpu::lanes::e4m3_decode(codes);
    int bad = 0;
    for (int j = 0; j < 16; ++j) bad += codes[j] != e4m3_encode(in[j]) || values[j] != e4m3_decode(uint8_t(codes[j]));
    return bad;
  };
  EXPECT_EQ(count_lane_mismatches(0x3b000000u, 0x43e00000u, 1, check), 0);
}

// The block scales' multiply-add rounding (AVX2 and AVX-512 forms) against the reference's clamp,
// encode and decode: every float from 2^-10 to 512 (below the clamp, every E4M3 subnormal and
// normal step and rounding boundary, the clamp at 448), every 4099th beyond, and +inf.
TEST(cpu_kernels, simd_block_scale_rounding_matches_the_reference) {
#if MIXQ_HAVE_SIMD_TARGETS
  if (cpu::cpu_simd_level() < cpu::simd_level::avx2) GTEST_SKIP() << "no AVX2";
  const bool avx512 = cpu::cpu_simd_level() >= cpu::simd_level::avx512;
  int64_t bad2 = 0, bad512 = 0;
  const auto check = [&](uint64_t first, uint64_t last, uint64_t stride) {
    alignas(64) uint32_t bits[16];
    for (uint64_t u = first; u <= last; u += 16 * stride) {
      for (uint64_t j = 0; j < 16; ++j) bits[j] = uint32_t(std::min(u + j * stride, last));
      bad2 += avx2_block_scale_mismatches(bits) + avx2_block_scale_mismatches(bits + 8);
      if (avx512) bad512 += avx512_block_scale_mismatches(bits);
    }
  };
  check(0, 0x3a800000u, 4099);
  check(0x3a800000u, 0x44000000u, 1);
  check(0x44000000u, 0x7f800000u, 4099);
  EXPECT_EQ(bad2, 0);
  EXPECT_EQ(bad512, 0);
#else
  GTEST_SKIP() << "no x86 SIMD targets";
#endif
}

TEST(cpu_kernels, lane_e4m3_rounding_matches_the_codec) {
  // Every float in [2^-12, 512) (the subnormal steps, every rounding boundary, the saturation),
  // every 7th below, huge values and inf.
  auto check = [](cpu::lanes::v16f s, const float* in) {
    const auto values = cpu::lanes::e4m3_round(s);
    int bad = 0;
    for (int j = 0; j < 16; ++j)
      bad += std::bit_cast<uint32_t>(values[j]) != std::bit_cast<uint32_t>(e4m3_decode(e4m3_encode(in[j])));
    return bad;
  };
  EXPECT_EQ(count_lane_mismatches(0, 0x39800000u, 7, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x39800000u, 0x44000000u, 1, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x44000000u, 0x7f800000u, 4099, check), 0);
}

TEST(cpu_kernels, lane_e2m1_codes_by_key_match_the_reference) {
  // The table lookup's keys: every float in [2^-5, 64), every 97th below, huge values and inf.
  auto check = [](cpu::lanes::v16f q, const float* in) {
    const auto codes = cpu::lanes::e2m1_codes_by_key(q);
    int bad = 0;
    for (int j = 0; j < 16; ++j) bad += codes[j] != e2m1_magnitude_code(in[j]);
    return bad;
  };
  EXPECT_EQ(count_lane_mismatches(0, 0x3d000000u, 97, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x3d000000u, 0x42800000u, 1, check), 0);
  EXPECT_EQ(count_lane_mismatches(0x42800000u, 0x7f800000u, 4099, check), 0);
}

TEST(cpu_kernels, lane_reductions_of_16_vectors_match_one_at_a_time) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int trial = 0; trial < 200; ++trial) {
    cpu::lanes::v16f v[16];
    for (auto& x : v)
      for (int j = 0; j < 16; ++j) x[j] = std::ldexp(u(rng), int(rng() % 40) - 20);  // sums that round
    const auto sums = cpu::lanes::reduce16x16(v, cpu::lanes::sum_op{});
    const auto maxima = cpu::lanes::reduce16x16(v, cpu::lanes::max_op{});
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(std::bit_cast<uint32_t>(sums[j]), std::bit_cast<uint32_t>(cpu::lanes::sum16(v[j])));
      EXPECT_EQ(maxima[j], cpu::lanes::max16(v[j]));
    }
  }
}

TEST(cpu_kernels, nvfp4_every_selector_bit_identical) {
  const nvfp4_selector selectors[] = {nvfp4_selector::max, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_fp8_sweep,
                                      nvfp4_selector::four_over_six, nvfp4_selector::mse_four_over_six};
  // 240 blocks (whole vectors of 16 blocks), 15 (a tail only) and 68 (vectors and a tail).
  std::vector<testing::test_tensor> tensors = all_kinds(24, 160, 31);
  for (auto& t : all_kinds(5, 48, 32)) tensors.push_back(t);
  for (auto& t : all_kinds(17, 64, 33)) tensors.push_back(t);
  for (const auto& t : tensors)
    for (auto dtype : kDtypes) {
      const sourced s = as_dtype(t, dtype);
      for (auto sel : selectors) {
        nvfp4_options o;
        o.selector = sel;
        const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
        const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
        EXPECT_EQ(fast.global_scale, ref.global_scale) << t.name << " " << selector_name(sel);
        EXPECT_EQ(fast.normalizer, ref.normalizer) << t.name << " " << selector_name(sel);
        EXPECT_EQ(fast.block_scales, ref.block_scales) << t.name << " " << selector_name(sel);
        EXPECT_EQ(fast.packed, ref.packed) << t.name << " " << selector_name(sel);
        std::vector<float> a(t.values.size()), b(t.values.size());
        nvfp4_dequantize(ref, a);
        cpu::nvfp4_dequantize(fast, b);
        EXPECT_EQ(a, b);
      }
    }
}

TEST(cpu_kernels, nvfp4_agrees_when_block_errors_overflow) {
  // Values near 1e25: squared errors overflow float for many candidate scales.
  auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 4, 64, 81);
  for (auto& v : t.values) v *= 1e27f;
  for (auto sel : {nvfp4_selector::mse_multiplier, nvfp4_selector::mse_fp8_sweep, nvfp4_selector::four_over_six,
                   nvfp4_selector::mse_four_over_six}) {
    nvfp4_options o;
    o.selector = sel;
    const nvfp4_weight ref = nvfp4_quantize(t.view(), o);
    const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32(t.view()), o);
    EXPECT_EQ(fast.block_scales, ref.block_scales) << selector_name(sel);
    EXPECT_EQ(fast.packed, ref.packed) << selector_name(sel);
    for (uint8_t s : ref.block_scales) EXPECT_NE(s, 0) << selector_name(sel);  // never a zero scale
  }
}

TEST(cpu_kernels, nvfp4_mse_searches_bit_identical_on_ties_and_near_ties) {
  // Blocks whose values sit on the E2M1 grid of one candidate step (so several steps give no error
  // or the same error: k and k+8 tie whenever the levels are all even), a few ulps off it, or at
  // the midpoints between levels; the searches must pick the reference's code, the smallest of a tie.
  std::mt19937 rng(11);
  const int64_t rows = 64, cols = 256;
  for (int variant = 0; variant < 4; ++variant) {
    std::vector<float> values(size_t(rows * cols));
    const float global_amax = 3.0f, ws2 = nvfp4_global_scale(global_amax, kNvfp4Normalizer);
    for (int64_t b = 0; b < rows * cols / 16; ++b) {
      const float step = e4m3_decode_table()[40 + rng() % 60] * ws2;
      for (int i = 0; i < 16; ++i) {
        const int level = variant == 1 ? int(rng() % 4) * 2 : int(rng() % 8);  // variant 1: even levels
        float v = kE2M1Magnitudes[level] * step;
        if (variant == 2) v = std::nextafter(v, rng() % 2 ? 0.0f : INFINITY);
        if (variant == 3 && level < 7) v = 0.5f * (kE2M1Magnitudes[level] + kE2M1Magnitudes[level + 1]) * step;
        values[size_t(b * 16 + i)] = std::min(v, global_amax) * (rng() % 2 ? -1.0f : 1.0f);
      }
    }
    values[0] = global_amax;
    const weight_view w{values.data(), rows, cols, "ties"};
    for (auto sel : {nvfp4_selector::mse_fp8_sweep, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_four_over_six}) {
      nvfp4_options o;
      o.selector = sel;
      const nvfp4_weight ref = nvfp4_quantize(w, o);
      const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32(w), o);
      EXPECT_EQ(fast.block_scales, ref.block_scales) << variant << " " << selector_name(sel);
      EXPECT_EQ(fast.packed, ref.packed) << variant << " " << selector_name(sel);
    }
  }
}

// The three MSE searches of w (F32) against the reference, bit for bit, at every SIMD level here.
void expect_searches_match_at_every_level(const weight_view& w) {
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    for (auto sel : {nvfp4_selector::mse_fp8_sweep, nvfp4_selector::mse_four_over_six, nvfp4_selector::mse_multiplier}) {
      nvfp4_options o;
      o.selector = sel;
      const nvfp4_weight ref = nvfp4_quantize(w, o);
      const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32(w), o);
      EXPECT_EQ(fast.block_scales, ref.block_scales) << w.name << " " << int(level) << " " << selector_name(sel);
      EXPECT_EQ(fast.packed, ref.packed) << w.name << " " << int(level) << " " << selector_name(sel);
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

TEST(cpu_kernels, nvfp4_sweep_on_blocks_hard_to_bound_bit_identical) {
  // Blocks whose least error over the codes k0 − 3 .. k0 + 8 around the max rule's k0 exceeds the
  // clipped max's term at k0 − 4 (magnitudes spread over the block, kept where that holds), so that
  // a narrow search window cannot rule out the codes below it and a wider one or the reference must
  // decide; among them blocks whose maxima sit on both sides of half the tensor's amax (where the
  // windows meet the top code, 126), and ordinary blocks between them.
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float global_amax = 1.0f, ws2 = nvfp4_global_scale(global_amax, kNvfp4Normalizer);
  const auto step = [&](int k) { return e4m3_decode_table()[k] * ws2; };
  const auto hard = [&](const float* x, float bmax) {
    const int k0 = e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2));
    if (k0 < 12 || k0 > 118) return false;
    const float clipped = bmax - 6.0f * step(k0 - 4);
    float least = INFINITY;
    for (int k = k0 - 3; k <= k0 + 8; ++k) least = std::min(least, nvfp4_block_sq_error(x, step(k)));
    return least >= clipped * clipped;
  };
  std::vector<float> values;
  int64_t hard_blocks = 0, at_118 = 0, above_118 = 0;  // (narrow windows stop at k0 = 118)
  for (int attempt = 0; attempt < 400000 && hard_blocks < 512; ++attempt) {
    const float picks[] = {0.5f, 0.49f, 0.3f, 0.03f, 1e-3f};
    const float bmax = picks[rng() % 5] * (0.9f + 0.2f * unit(rng));
    float x[16];
    const float power = 0.3f + 2.0f * unit(rng);  // how the magnitudes spread below the max
    for (float& v : x) v = bmax * std::pow(unit(rng), power);
    x[rng() % 16] = bmax;
    const bool is_hard = hard(x, bmax);
    if (!is_hard && attempt % 8 != 0) continue;
    hard_blocks += is_hard;
    const int k0 = e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2));
    at_118 += k0 == 118, above_118 += k0 > 118;
    for (float v : x) values.push_back(rng() % 2 ? -v : v);
  }
  EXPECT_GE(hard_blocks, 256);
  EXPECT_GT(at_118, 0);
  EXPECT_GT(above_118, 0);
  values.resize(values.size() / 256 * 256);
  values[0] = global_amax;
  const weight_view w{values.data(), int64_t(values.size() / 256), 256, "hard"};
  expect_searches_match_at_every_level(w);
}

TEST(cpu_kernels, nvfp4_searches_at_the_narrow_windows_edges_bit_identical) {
  // The AVX-512 searches estimate the 12 codes k0 − 3 .. k0 + 8 with a lane per block where
  // 12 <= k0 <= 118, count values whose quotient at code k0 − 3 is at most 1/4 as level 0 at every
  // code, and take codes k0 + 5 .. k0 + 8 from the quotients of k0 − 3 .. k0: blocks with maxima
  // at k0 from 9 (below the narrow windows) to 126 (above), values at that 1/4, an ulp either side
  // of it and up to half above it, values far below it, zeros, and values on a code's E2M1 grid
  // (ties between a code and the one 8 above). (The blocks that make the windows' own bounds work,
  // with least errors at their edges, are nvfp4_sweep_on_blocks_hard_to_bound_bit_identical's.)
  std::mt19937 rng(29);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float global_amax = 1.0f, ws2 = nvfp4_global_scale(global_amax, kNvfp4Normalizer);
  const auto step = [&](int k) { return e4m3_decode_table()[k] * ws2; };
  const int targets[] = {9, 10, 11, 12, 13, 40, 117, 118, 119, 126};
  std::vector<float> values;
  int narrow = 0, outside = 0;
  for (int b = 0; b < 16 * 160; ++b) {
    const int target = targets[b % std::size(targets)];
    const float bmax = std::min(step(target) * 6.0f * (0.97f + 0.06f * unit(rng)), global_amax);
    const int k0 = e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2));
    (k0 >= 12 && k0 <= 118 ? narrow : outside) += 1;
    const float quarter = 0.25f * step(std::max(k0 - 3, 1));
    float x[16];
    for (int i = 0; i < 16; ++i) {
      switch ((b / int(std::size(targets)) + i) % 7) {
        case 0: x[i] = quarter; break;
        case 1: x[i] = std::nextafter(quarter, INFINITY); break;
        case 2: x[i] = std::nextafter(quarter, 0.0f); break;
        case 3: x[i] = quarter * std::ldexp(unit(rng), -int(rng() % 8)); break;
        case 4: x[i] = quarter * (1.0f + 0.5f * unit(rng)); break;  // level 1/2 at k0 − 3, 0 from some code up
        case 5: x[i] = kE2M1Magnitudes[rng() % 8] * step(std::clamp(k0 + int(rng() % 12) - 3, 1, 126)); break;
        default: x[i] = rng() % 4 ? bmax * unit(rng) : 0.0f;
      }
      x[i] = std::min(x[i], bmax);
    }
    x[rng() % 16] = bmax;
    for (float v : x) values.push_back(rng() % 2 ? -v : v);
  }
  EXPECT_GT(narrow, 256);
  EXPECT_GT(outside, 256);
  values[0] = global_amax;
  const weight_view w{values.data(), int64_t(values.size() / 256), 256, "narrow edges"};
  expect_searches_match_at_every_level(w);
}

// The searches over BF16 weights of kNvfp4TermTableBlocks blocks, whose window estimates (AVX2)
// come from a table of every term: ordinary and heavy-tailed blocks, blocks on the E2M1 grid of a
// code's step, blocks with values below 2^-63 (BF16 subnormals and zeros too) beside larger ones,
// and maxima from the global amax down to 2^-30 of it (window codes at the top, and subnormal ones
// for the least), under global amaxes from 2^-30 to 2^40 (weight scales at and past the ends of
// the range the window search takes).
TEST(cpu_kernels, nvfp4_searches_over_large_bf16_bit_identical) {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  testing::test_tensor base{"bf16 64x2048", 64, 2048, std::vector<float>(64 * 2048)};
  static_assert(64 * 2048 / 16 == cpu::kNvfp4TermTableBlocks);
  const float ws2 = nvfp4_global_scale(1.0f, kNvfp4Normalizer);
  for (size_t b = 0; b < base.values.size() / 16; ++b) {
    const float bmax = std::ldexp(1.0f, -int(rng() % 31)) * (1.0f + float(rng() % 128) / 128.0f) * 0.5f;
    const int k = std::clamp(int(e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2))) + int(rng() % 11) - 3, 1, 126);
    for (int i = 0; i < 16; ++i) {
      float v = 0.0f;
      switch (b % 5) {
        case 0: v = bmax * std::min(std::fabs(normal(rng)) / 3.0f, 1.0f); break;
        case 1: v = bmax * std::pow(unit(rng), 4.0f); break;
        case 2: v = kE2M1Magnitudes[rng() % 8] * e4m3_decode_table()[k] * ws2; break;
        case 3: v = i < 6 ? bmax * unit(rng) : std::ldexp(1.0f + float(rng() % 128) / 128.0f, -64 - int(rng() % 72)); break;
        default: v = rng() % 2 ? 0.0f : bmax * unit(rng);
      }
      base.values[b * 16 + size_t(i)] = rng() % 2 ? -v : v;
    }
  }
  // Blocks whose least error is at a subnormal code of their window (lo = k0 − 7 < 8): values on
  // that code's E2M1 grid, the max clipped there.
  int subnormal_best = 0;
  for (int attempt = 0; attempt < 400000 && subnormal_best < 8; ++attempt) {
    const float s = e4m3_decode_table()[2 + rng() % 6] * ws2;
    float x[16];
    for (float& v : x) v = bf16_decode(bf16_encode(kE2M1Magnitudes[rng() % 8] * s));
    x[0] = bf16_decode(bf16_encode(s * (6.0f + 4.0f * unit(rng))));
    const float bmax = *std::max_element(x, x + 16);
    const int k0 = e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2));
    if (k0 < 9 || k0 > 14 || nvfp4_choose_block_scale(x, bmax, 1.0f, kNvfp4Normalizer, nvfp4_selector::mse_fp8_sweep, {}) >= 8)
      continue;
    std::copy(x, x + 16, base.values.begin() + 16 * (16 + subnormal_best++));
  }
  EXPECT_EQ(subnormal_best, 8);
  base.values[0] = 1.0f;
  for (int e : {0, -30, 40, -12, 20}) {
    testing::test_tensor t = base;
    t.name += fmt::format(" · 2^{}", e);
    for (float& v : t.values) v = std::ldexp(v, e);
    const sourced s = as_dtype(t, cpu::source_dtype::bf16);
    for (auto sel : {nvfp4_selector::mse_fp8_sweep, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_four_over_six}) {
      nvfp4_options o;
      o.selector = sel;
      const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
      for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
        if (level > cpu::cpu_simd_level()) continue;
        cpu::limit_simd_level(level);
        const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
        EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level) << " " << t.name << " " << selector_name(sel);
        EXPECT_EQ(fast.packed, ref.packed) << int(level) << " " << t.name << " " << selector_name(sel);
      }
      cpu::limit_simd_level(cpu::cpu_simd_level());
    }
  }
}

// MXFP4, MXFP8 and NF4 of one source, fast against the reference.
void expect_mx_and_nf4_as_the_reference(const sourced& s) {
  for (format_id f : {format_id::mxfp4, format_id::mxfp8}) {
    const mx_weight ref = mx_quantize(view_of(s), f);
    const mx_weight fast = cpu::mx_quantize(s.source, f);
    EXPECT_EQ(fast.scales, ref.scales) << s.source.name << " " << traits_of(f).name;
    EXPECT_EQ(fast.elements, ref.elements) << s.source.name << " " << traits_of(f).name;
  }
  const nf4_weight ref = nf4_quantize(view_of(s));
  const nf4_weight fast = cpu::nf4_quantize(s.source);
  EXPECT_EQ(fast.scales, ref.scales) << s.source.name;
  EXPECT_EQ(fast.packed, ref.packed) << s.source.name;
}

// Every instantiation of the dispatched kernels this CPU runs (AVX-512, AVX2, baseline x86-64),
// not only the one dispatch picks.
TEST(cpu_kernels, every_simd_level_bit_identical) {
  const nvfp4_selector selectors[] = {nvfp4_selector::max, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_fp8_sweep,
                                      nvfp4_selector::four_over_six, nvfp4_selector::mse_four_over_six};
  std::vector<testing::test_tensor> tensors = all_kinds(8, 160, 91);
  for (auto& t : all_kinds(3, 48, 92)) tensors.push_back(t);  // a partial group only
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    for (const auto& t : tensors)
      for (auto dtype : kDtypes) {
        const sourced s = as_dtype(t, dtype);
        for (auto sel : selectors) {
          nvfp4_options o;
          o.selector = sel;
          const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
          const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
          EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level) << " " << t.name << " " << selector_name(sel);
          EXPECT_EQ(fast.packed, ref.packed) << int(level) << " " << t.name << " " << selector_name(sel);
        }
        for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel})
          for (auto sel : {fp8_selector::max, fp8_selector::mse}) {
            fp8_options o;
            o.granularity = gran;
            o.selector = sel;
            const fp8_weight ref = fp8_quantize(view_of(s), o);
            const fp8_weight fast = cpu::fp8_quantize(s.source, o);
            EXPECT_EQ(fast.scales, ref.scales) << int(level) << " " << t.name;
            EXPECT_EQ(fast.codes, ref.codes) << int(level) << " " << t.name;
          }
      }
    for (const auto& t : all_kinds(4, 128, 93))  // (MX and NF4 need whole blocks of 32 / 64)
      for (auto dtype : kDtypes) expect_mx_and_nf4_as_the_reference(as_dtype(t, dtype));
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// FP8 codes of every magnitude class: floats from 0 to 512 at a stride and within 64 ulps of every
// E4M3 value and rounding midpoint (subnormals included), and from 2^60 to the largest float, both
// signs and -0, under scales that keep the small ones (amax 448: scale 1), saturate them (scale
// 1/16) and overflow the quotient of the large ones to inf, at every SIMD level, against the
// reference.
TEST(cpu_kernels, fp8_codes_of_every_magnitude_class_bit_identical) {
  std::vector<float> values;
  for (uint32_t u = 0; u <= 0x44000000u; u += 997) values.push_back(std::bit_cast<float>(u));
  for (uint32_t c = 0; c < 0x7e; ++c) {
    const float v = e4m3_decode(uint8_t(c)), next = e4m3_decode(uint8_t(c + 1));
    for (float center : {v, (v + next) / 2})
      for (int64_t d = -64; d <= 64; ++d)
        if (int64_t(std::bit_cast<uint32_t>(center)) + d >= 0) values.push_back(std::bit_cast<float>(uint32_t(std::bit_cast<uint32_t>(center) + d)));
  }
  for (uint32_t u = 0x5d800000u; u < 0x7f800000u; u += 99991) values.push_back(std::bit_cast<float>(u));  // 2^60 up
  for (size_t i = 0; i < values.size(); i += 2) values[i] = -values[i];
  values.push_back(-0.0f);
  values.push_back(448.0f);
  const int64_t cols = 1000;  // (rows end in a partial vector)
  values.resize((values.size() + cols - 1) / cols * cols, 0.0f);
  const testing::test_tensor t{"fp8_classes", int64_t(values.size()) / cols, cols, values};
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    for (float amax : {448.0f, 28.0f, 0x1p-20f}) {
      fp8_options o;
      o.amax = amax;
      const sourced s = as_dtype(t, cpu::source_dtype::f32);
      const fp8_weight ref = fp8_quantize(view_of(s), o);
      const fp8_weight fast = cpu::fp8_quantize(s.source, o);
      EXPECT_EQ(fast.scales, ref.scales) << int(level) << " amax " << amax;
      EXPECT_EQ(fast.codes, ref.codes) << int(level) << " amax " << amax;
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// Rows' exact FP8 errors, bit for bit the reference's sums, at every SIMD level: lengths with and
// without a tail, magnitudes from FP8's subnormals to saturation and quotients that overflow.
TEST(cpu_kernels, fp8_row_errors_are_the_reference_sums) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<float> multipliers = {0x1p-40f, 0.001f, 0.25f, 0.7f, 1.0f, 1.3f, 4.0f, 1e6f, 0x1p100f};
  for (int64_t n : {int64_t(37), int64_t(1000), int64_t(4096)}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = normal(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
    x[0] = 0.0f, x[1] = -0.0f;
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
      if (level > cpu::cpu_simd_level()) continue;
      cpu::limit_simd_level(level);
      std::vector<double> err(multipliers.size());
      cpu::fp8_row_errors(x.data(), n, amax, multipliers, err.data());
      for (size_t c = 0; c < multipliers.size(); ++c) {
        const double ref = fp8_row_sq_error(x.data(), n, fp8_scale_for_amax(amax * multipliers[c]));
        EXPECT_EQ(std::bit_cast<uint64_t>(err[c]), std::bit_cast<uint64_t>(ref)) << int(level) << " n " << n << " m " << multipliers[c];
      }
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

TEST(cpu_kernels, fp8_every_granularity_and_selector_bit_identical) {
  std::vector<testing::test_tensor> tensors = all_kinds(16, 96, 41);
  for (auto& t : all_kinds(7, 103, 42)) tensors.push_back(t);  // rows that end in a partial vector
  for (const auto& t : tensors)
    for (auto dtype : kDtypes) {
      const sourced s = as_dtype(t, dtype);
      for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel})
        for (auto sel : {fp8_selector::max, fp8_selector::mse}) {
          fp8_options o;
          o.granularity = gran;
          o.selector = sel;
          const fp8_weight ref = fp8_quantize(view_of(s), o);
          const fp8_weight fast = cpu::fp8_quantize(s.source, o);
          EXPECT_EQ(fast.scales, ref.scales) << t.name;
          EXPECT_EQ(fast.codes, ref.codes) << t.name;
          std::vector<float> a(t.values.size()), b(t.values.size());
          fp8_dequantize(ref, a);
          cpu::fp8_dequantize(fast, b);
          EXPECT_EQ(a, b);
        }
    }
}


TEST(cpu_kernels, mx_and_nf4_bit_identical) {
  for (const auto& t : all_kinds(8, 128, 51))
    for (auto dtype : kDtypes) expect_mx_and_nf4_as_the_reference(as_dtype(t, dtype));
}

// MX and NF4 blocks at the ends of the ranges: F32 subnormal blocks (the shared exponent through
// ilogb), huge blocks (NF4's FP16 scale clamped at 65504, MX elements saturating), -0, one value.
TEST(cpu_kernels, mx_and_nf4_extreme_blocks_bit_identical) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  testing::test_tensor t{"extreme", 6, 128, std::vector<float>(6 * 128)};
  const int shifts[] = {-140, -130, -100, 0, 100, 120};
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 128; ++c) t.values[size_t(r * 128 + c)] = std::ldexp(normal(rng), shifts[r]);
  t.values[5] = -0.0f;
  for (int c = 64; c < 128; ++c) t.values[size_t(128 + c)] = c == 100 ? 3e-39f : 0.0f;  // one value in a block
  expect_mx_and_nf4_as_the_reference(as_dtype(t, cpu::source_dtype::f32));
}

// NF4 values exactly at the midpoints between codes (ties take the lower code) and one ulp either
// side, under block scales 1 and 2 (exact in FP16, so x / scale is the midpoint itself).
TEST(cpu_kernels, nf4_midpoint_ties_bit_identical) {
  const auto book = nf4_codebook();
  testing::test_tensor t{"nf4 ties", 6, 64, {}};
  for (int r = 0; r < 6; ++r) {
    const float scale = r < 3 ? 1.0f : 2.0f;
    for (int c = 0; c < 64; ++c) {
      const int j = c % 15;
      float mid = (book[size_t(j)] + book[size_t(j) + 1]) * 0.5f;
      if (r % 3 == 1) mid = std::nextafter(mid, 2.0f);
      if (r % 3 == 2) mid = std::nextafter(mid, -2.0f);
      t.values.push_back(c % 32 == 31 ? scale : mid * scale);  // (each block's max: the scale)
    }
  }
  expect_mx_and_nf4_as_the_reference(as_dtype(t, cpu::source_dtype::f32));
}

// Dequantization over every code and every scale byte / FP16 scale (NaN ones included: compared
// bit for bit).
TEST(cpu_kernels, mx_and_nf4_dequantize_bit_identical) {
  std::mt19937 rng(7);
  const auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  for (format_id f : {format_id::mxfp4, format_id::mxfp8}) {
    mx_weight q;
    q.format = f;
    q.rows = 256;
    q.cols = 64;
    q.scales.resize(size_t(q.rows * q.cols / kMxBlock));
    for (size_t i = 0; i < q.scales.size(); ++i) q.scales[i] = uint8_t(i);  // every E8M0 byte
    q.elements.resize(size_t(f == format_id::mxfp4 ? q.rows * q.cols / 2 : q.rows * q.cols));
    for (auto& e : q.elements) e = uint8_t(rng());
    std::vector<float> ref(size_t(q.rows * q.cols)), fast(ref.size());
    mx_dequantize(q, ref);
    cpu::mx_dequantize(q, fast);
    EXPECT_TRUE(same_bits(ref, fast)) << traits_of(f).name;
  }
  nf4_weight q;
  q.rows = 1024;
  q.cols = 64 * 64;
  q.scales.resize(size_t(q.rows * q.cols / kNf4Block));
  for (size_t i = 0; i < q.scales.size(); ++i) q.scales[i] = uint16_t(i);  // every FP16 pattern
  q.packed.resize(size_t(q.rows * q.cols / 2));
  for (auto& p : q.packed) p = uint8_t(rng());
  std::vector<float> ref(size_t(q.rows * q.cols)), fast(ref.size());
  nf4_dequantize(q, ref);
  cpu::nf4_dequantize(q, fast);
  EXPECT_TRUE(same_bits(ref, fast));
}

TEST(cpu_kernels, fake_quant_matches_reference_for_every_format) {
  const auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 16, 128, 61);
  const sourced s = as_dtype(t, cpu::source_dtype::bf16);
  for (const auto& f : all_formats()) {
    weight_quant_spec spec;
    spec.format = f.id;
    std::vector<float> a(t.values.size()), b(t.values.size());
    fake_quant_weight(view_of(s), spec, a);
    cpu::fake_quant_weight(s.source, spec, b);
    EXPECT_EQ(a, b) << describe(spec);
  }
}

TEST(cpu_kernels, zeroed_nonfinite_values_bit_identical) {
  // With nonfinite_policy::zero the kernels take their general paths (the in-place amax passes
  // see the inf / NaN and step aside).
  auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 8, 96, 73);
  t.values[5] = INFINITY;
  t.values[300] = -INFINITY;
  t.values[511] = NAN;
  for (auto dtype : kDtypes) {
    const sourced s = as_dtype(t, dtype);
    for (auto sel : {nvfp4_selector::max, nvfp4_selector::mse_fp8_sweep, nvfp4_selector::four_over_six}) {
      nvfp4_options o;
      o.selector = sel;
      o.nonfinite = nonfinite_policy::zero;
      const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
      const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
      EXPECT_EQ(fast.global_scale, ref.global_scale);
      EXPECT_EQ(fast.block_scales, ref.block_scales) << selector_name(sel);
      EXPECT_EQ(fast.packed, ref.packed) << selector_name(sel);
    }
    for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel})
      for (auto sel : {fp8_selector::max, fp8_selector::mse}) {
        fp8_options o;
        o.granularity = gran;
        o.selector = sel;
        o.nonfinite = nonfinite_policy::zero;
        const fp8_weight ref = fp8_quantize(view_of(s), o);
        const fp8_weight fast = cpu::fp8_quantize(s.source, o);
        EXPECT_EQ(fast.scales, ref.scales);
        EXPECT_EQ(fast.codes, ref.codes);
      }
    for (auto f : {format_id::mxfp4, format_id::mxfp8}) {  // (their first pass sees the inf / NaN and redoes)
      const mx_weight ref = mx_quantize(view_of(s), f, nonfinite_policy::zero);
      const mx_weight fast = cpu::mx_quantize(s.source, f, nonfinite_policy::zero);
      EXPECT_EQ(fast.scales, ref.scales);
      EXPECT_EQ(fast.elements, ref.elements);
    }
  }
  auto t64 = testing::make_tensor(testing::tensor_kind::heavy_tailed, 4, 128, 74);  // NF4: K a multiple of 64
  t64.values[5] = INFINITY;
  t64.values[300] = NAN;
  for (auto dtype : kDtypes) {
    const sourced s = as_dtype(t64, dtype);
    const nf4_weight ref = nf4_quantize(view_of(s), nonfinite_policy::zero);
    const nf4_weight fast = cpu::nf4_quantize(s.source, nonfinite_policy::zero);
    EXPECT_EQ(fast.scales, ref.scales);
    EXPECT_EQ(fast.packed, ref.packed);
  }
}

// Four-over-six on blocks whose two candidates' errors lie within rounding of each other: one value
// of each block is moved by bisection to where the reference's choice flips, and both neighbours
// of the flip are kept. There the choice rests on the reference's exact order of the error sums
// (and its strict comparison), which every fast path must keep, at every SIMD level.
TEST(cpu_kernels, nvfp4_four_over_six_near_ties_bit_identical) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float global_amax = 8.0f;
  const auto second = [&](const std::vector<float>& x) {  // the reference picks the max -> 4 scale
    float bmax = 0.0f;
    for (float v : x) bmax = std::max(bmax, std::fabs(v));
    const float n = kNvfp4FourOverSixNormalizer;
    return nvfp4_choose_block_scale(x.data(), bmax, global_amax, n, nvfp4_selector::four_over_six, {}) !=
           e4m3_encode(nvfp4_block_scale_f32(bmax, global_amax, n));
  };
  std::vector<float> values;
  while (values.size() < 64 * 256) {
    std::vector<float> x(kNvfp4Block);
    const float scale = std::ldexp(1.0f, -int(rng() % 8));
    for (float& v : x) v = std::clamp(normal(rng), -3.0f, 3.0f) * scale;
    x[0] = 3.0f * scale;  // the block max, fixed
    // x[15] swept over [0, max): adjacent samples with different choices bracket a flip.
    float lo = 0.0f, hi = -1.0f;
    bool at_lo = (x[15] = lo, second(x));
    for (int i = 1; i <= 64 && hi < 0.0f; ++i) {
      const float t = x[0] * float(i) / 65.0f;
      if ((x[15] = t, second(x)) != at_lo) hi = t;
      else lo = t;
    }
    if (hi < 0.0f) continue;
    while (std::nextafter(lo, hi) != hi) {  // (positive floats order as their bits)
      const float mid = std::bit_cast<float>((std::bit_cast<uint32_t>(lo) + std::bit_cast<uint32_t>(hi)) / 2);
      if ((x[15] = mid, second(x)) == at_lo) lo = mid;
      else hi = mid;
    }
    for (float end : {lo, hi}) {
      x[15] = end * (rng() % 2 ? 1.0f : -1.0f);
      values.insert(values.end(), x.begin(), x.end());
    }
  }
  const weight_view w{values.data(), 64, 256, "near ties"};
  nvfp4_options o;
  o.selector = nvfp4_selector::four_over_six;
  o.global_amax = global_amax;
  const nvfp4_weight ref = nvfp4_quantize(w, o);
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32(w), o);
    EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level);
    EXPECT_EQ(fast.packed, ref.packed) << int(level);
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// Four-over-six on blocks whose two errors are exactly equal and not 0: with the global amax 1536
// (weight_scale_2 = 1) a block max of 12 has steps 2 and 3 exactly, and 0, 3, 6, 12 lie on both
// grids while 1.25 and 2.5 lie equally far from each. The reference keeps the first scale; the
// errors' estimates, rounded differently, may order them either way and must not decide.
TEST(cpu_kernels, nvfp4_four_over_six_exact_ties_keep_the_first_scale) {
  std::mt19937 rng(11);
  const float on_both[] = {0.0f, 3.0f, 6.0f, 12.0f, 1.25f, 2.5f, 5.25f};
  testing::test_tensor t{"exact ties", 64, 256, std::vector<float>(64 * 256)};
  for (size_t b = 0; b < t.values.size() / kNvfp4Block; ++b) {
    float* x = t.values.data() + b * kNvfp4Block;
    for (int i = 0; i < kNvfp4Block; ++i) x[i] = on_both[rng() % 7] * (rng() % 2 ? 1.0f : -1.0f);
    x[rng() % kNvfp4Block] = 12.0f;
  }
  t.values[77] = 1536.0f;
  nvfp4_options o;
  o.selector = nvfp4_selector::four_over_six;
  const nvfp4_weight ref = nvfp4_quantize(t.view(), o);
  size_t first = 0;  // blocks of max 12 that keep step 2 (E4M3 code 0x40)
  for (size_t b = 0; b < ref.block_scales.size(); ++b) first += ref.block_scales[b] == 0x40;
  EXPECT_EQ(first, ref.block_scales.size() - 1);
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    for (auto dtype : {cpu::source_dtype::f32, cpu::source_dtype::bf16, cpu::source_dtype::f16}) {
      const sourced s = as_dtype(t, dtype);
      const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
      EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level) << " " << int(dtype);
      EXPECT_EQ(fast.packed, ref.packed) << int(level) << " " << int(dtype);
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// Four-over-six where one candidate's error overflows: a block near the float range's top whose
// first scale's error is +inf and whose second's is FLT_MAX. The reference keeps the second; an
// estimate that overflows decides nothing (the exact sums do). 16 rows of 16 such blocks, whole
// groups for every form, some with their signs flipped.
TEST(cpu_kernels, nvfp4_four_over_six_overflowing_error_estimates) {
  const uint32_t block[kNvfp4Block] = {0x1b57b5e, 0x152886a, 0x148554e, 0x1092632, 0x11750cc, 0x101cebc,
                                       0x1506914, 0x1a03c38, 0x165f1de, 0x0dec3fd, 0x1891e9e, 0x0e6ac4a,
                                       0x1124a78, 0x1325e42, 0x11afd8e, 0x191d088};
  testing::test_tensor t{"overflowing errors", 16, 256, std::vector<float>(16 * 256)};
  for (size_t i = 0; i < t.values.size(); ++i)
    t.values[i] = std::ldexp(float(block[i % kNvfp4Block]), 65 - 24) * (i % 37 == 5 ? -1.0f : 1.0f);
  nvfp4_options o;
  o.selector = nvfp4_selector::four_over_six;
  const nvfp4_weight ref = nvfp4_quantize(t.view(), o);
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32(t.view()), o);
    EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level);
    EXPECT_EQ(fast.packed, ref.packed) << int(level);
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
  const float bmax = std::ldexp(float(block[0]), 65 - 24);  // the reference keeps the second scale
  EXPECT_NE(ref.block_scales[0], e4m3_encode(nvfp4_block_scale_f32(bmax, bmax, kNvfp4FourOverSixNormalizer)));
}

// mse+four_over_six keeps the standard normalizer's result unless the narrow one's total error is
// strictly less: with equal totals (an all-zero weight, large enough for the totals to be summed
// over threads) the in-order sums decide, and the standard global scale is kept.
TEST(cpu_kernels, nvfp4_mse_four_over_six_equal_totals_keep_the_standard_normalizer) {
  for (int64_t rows : {4, 512}) {
    std::vector<uint16_t> bits(size_t(rows * 1024), 0);
    bits[5] = 0x8000;  // -0
    const std::vector<float> values(bits.size(), 0.0f);
    nvfp4_options o;
    o.selector = nvfp4_selector::mse_four_over_six;
    const nvfp4_weight ref = nvfp4_quantize(weight_view{values.data(), rows, 1024, "zeros"}, o);
    const nvfp4_weight fast = cpu::nvfp4_quantize({bits.data(), cpu::source_dtype::bf16, rows, 1024, "zeros"}, o);
    o.selector = nvfp4_selector::mse_fp8_sweep;  // (the standard normalizer's)
    EXPECT_EQ(fast.global_scale, nvfp4_quantize(weight_view{values.data(), rows, 1024, "zeros"}, o).global_scale);
    EXPECT_EQ(fast.global_scale, ref.global_scale);
    EXPECT_EQ(fast.block_scales, ref.block_scales);
    EXPECT_EQ(fast.packed, ref.packed);
  }
}

// A weight whose max is below 2^-100 (BF16 / F32 subnormals, or a tiny static global amax):
// its per-code steps would underflow to 0 and 0 / 0 code anything; the scales take amax 1 as for
// an all-zero weight, and every path gives code 0.
// NVFP4 under a static global amax with every selector at every SIMD level this CPU runs, against
// the reference; the reference's weights (one per selector) for further checks.
std::vector<nvfp4_weight> expect_static_amax_as_reference(const cpu::source_matrix& source, const weight_view& view,
                                                          float static_amax) {
  std::vector<nvfp4_weight> refs;
  for (auto sel : {nvfp4_selector::max, nvfp4_selector::four_over_six, nvfp4_selector::mse_fp8_sweep,
                   nvfp4_selector::mse_multiplier, nvfp4_selector::mse_four_over_six}) {
    nvfp4_options o;
    o.selector = sel;
    o.global_amax = static_amax;
    refs.push_back(nvfp4_quantize(view, o));
    for (auto level : {cpu::simd_level::avx512, cpu::simd_level::avx2, cpu::simd_level::baseline}) {
      if (level > cpu::cpu_simd_level()) continue;
      cpu::limit_simd_level(level);
      const nvfp4_weight fast = cpu::nvfp4_quantize(source, o);
      EXPECT_EQ(fast.block_scales, refs.back().block_scales) << view.name << " " << selector_name(sel) << " " << static_amax;
      EXPECT_EQ(fast.packed, refs.back().packed) << view.name << " " << selector_name(sel) << " " << static_amax;
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
  return refs;
}

// A static global amax far below the weight's max (block scales clamped at 448, codes saturated)
// and far above it (scales clamped at 2^-9 and E4M3 subnormals).
TEST(cpu_kernels, nvfp4_static_global_amax_far_from_the_weight_bit_identical) {
  for (const auto& t : all_kinds(4, 256, 57)) {
    float amax = 0.0f;
    for (float v : t.values) amax = std::max(amax, std::fabs(v));
    if (!(amax > 0.0f) || !std::isfinite(amax)) continue;
    const sourced s = as_dtype(t, cpu::source_dtype::bf16);
    for (float static_amax : {amax / 64.0f, amax * 0x1p12f}) expect_static_amax_as_reference(s.source, view_of(s), static_amax);
  }
}

TEST(cpu_kernels, nvfp4_tiny_global_amax_codes_zero_everywhere) {
  std::vector<uint16_t> bits(32, 0);
  bits[0] = 0x0001;  // the least BF16 subnormal
  bits[17] = 0x8003;
  std::vector<float> values(32);
  for (size_t i = 0; i < 32; ++i) values[i] = bf16_decode(bits[i]);
  for (float static_amax : {0.0f, 1e-45f, 1e-32f})
    for (const nvfp4_weight& ref : expect_static_amax_as_reference({bits.data(), cpu::source_dtype::bf16, 1, 32, "tiny"},
                                                                   weight_view{values.data(), 1, 32, "tiny"}, static_amax)) {
      for (uint8_t p : ref.packed) EXPECT_EQ(p & 0x77, 0);  // magnitude code 0
      for (uint8_t sc : ref.block_scales) EXPECT_LT(sc, 0x7f);  // never a NaN scale
    }
}

// NVFP4 mse_multiplier with lists besides the default: ascending ones (candidate codes from one
// product each) whose codes reach far above the window (48 codes and more: a multiplier of 2^6) and
// far below it, dense ones (many multipliers per code), single ones, and lists that do not ascend
// (every code exact), at every SIMD level this CPU runs.
TEST(cpu_kernels, nvfp4_mse_multiplier_lists_bit_identical) {
  const std::vector<std::vector<float>> lists = {
      {0.01f, 0.3f, 0.7f, 1.0f, 1.9f, 5.0f, 9.0f, 70.0f, 300.0f},  // codes 48+ above the window
      {1.0f},
      {0.5f, 0.55f, 0.6f, 0.65f, 0.7f, 0.75f, 0.8f, 0.85f, 0.9f, 0.95f, 1.0f, 1.02f, 1.04f, 1.1f, 1.3f, 1.7f, 2.0f},
      {1e-3f, 2e-3f, 0.02f, 0.2f},  // every code below or at the bottom of the window
      {0.6f, 0.65f, 0.7f},          // low in the window: subnormal codes there for the least maxima
      {1e-45f, 0.6f, 1.0f},         // bmax · 1e-45 / 6 is 0, which the reference takes as 1
      {1.0f, 0.5f, 2.0f, 0.8f},     // not ascending
      {4.0f, 2.0f, 1.0f, 0.5f},     // descending
      {default_mse_multipliers().begin(), default_mse_multipliers().end()},
  };
  std::vector<testing::test_tensor> tensors = all_kinds(16, 160, 77);
  for (auto& t : all_kinds(3, 48, 78)) tensors.push_back(t);
  // Block maxima log-uniform over 2^-24 .. 1 of the global amax: every max-rule code, the
  // subnormal ones and those just above them (where candidate codes may be subnormal) included.
  testing::test_tensor spread = tensors.front();
  spread.name = "spread";
  std::mt19937 rng(5);
  for (size_t b = 0; b < spread.values.size() / 16; ++b) {
    const float bmax = std::ldexp(1.0f, -int(rng() % 25)) * (1.0f + float(rng() % 1024) / 1024.0f);
    for (int i = 0; i < 16; ++i) spread.values[b * 16 + i] = bmax * float(rng() % 1001) / 1000.0f * (rng() % 2 ? 1.0f : -1.0f);
  }
  spread.values[0] = 2.0f;
  tensors.push_back(spread);
  // The same over kNvfp4MultiplierTableBlocks blocks: BF16 weights that large take the candidate
  // codes from a table by the block max's mantissa (codes clamped at 126 included: maxima up to the
  // global amax), for every list above and the default one.
  testing::test_tensor big = spread;
  big.name = "spread 64x2048";
  big.rows = 64, big.cols = 2048;
  static_assert(64 * 2048 / 16 == cpu::kNvfp4MultiplierTableBlocks);
  big.values.resize(size_t(big.rows * big.cols));
  for (size_t b = 0; b < big.values.size() / 16; ++b) {
    const float bmax = std::ldexp(1.0f, -int(rng() % 25)) * (1.0f + float(rng() % 1024) / 1024.0f);
    for (int i = 0; i < 16; ++i) big.values[b * 16 + i] = bmax * float(rng() % 1001) / 1000.0f * (rng() % 2 ? 1.0f : -1.0f);
  }
  big.values[0] = 2.0f;
  tensors.push_back(big);
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    for (const auto& t : tensors)
      for (const auto& list : lists)
        for (auto dtype : {cpu::source_dtype::bf16, cpu::source_dtype::f16, cpu::source_dtype::f32}) {
          const sourced s = as_dtype(t, dtype);
          nvfp4_options o;
          o.selector = nvfp4_selector::mse_multiplier;
          o.multipliers = list;
          const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
          const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
          EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level) << " " << t.name << " list " << list.size();
          EXPECT_EQ(fast.packed, ref.packed) << int(level) << " " << t.name << " list " << list.size();
        }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// Over kNvfp4MultiplierTableBlocksF16 blocks, F16 weights take the candidate codes from a table by
// the block max's 10 mantissa bits: block maxima over every F16 mantissa and binades from F16's
// subnormals up to the global amax (codes clamped at 126 included), at every SIMD level.
TEST(cpu_kernels, nvfp4_mse_multiplier_f16_table_bit_identical) {
  constexpr int64_t rows = 64, cols = cpu::kNvfp4MultiplierTableBlocksF16 * 16 / rows;
  testing::test_tensor t{"f16 spread", rows, cols, std::vector<float>(size_t(rows * cols))};
  std::mt19937 rng(17);
  for (size_t b = 0; b < t.values.size() / 16; ++b) {
    const float bmax = std::ldexp(1.0f + float(rng() % 1024) / 1024.0f, -int(rng() % 26));
    for (int i = 0; i < 16; ++i) t.values[b * 16 + i] = bmax * float(rng() % 1001) / 1000.0f * (rng() % 2 ? 1.0f : -1.0f);
  }
  t.values[0] = 2.0f;
  const sourced s = as_dtype(t, cpu::source_dtype::f16);
  const std::vector<std::vector<float>> lists = {
      {default_mse_multipliers().begin(), default_mse_multipliers().end()},
      {0.01f, 0.3f, 0.7f, 1.0f, 1.9f, 5.0f, 9.0f, 70.0f, 300.0f},  // codes 48+ above the window
      {0.6f, 0.65f, 0.7f},
  };
  for (const auto& list : lists) {
    nvfp4_options o;
    o.selector = nvfp4_selector::mse_multiplier;
    o.multipliers = list;
    const nvfp4_weight ref = nvfp4_quantize(view_of(s), o);
    for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
      if (level > cpu::cpu_simd_level()) continue;
      cpu::limit_simd_level(level);
      const nvfp4_weight fast = cpu::nvfp4_quantize(s.source, o);
      EXPECT_EQ(fast.block_scales, ref.block_scales) << int(level) << " list " << list.size();
      EXPECT_EQ(fast.packed, ref.packed) << int(level) << " list " << list.size();
    }
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

// Negative, zero, NaN or infinite MSE multipliers are refused, naming the tensor and the entry.
TEST(cpu_kernels, mse_multipliers_must_be_positive_and_finite) {
  std::vector<float> v(64, 0.25f);
  v[0] = 1.0f;
  const weight_view w{v.data(), 2, 32, "w"};
  for (float bad : {-1.0f, 0.0f, NAN, INFINITY}) {
    const float list[] = {0.8f, bad};
    nvfp4_options n;
    n.selector = nvfp4_selector::mse_multiplier;
    n.multipliers = list;
    fp8_options f;
    f.selector = fp8_selector::mse;
    f.multipliers = list;
    for (const auto& run : std::vector<std::function<void()>>{
             [&] { nvfp4_quantize(w, n); }, [&] { cpu::nvfp4_quantize(cpu::from_f32(w), n); },
             [&] { fp8_quantize(w, f); }, [&] { cpu::fp8_quantize(cpu::from_f32(w), f); }}) {
      try {
        run();
        ADD_FAILURE() << "multiplier " << bad << " accepted";
      } catch (const format_error& e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'w'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("(index 1)"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(cpu_kernels, nonfinite_errors_name_the_same_place) {
  auto t = testing::make_tensor(testing::tensor_kind::normal, 4, 32, 71);
  t.name = "blk.3.ffn";
  t.values[70] = -INFINITY;
  for (auto dtype : kDtypes) {
    const sourced s = as_dtype(t, dtype);
    std::string ref_msg, fast_msg;
    try { nvfp4_quantize(view_of(s)); } catch (const format_error& e) { ref_msg = e.what(); }
    try { cpu::nvfp4_quantize(s.source); } catch (const format_error& e) { fast_msg = e.what(); }
    EXPECT_FALSE(ref_msg.empty());
    EXPECT_EQ(ref_msg, fast_msg);
    EXPECT_NE(fast_msg.find("[2, 6]"), std::string::npos) << fast_msg;
    fp8_options mse;  // the histogram path of a 16-bit source reports the same place
    mse.selector = fp8_selector::mse;
    std::string fp8_msg;
    try { cpu::fp8_quantize(s.source, mse); } catch (const format_error& e) { fp8_msg = e.what(); }
    EXPECT_EQ(ref_msg, fp8_msg);
    for (auto sel : {fp8_selector::max, fp8_selector::mse}) {  // per channel: the in-place row pass steps aside
      fp8_options o;
      o.granularity = fp8_granularity::per_channel;
      o.selector = sel;
      std::string row_msg;
      try { cpu::fp8_quantize(s.source, o); } catch (const format_error& e) { row_msg = e.what(); }
      EXPECT_EQ(ref_msg, row_msg);
    }
    for (auto f : {format_id::mxfp4, format_id::mxfp8}) {  // one pass, then the scan names the place
      std::string block_msg;
      try { cpu::mx_quantize(s.source, f); } catch (const format_error& e) { block_msg = e.what(); }
      EXPECT_EQ(ref_msg, block_msg);
    }
  }
  auto t64 = testing::make_tensor(testing::tensor_kind::normal, 2, 64, 72);  // NF4: K a multiple of 64
  t64.name = "blk.3.ffn";
  t64.values[70] = NAN;
  for (auto dtype : kDtypes) {
    const sourced s = as_dtype(t64, dtype);
    std::string ref_msg, fast_msg;
    try { nf4_quantize(view_of(s)); } catch (const format_error& e) { ref_msg = e.what(); }
    try { cpu::nf4_quantize(s.source); } catch (const format_error& e) { fast_msg = e.what(); }
    EXPECT_NE(ref_msg.find("[1, 6]"), std::string::npos) << ref_msg;
    EXPECT_EQ(ref_msg, fast_msg);
  }
}

std::vector<size_t> contenders_of(const cpu::magnitude_histogram& h, float amax, std::span<const float> multipliers) {
  cpu::fp8_error_estimate estimate;
  estimate.take(h);
  return estimate.contenders(amax, multipliers);
}

// The binade-scaled estimate against the reference's sum, at scales that put every binade of the
// tensor in FP8's normal range, across saturation, and into FP8 subnormals; magnitudes from the
// 16-bit formats' subnormals to their largest binades.
// Each estimate within 1e-12 of the reference's sum, or +inf (left unevaluated) for a candidate
// whose reference error exceeds the least one, or NaN (a row's lone candidate after the
// screening) for the least; returns how many were left unevaluated.
int expect_estimates_or_ruled_out(const std::vector<double>& estimates, const std::vector<double>& want,
                                  const std::string& name) {
  const double least = *std::min_element(want.begin(), want.end());
  int ruled_out = 0;
  for (size_t c = 0; c < want.size(); ++c) {
    if (std::isnan(estimates[c])) {  // a row's lone candidate left by the screening: the least
      EXPECT_EQ(want[c], least) << name << " candidate " << c << " left alone";
      continue;
    }
    if (estimates[c] == INFINITY) {
      EXPECT_GT(want[c], least) << name << " candidate " << c << " ruled out";
      ++ruled_out;
      continue;
    }
    EXPECT_LE(std::abs(estimates[c] - want[c]), 1e-12 * want[c]) << name << " candidate " << c;
  }
  return ruled_out;
}

// The estimates themselves (not only the choice they lead to) are the same sums at every SIMD
// level, bit for bit: each level adds the same terms in the same lanes and order.
TEST(cpu_kernels, fp8_error_estimates_bit_identical_across_simd_levels) {
  const std::vector<float> multipliers = {1e-4f, 0.01f, 0.25f, 0.6f, 1.0f, 1.37f, 4.0f, 50.0f};
  int compared = 0;
  for (int shift : {-60, 0, 40})
    for (const auto& base : all_kinds(8, 128, 700 + uint32_t(shift + 100))) {
      testing::test_tensor t = base;
      for (auto& v : t.values) v = std::ldexp(v, shift);
      const sourced s = as_dtype(t, cpu::source_dtype::bf16);
      const cpu::magnitude_histogram h = cpu::magnitude_histogram::of(s.source).value();
      if (h.has_nonfinite()) continue;
      std::vector<double> first;
      for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
        if (level > cpu::cpu_simd_level()) continue;
        cpu::limit_simd_level(level);
        cpu::fp8_error_estimate estimate;
        estimate.take(h);
        estimate.contenders(h.amax(), multipliers);
        if (first.empty()) {
          first = estimate.estimates();
          continue;
        }
        ASSERT_EQ(estimate.estimates().size(), first.size());
        for (size_t c = 0; c < first.size(); ++c, ++compared) {
          EXPECT_EQ(std::bit_cast<uint64_t>(estimate.estimates()[c]), std::bit_cast<uint64_t>(first[c]))
              << t.name << " shift " << shift << " level " << int(level) << " candidate " << c;
        }
      }
    }
  cpu::limit_simd_level(cpu::cpu_simd_level());
  if (cpu::cpu_simd_level() > cpu::simd_level::baseline) {
    EXPECT_GT(compared, 100);
  }
}

TEST(cpu_kernels, fp8_error_estimate_matches_the_reference_sum) {
  int checked = 0, ruled_out = 0;
  for (auto dtype : {cpu::source_dtype::bf16, cpu::source_dtype::f16})
    for (int shift : dtype == cpu::source_dtype::bf16 ? std::vector<int>{-130, -60, 0, 40, 118}
                                                      : std::vector<int>{-16, -6, 0, 12})
      for (const auto& base : all_kinds(8, 128, 300 + uint32_t(shift + 200))) {
        testing::test_tensor t = base;
        for (auto& v : t.values) v = std::ldexp(v, shift);
        const sourced s = as_dtype(t, dtype);
        const cpu::magnitude_histogram h = cpu::magnitude_histogram::of(s.source).value();
        if (h.has_nonfinite()) continue;  // (a shift past the format's range)
        cpu::fp8_error_estimate estimate;
        estimate.take(h);
        const float amax = h.amax();
        const std::vector<float> multipliers = {1e-4f, 0.01f, 0.25f, 0.6f, 1.0f, 1.37f, 4.0f, 50.0f, 3000.0f};
        std::vector<float> finite;  // amax · m within the float range
        for (float m : multipliers)
          if (std::isfinite(fp8_scale_for_amax(amax * m))) finite.push_back(m);
        estimate.contenders(amax, finite);  // binades scaled, or not, across the candidates
        const std::vector<double> estimates = estimate.estimates();
        std::vector<double> want(finite.size());
        for (size_t c = 0; c < finite.size(); ++c) {
          const float scale = fp8_scale_for_amax(amax * finite[c]);
          want[c] = fp8_sq_error(view_of(s), scale);
          EXPECT_LE(std::abs(estimate.sq_error(scale) - want[c]), 1e-12 * want[c]) << t.name << " shift " << shift;
          ++checked;
        }
        ruled_out += expect_estimates_or_ruled_out(estimates, want, t.name);
        // Row by row, counted straight into the core (per channel), with the same tensor's amax: the
        // rows' own magnitudes sit anywhere in and around the scales' reach. The default
        // multipliers leave most binades a core; the wide list above leaves none.
        cpu::row_magnitude_counter rows;
        std::vector<float> narrow;
        for (float m : default_mse_multipliers())
          if (std::isfinite(fp8_scale_for_amax(amax * m))) narrow.push_back(m);
        for (const auto& list : {finite, narrow})
          for (int64_t r = 0; r < s.source.rows; ++r) {
            const auto kept = rows.contenders(s.source, r, nullptr, amax, list);
            ASSERT_TRUE(kept.has_value());
            const weight_view row{s.widened.data() + r * s.source.cols, 1, s.source.cols, t.name};
            std::vector<double> row_want(list.size());
            for (size_t c = 0; c < list.size(); ++c) {
              row_want[c] = fp8_sq_error(row, fp8_scale_for_amax(amax * list[c]));
              ++checked;
            }
            ruled_out += expect_estimates_or_ruled_out(rows.estimate.estimates(), row_want, t.name);
          }
      }
  EXPECT_GT(checked, 15000);
  EXPECT_GT(ruled_out, 100);  // scales that saturate far more than the best, left unevaluated
}

// Per-tensor FP8 MSE over BF16 / F16: the estimate leaves the reference's choice among its
// contenders, and (bar near ties) only that one.
TEST(cpu_kernels, fp8_mse_histogram_keeps_the_reference_choice) {
  for (uint32_t seed = 0; seed < 4; ++seed)
    for (const auto& t : all_kinds(24, 160, 90 + 7 * seed))
      for (auto dtype : {cpu::source_dtype::bf16, cpu::source_dtype::f16}) {
        const sourced s = as_dtype(t, dtype);
        const cpu::magnitude_histogram h = cpu::magnitude_histogram::of(s.source).value();
        uint64_t total = 0;
        for (uint64_t c : h.count) total += c;
        ASSERT_EQ(total, uint64_t(s.source.size()));
        const weight_view w = view_of(s);
        float amax = 0.0f;
        for (int64_t i = 0; i < w.size(); ++i) amax = std::max(amax, std::abs(w.data[i]));
        ASSERT_EQ(h.amax(), amax);
        const auto multipliers = default_mse_multipliers();
        size_t want = 0;
        double best = INFINITY;
        for (size_t c = 0; c < multipliers.size(); ++c) {
          const double e = fp8_sq_error(w, fp8_scale_for_amax(amax * multipliers[c]));
          if (e < best) best = e, want = c;
        }
        const std::vector<size_t> got = contenders_of(h, amax, multipliers);
        EXPECT_NE(std::find(got.begin(), got.end(), want), got.end()) << t.name;
        EXPECT_EQ(got.size(), 1u) << t.name;
      }
}

// Candidates the estimate cannot separate (here: equal multipliers) are settled exactly, first wins.
TEST(cpu_kernels, fp8_mse_histogram_ties_settled_exactly) {
  const auto t = testing::make_tensor(testing::tensor_kind::outliers, 32, 64, 5);
  const float multipliers[] = {0.25f, 0.9f, 0.9f, 1.0f, 1.0f, 4.0f};
  for (auto dtype : {cpu::source_dtype::bf16, cpu::source_dtype::f16}) {
    const sourced s = as_dtype(t, dtype);
    const auto h = cpu::magnitude_histogram::of(s.source).value();
    const auto contenders = contenders_of(h, h.amax(), multipliers);
    EXPECT_GE(contenders.size(), 2u);
    for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel}) {
      fp8_options o;
      o.granularity = gran;
      o.selector = fp8_selector::mse;
      o.multipliers = multipliers;
      const fp8_weight ref = fp8_quantize(view_of(s), o);
      const fp8_weight fast = cpu::fp8_quantize(s.source, o);
      EXPECT_EQ(fast.scales, ref.scales);
      EXPECT_EQ(fast.codes, ref.codes);
    }
  }
  // an all-zero tensor: every candidate's error is exactly 0, the first is chosen
  const auto zeros = testing::make_tensor(testing::tensor_kind::zero_blocks, 1, 16, 1);
  const sourced z = as_dtype(zeros, cpu::source_dtype::bf16);
  EXPECT_EQ(contenders_of(cpu::magnitude_histogram::of(z.source).value(), 0.0f, multipliers), std::vector<size_t>{0});
}

// Per-channel MSE on rows far from 1 (16-bit subnormals to the largest binades, so that some
// binades of a row fall outside FP8's normal range under some candidates), with wide multipliers.
// Rows whose choice their smallest values decide. With amax = 448u (u = 2^-10) the multipliers
// 1 and 1.75 give the scales u and 1.75u exactly; the largest value sits on both grids, one
// value v = 2.625u · 2^-j on the second only (a small error under u), and 200 values in
// [2^-6, 1.75 · 2^-6) · u, FP8-normal under u but subnormal (coarser) under 1.75u. Whether the
// one value's error or the small values' extra error weighs more decides the row: the per-row
// screening must bound the small values' errors (not drop them) to keep the reference's choice.
TEST(cpu_kernels, fp8_per_channel_mse_rows_decided_by_their_smallest_values_as_the_reference) {
  std::mt19937 rng(91);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float u = 0x1p-10f;
  testing::test_tensor t{"smallest_values_decide", 24, 208, {}};
  for (int64_t r = 0; r < t.rows; ++r) {
    t.values.push_back(448.0f * u);
    t.values.push_back(std::ldexp(2.625f * u, -int(r % 8)));
    for (int64_t c = 2; c < t.cols; ++c)
      t.values.push_back(std::ldexp(u, -6) * (1.0f + 0.75f * unit(rng)) * (c % 2 ? 1.0f : -1.0f));
  }
  const sourced s = as_dtype(t, cpu::source_dtype::bf16);
  fp8_options o;
  o.granularity = fp8_granularity::per_channel;
  o.selector = fp8_selector::mse;
  const float multipliers[] = {1.0f, 1.75f};
  o.multipliers = multipliers;
  const fp8_weight ref = fp8_quantize(view_of(s), o);
  const fp8_weight fast = cpu::fp8_quantize(s.source, o);
  EXPECT_EQ(fast.scales, ref.scales);
  EXPECT_EQ(fast.codes, ref.codes);
  const auto rows_at = [&](float scale) { return std::count(ref.scales.begin(), ref.scales.end(), scale); };
  EXPECT_GT(rows_at(u), 0);  // (both choices occur: the construction does decide rows both ways)
  EXPECT_GT(rows_at(1.75f * u), 0);
}

// Rows whose best scale clips their largest value. With amax = 448u (u = 2^-10) the multipliers
// give the scales m · u exactly; values at 392u sit on 448 under m = 7/8 (where amax clips to
// 392u) and between FP8 values under every larger m. The more such values a row holds, the better
// clipping does. The screening bounds a clipping scale's error from below (its core and its
// largest values); an overestimate would rule the reference's choice out.
TEST(cpu_kernels, fp8_per_channel_mse_rows_best_when_clipped_as_the_reference) {
  std::mt19937 rng(23);
  std::normal_distribution<float> body(0.0f, 0x1p-4f);  // (their errors weigh in the choice too)
  const float u = 0x1p-10f;
  testing::test_tensor t{"clipped_rows", 48, 256, {}};
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t near = 8 + 4 * r;  // values at 392u
    for (int64_t c = 0; c < t.cols; ++c)
      t.values.push_back(c == 0 ? 448.0f * u : c <= near ? (c % 2 ? -392.0f : 392.0f) * u : body(rng));
  }
  const sourced s = as_dtype(t, cpu::source_dtype::bf16);
  fp8_options o;
  o.granularity = fp8_granularity::per_channel;
  o.selector = fp8_selector::mse;
  const float multipliers[] = {0.875f, 1.0f, 1.25f, 1.5f, 2.0f};
  o.multipliers = multipliers;
  const fp8_weight ref = fp8_quantize(view_of(s), o);
  const fp8_weight fast = cpu::fp8_quantize(s.source, o);
  EXPECT_EQ(fast.scales, ref.scales);
  EXPECT_EQ(fast.codes, ref.codes);
  EXPECT_GT(std::count(ref.scales.begin(), ref.scales.end(), 0.875f * u), 4);  // (both ways)
  EXPECT_GT(std::count_if(ref.scales.begin(), ref.scales.end(), [&](float x) { return x > 0.875f * u; }), 4);
}

TEST(cpu_kernels, fp8_per_channel_mse_over_extreme_rows_as_the_reference) {
  const float wide[] = {0.001f, 0.1f, 0.25f, 0.5f, 0.9f, 1.0f, 1.1f, 2.0f, 4.0f, 30.0f, 1000.0f};
  for (auto dtype : kDtypes)
    for (int shift : {-140, -20, 0, 9, 100})
      for (const auto& base : all_kinds(12, 96, 400 + uint32_t(shift + 200))) {
        testing::test_tensor t = base;
        for (auto& v : t.values) v = std::ldexp(v, shift);
        const sourced s = as_dtype(t, dtype);
        if (cpu::scan_source(s.source).nonfinite != 0) continue;  // (a shift past the format's range)
        for (bool default_multipliers : {true, false}) {
          fp8_options o;
          o.granularity = fp8_granularity::per_channel;
          o.selector = fp8_selector::mse;
          if (!default_multipliers) o.multipliers = wide;
          const fp8_weight ref = fp8_quantize(view_of(s), o);
          const fp8_weight fast = cpu::fp8_quantize(s.source, o);
          EXPECT_EQ(fast.scales, ref.scales) << t.name << " shift " << shift;
          EXPECT_EQ(fast.codes, ref.codes) << t.name << " shift " << shift;
        }
      }
}

// One row scaled by every power of two a BF16 weight can hold, in one tensor: the rows share their
// amax's mantissa (and so the reference differences kept per amax), the tiniest ones take the
// scale floor (1) or subnormal scales, and the cache must tell those apart.
TEST(cpu_kernels, fp8_per_channel_mse_rows_sharing_an_amax_mantissa_as_the_reference) {
  const auto base = testing::make_tensor(testing::tensor_kind::heavy_tailed, 1, 256, 17);
  const int64_t rows = 2 * 150;
  testing::test_tensor t{"scaled rows", rows, 256, std::vector<float>(size_t(rows * 256))};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < 256; ++c)  // shifts -150 .. -1, then 99 down to -50
      t.values[size_t(r * 256 + c)] =
          bf16_decode(bf16_encode(std::ldexp(base.values[size_t(c)], r < 150 ? int(r) - 150 : 249 - int(r))));
  for (auto dtype : {cpu::source_dtype::bf16, cpu::source_dtype::f32}) {
    const sourced s = as_dtype(t, dtype);
    if (cpu::scan_source(s.source).nonfinite != 0) continue;
    fp8_options o;
    o.granularity = fp8_granularity::per_channel;
    o.selector = fp8_selector::mse;
    const fp8_weight ref = fp8_quantize(view_of(s), o);
    const fp8_weight fast = cpu::fp8_quantize(s.source, o);
    EXPECT_EQ(fast.scales, ref.scales);
    EXPECT_EQ(fast.codes, ref.codes);
  }
}

// Random small tensors against the reference: rows spread over many binades (each row its own
// power of two, some exact zeros, some rows of one repeated value), random multiplier lists (sorted
// or not, with repeats), every source dtype (F32 ones hold BF16 values: the counted path), per
// tensor and per channel.
TEST(cpu_kernels, fp8_mse_random_tensors_as_the_reference) {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> coin(0, 9);
  int cases = 0;
  for (int trial = 0; trial < 60; ++trial)
    for (auto dtype : kDtypes) {
      const int64_t rows = 1 + rng() % 9, cols = 1 + rng() % 90;
      const int lo_shift = dtype == cpu::source_dtype::f16 ? -20 : -125, hi_shift = dtype == cpu::source_dtype::f16 ? 12 : 100;
      testing::test_tensor t{"random", rows, cols, std::vector<float>(size_t(rows * cols))};
      for (int64_t r = 0; r < rows; ++r) {
        const int shift = lo_shift + int(rng() % uint32_t(hi_shift - lo_shift));
        const bool constant = coin(rng) == 0;
        const float first = std::ldexp(normal(rng), shift);
        for (int64_t c = 0; c < cols; ++c) {
          float v = constant ? first : std::ldexp(normal(rng) * (coin(rng) == 0 ? 30.0f : 1.0f), shift);
          if (coin(rng) == 0) v = 0.0f;
          t.values[size_t(r * cols + c)] = bf16_decode(bf16_encode(v));  // F32 sources hold BF16 values
        }
      }
      const sourced s = as_dtype(t, dtype);
      if (cpu::scan_source(s.source).nonfinite != 0) continue;
      std::vector<float> list(1 + rng() % 12);
      for (auto& m : list) m = std::exp(std::uniform_real_distribution<float>(-4.0f, 4.0f)(rng));
      if (coin(rng) < 5) std::sort(list.begin(), list.end());
      if (list.size() > 2 && coin(rng) < 3) list[1] = list[0];
      for (bool default_multipliers : {true, false})
        for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel}) {
          fp8_options o;
          o.granularity = gran;
          o.selector = fp8_selector::mse;
          if (!default_multipliers) o.multipliers = list;
          const fp8_weight ref = fp8_quantize(view_of(s), o);
          const fp8_weight fast = cpu::fp8_quantize(s.source, o);
          ASSERT_EQ(fast.scales, ref.scales) << "trial " << trial << " dtype " << int(dtype);
          ASSERT_EQ(fast.codes, ref.codes) << "trial " << trial << " dtype " << int(dtype);
          ++cases;
        }
    }
  EXPECT_GT(cases, 600);
}

// A candidate whose scale overflows to inf errs by NaN and is never chosen; when every candidate's
// does, or a static amax is infinite, both the reference and the fast path say so, naming the tensor.
TEST(cpu_kernels, fp8_mse_infinite_candidate_scales) {
  const float mixed[] = {8.0f, 1.0f};  // 1e38 · 8 overflows
  const float all_inf[] = {4.0f};
  for (auto dtype : kDtypes) {
    for (bool bf16_values : {true, false}) {
      if (dtype != cpu::source_dtype::f32 && !bf16_values) continue;
      testing::test_tensor t{"big", 2, 2, {1e38f, bf16_values ? 1.0f : 1.0000001f, 1.0f, 1e38f}};
      if (dtype == cpu::source_dtype::f16) t.values = {6e4f, 1.0f, 1.0f, 6e4f};
      const sourced s = as_dtype(t, dtype);
      for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel}) {
        fp8_options o;
        o.granularity = gran;
        o.selector = fp8_selector::mse;
        o.multipliers = mixed;
        if (dtype == cpu::source_dtype::f16) o.multipliers = {};  // (F16 cannot overflow a scale)
        const fp8_weight ref = fp8_quantize(view_of(s), o);
        const fp8_weight fast = cpu::fp8_quantize(s.source, o);
        EXPECT_EQ(fast.scales, ref.scales) << int(dtype);
        EXPECT_EQ(fast.codes, ref.codes) << int(dtype);
        if (dtype == cpu::source_dtype::f16) continue;
        o.multipliers = all_inf;
        for (bool fast_path : {false, true}) {
          try {
            if (fast_path) cpu::fp8_quantize(s.source, o);
            else fp8_quantize(view_of(s), o);
            ADD_FAILURE() << "no error, fast path " << fast_path;
          } catch (const format_error& e) {
            EXPECT_NE(std::string(e.what()).find("tensor 'big'"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("no FP8 MSE candidate"), std::string::npos) << e.what();
          }
        }
      }
    }
  }
  testing::test_tensor t{"static", 1, 2, {1.0f, 2.0f}};
  fp8_options o;
  o.amax = INFINITY;
  EXPECT_THROW(fp8_quantize(t.view(), o), format_error);
  EXPECT_THROW(cpu::fp8_quantize(cpu::from_f32(t.view()), o), format_error);
  testing::test_tensor block{"static", 1, 16, std::vector<float>(16, 1.0f)};
  nvfp4_options n;
  n.global_amax = INFINITY;
  EXPECT_THROW(nvfp4_quantize(block.view(), n), format_error);
  EXPECT_THROW(cpu::nvfp4_quantize(cpu::from_f32(block.view()), n), format_error);
}

// A row's counts: the table is left zeroed after every row, non-BF16 F32 values are told.
TEST(cpu_kernels, row_magnitude_counter_leaves_the_table_clear) {
  cpu::row_magnitude_counter m;
  const float subnormal = std::bit_cast<float>(0x00110000u);  // a BF16 subnormal
  const float row[] = {0.5f, -0.5f, 1.0f, 0.0f, -0.0f, 0.5f, 3.0f, subnormal};
  const cpu::source_matrix w{row, cpu::source_dtype::f32, 1, 8, "row"};
  const float multipliers[] = {448.0f / 3.0f, 1.0f};  // scale 1 (amax 3 -> 448), and 3 / 448
  ASSERT_TRUE(m.contenders(w, 0, row, 3.0f, multipliers).has_value());
  EXPECT_TRUE(std::all_of(m.table.begin(), m.table.end(), [](uint32_t c) { return c == 0; }));
  // 0.5 three times, 1, 3 and a BF16 subnormal: the estimate at scale 1 sums their FP8 errors (one
  // candidate: estimated, not screened)
  ASSERT_EQ(fp8_scale_for_amax(3.0f * multipliers[0]), 1.0f);
  ASSERT_TRUE(m.contenders(w, 0, row, 3.0f, std::span(multipliers, 1)).has_value());
  EXPECT_EQ(m.estimate.estimates()[0], double(subnormal) * double(subnormal));  // 0.5, 1, 3 are FP8 values
  const float odd[] = {1.0f, std::nextafter(1.0f, 2.0f)};
  EXPECT_FALSE(m.contenders(cpu::source_matrix{odd, cpu::source_dtype::f32, 1, 2, "odd"}, 0, odd, 1.0f, multipliers));
  EXPECT_TRUE(std::all_of(m.table.begin(), m.table.end(), [](uint32_t c) { return c == 0; }));
}

// F32 weights that are all BF16 values (a BF16 model saved in F32) take the histogram; one value
// that is not, however late, sends the tensor back to the per-element search. Both as the reference.
TEST(cpu_kernels, fp8_mse_histogram_for_f32_holding_bf16_values) {
  auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 80, 128, 17);
  for (auto& v : t.values) v = bf16_decode(bf16_encode(v));
  for (bool exact : {true, false}) {
    if (!exact) t.values[9000] = std::nextafter(t.values[9000], 1.0f);  // past the quick look at the first values
    const cpu::source_matrix f32{t.values.data(), cpu::source_dtype::f32, 80, 128, t.name};
    EXPECT_EQ(cpu::magnitude_histogram::of(f32).has_value(), exact);
    for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel}) {
      fp8_options o;
      o.granularity = gran;
      o.selector = fp8_selector::mse;
      const weight_view w{t.values.data(), 80, 128, t.name};
      const fp8_weight ref = fp8_quantize(w, o);
      const fp8_weight fast = cpu::fp8_quantize(f32, o);
      EXPECT_EQ(fast.scales, ref.scales);
      EXPECT_EQ(fast.codes, ref.codes);
    }
  }
}

}  // namespace
}  // namespace mixq
