// The arithmetic the CUDA kernels run (kernels/cuda/device_math.cuh), compiled for the host, against
// the scalar reference in formats/: the selectors' logic (pruned sweep, seeds, ties, overflow), the
// codecs and the mse_four_over_six tensor choice. Needs no GPU; test_cuda_quantize.cpp checks on a GPU
// that the device computes the same.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cuda/device_math.cuh"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

namespace dm = cuda::dm;

uint32_t bits(float x) { return std::bit_cast<uint32_t>(x); }

TEST(cuda_device_math, e4m3_encode_matches_host) {
  int64_t bad = 0;
  auto check = [&](uint32_t b) {
    const float x = std::bit_cast<float>(b);
    if (dm::e4m3_encode(x) != e4m3_encode(x) && bad++ < 5)
      ADD_FAILURE() << std::hex << "0x" << b << ": " << dm::e4m3_encode(x) << " vs " << int(e4m3_encode(x));
  };
  for (uint32_t b = 0x39800000u; b < 0x44000000u; ++b) check(b);  // 2^-12 .. 512: every float
  for (uint64_t b = 0; b < (uint64_t(1) << 32); b += 251) check(uint32_t(b));  // everything else, sampled
  EXPECT_EQ(bad, 0);
}

TEST(cuda_device_math, e4m3_decode_matches_host_table) {
  for (uint32_t b = 0; b < 256; ++b) {
    const float host = e4m3_decode_table()[b];
    if (std::isnan(host)) {
      EXPECT_TRUE(std::isnan(dm::e4m3_decode(b))) << b;
    } else {
      EXPECT_EQ(bits(dm::e4m3_decode(b)), bits(host)) << b;
    }
  }
}

// Every selector's block choice, codes and errors against the reference, for one block.
void check_block(const float (&x)[kNvfp4Block], float global_amax, int64_t& bad) {
  static constexpr float kFourOverSix[2] = {1.0f, 1.5f};
  const std::span<const float> mults = default_mse_multipliers();
  float block_amax = 0.0f;
  for (float v : x) block_amax = std::fmax(block_amax, std::fabs(v));
  auto fail = [&](const char* what, uint32_t got, uint32_t want) {
    if (bad++ < 10) {
      std::ostringstream s;
      s << what << ": got " << got << " want " << want << ", global_amax " << global_amax << ", block";
      for (float v : x) s << " " << v;
      ADD_FAILURE() << s.str();
    }
  };
  for (float normalizer : {kNvfp4Normalizer, kNvfp4FourOverSixNormalizer}) {
    const float ws2 = nvfp4_global_scale(global_amax, normalizer);
    for (float c : {1.0f, 0.25f, 1.5f, 4.0f}) {
      const float a = block_amax * c;
      if (bits(dm::nvfp4_block_scale(a, global_amax, normalizer)) != bits(nvfp4_block_scale_f32(a, global_amax, normalizer)))
        fail("block scale", bits(dm::nvfp4_block_scale(a, global_amax, normalizer)),
             bits(nvfp4_block_scale_f32(a, global_amax, normalizer)));
    }
    if (bits(dm::nvfp4_max_block_scale(block_amax, ws2)) != bits(nvfp4_max_block_scale_f32(block_amax, ws2)))
      fail("max block scale", bits(dm::nvfp4_max_block_scale(block_amax, ws2)), bits(nvfp4_max_block_scale_f32(block_amax, ws2)));
    const uint32_t max_bits = dm::e4m3_encode(dm::nvfp4_max_block_scale(block_amax, ws2));
    const uint32_t ref_max = nvfp4_choose_block_scale(x, block_amax, global_amax, normalizer, nvfp4_selector::max, {});
    if (max_bits != ref_max) fail("max", max_bits, ref_max);

    const uint32_t mm = dm::choose_by_multipliers(x, block_amax, global_amax, normalizer, ws2, mults.data(), int(mults.size()));
    const uint32_t ref_mm =
        nvfp4_choose_block_scale(x, block_amax, global_amax, normalizer, nvfp4_selector::mse_multiplier, mults);
    if (mm != ref_mm) fail("mse_multiplier", mm, ref_mm);

    const uint32_t fos = dm::choose_by_multipliers(x, block_amax, global_amax, normalizer, ws2, kFourOverSix, 2);
    const uint32_t ref_fos =
        nvfp4_choose_block_scale(x, block_amax, global_amax, normalizer, nvfp4_selector::four_over_six, {});
    if (fos != ref_fos) fail("four_over_six", fos, ref_fos);

    const uint32_t sweep = dm::choose_by_sweep(x, block_amax, global_amax, normalizer, ws2);
    const uint32_t ref_sweep =
        nvfp4_choose_block_scale(x, block_amax, global_amax, normalizer, nvfp4_selector::mse_fp8_sweep, {});
    if (sweep != ref_sweep) fail("mse_fp8_sweep", sweep, ref_sweep);

    for (uint32_t b : {max_bits, mm, sweep, 1u, 0x7eu}) {
      const float scale = e4m3_decode_table()[b] * ws2;
      if (bits(dm::nvfp4_sq_error(x, scale)) != bits(nvfp4_block_sq_error(x, scale)))
        fail("sq_error", bits(dm::nvfp4_sq_error(x, scale)), bits(nvfp4_block_sq_error(x, scale)));
      const dm::e2m1_bounds bounds = dm::e2m1_bounds_for(scale);
      for (float v : x) {
        if (dm::nvfp4_code(v, scale) != nvfp4_code(v, scale)) fail("code", dm::nvfp4_code(v, scale), nvfp4_code(v, scale));
        if (bounds.ready && dm::nvfp4_code_by_bounds(v, bounds) != nvfp4_code(v, scale))
          fail("code by bounds", dm::nvfp4_code_by_bounds(v, bounds), nvfp4_code(v, scale));
      }
    }
  }
}

TEST(cuda_device_math, nvfp4_block_choices_match_reference_on_test_tensors) {
  int64_t bad = 0;
  for (uint32_t seed : {1u, 2u})
    for (const auto& t : testing::all_kinds(32, 256, seed)) {
      float amax = 0.0f;
      for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
      for (float g : {amax, 2.0f * amax})
        for (size_t b = 0; b < t.values.size(); b += kNvfp4Block) {
          float x[kNvfp4Block];
          std::copy_n(t.values.data() + b, kNvfp4Block, x);
          check_block(x, g, bad);
        }
    }
  EXPECT_EQ(bad, 0);
}

TEST(cuda_device_math, nvfp4_block_choices_match_reference_on_adversarial_blocks) {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_int_distribution<int> exp10(-44, 37);
  int64_t bad = 0;
  for (int n = 0; n < 20000; ++n) {
    float x[kNvfp4Block];
    const float mag = std::pow(10.0f, float(exp10(rng)));  // 1e-44 (subnormal) .. 1e37 (errors overflow)
    const int kind = pick(rng);
    for (int i = 0; i < kNvfp4Block; ++i) {
      float v = unit(rng) * mag;
      if (kind == 1) v = (i % 2 ? -1.0f : 1.0f) * mag;                        // equal magnitudes: ties
      if (kind == 2) v = i == 5 ? mag : 0.0f;                                  // one non-zero
      if (kind == 3) v = 0.0f;                                                 // all zero
      if (kind == 4) v = kE2M1Magnitudes[i % 8] * (i < 8 ? 1.0f : -1.0f) * mag;  // on the grid
      if (kind == 5 && i == 0) v = -0.0f;
      x[i] = v;
    }
    float amax = 0.0f;
    for (float v : x) amax = std::fmax(amax, std::fabs(v));
    const float gs[] = {amax, amax * 3.0f, amax / 1000.0f, 0.0f, 1e-40f, 3e38f, 1.0f};
    check_block(x, gs[pick(rng) % 7], bad);
  }
  EXPECT_EQ(bad, 0);
}

// Blocks whose values lie on the E2M1 grid of one code's step (every code, the largest value at level
// 2, 3, 4 or 6, under global scales that put the codes in the normal and the subnormal E4M3 range):
// their best code can sit up to 8 codes above the max rule's, far into the sweep's pruned scan.
TEST(cuda_device_math, nvfp4_block_choices_match_reference_on_grid_blocks) {
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> level(0, 7), coin(0, 1);
  int64_t bad = 0;
  for (float global_amax : {1.0f, 3e-3f, 2e-38f, 5e5f})
    for (uint32_t code = 1; code <= 0x7e; ++code)
      for (float top : {2.0f, 3.0f, 4.0f, 6.0f}) {
        const float ws2 = nvfp4_global_scale(global_amax, kNvfp4Normalizer);
        const float step = e4m3_decode_table()[code] * ws2;
        float x[kNvfp4Block];
        for (int i = 0; i < kNvfp4Block; ++i) {
          float l = kE2M1Magnitudes[level(rng)];
          if (l > top) l = top;
          x[i] = (coin(rng) ? -1.0f : 1.0f) * l * step;
        }
        x[int(code) % kNvfp4Block] = top * step;
        check_block(x, global_amax, bad);
      }
  EXPECT_EQ(bad, 0);
}

// The E2M1 code of fl(a / s) from a scale's bounds equals the division's (and the block errors from
// the same cuts the reference's): for every float a from 0.2 s to 6 s under a few scales, and for the
// 128 floats on each side of every cut (t ± ulp/2)·s under scales of every E4M3 byte times global
// scales across the float range, subnormal ones included (and their neighbours), and a zero scale.
TEST(cuda_device_math, e2m1_by_bounds_matches_division) {
  int64_t bad = 0, checked = 0;
  auto check = [&](float a, float s, const dm::e2m1_bounds& b) {
    ++checked;
    const float q = a / s;
    if (dm::e2m1_code_by_bounds(a, b) != e2m1_magnitude_code(q) && bad++ < 5)
      ADD_FAILURE() << std::hexfloat << "a " << a << " s " << s << ": code " << dm::e2m1_code_by_bounds(a, b)
                    << " want " << int(e2m1_magnitude_code(q));
  };
  for (float s : {1.0f, 0x1.fffffep-1f, 0x1.234568p-7f, 0x1.8p+100f}) {
    const dm::e2m1_bounds b = dm::e2m1_bounds_for(s);
    ASSERT_TRUE(b.ready);
    for (uint32_t u = bits(0.2f * s); u <= bits(6.0f * s); ++u) check(std::bit_cast<float>(u), s, b);
  }
  const double cuts[7] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0};
  for (float ws2 : {1.0f, 0.0123f, 3.1e-30f, 1.7e30f, 0x1p-120f, 0x1.00001p-126f, 5e-39f, 3e38f, 1.3e-42f, 0x1p-140f})
    for (uint32_t byte = 1; byte <= 0x7e; ++byte)
      for (float s : {e4m3_decode_table()[byte] * ws2, std::nextafter(e4m3_decode_table()[byte] * ws2, 0.0f)}) {
        const dm::e2m1_bounds b = dm::e2m1_bounds_for(s);
        if (!b.ready) {
          EXPECT_FALSE(s > 0.0f && std::isfinite(s)) << s;
          continue;
        }
        for (double t : cuts) {
          const float at = float(t * double(s));
          if (!std::isfinite(at)) continue;
          float a = at;
          for (int k = 0; k < 128; ++k) a = std::nextafter(a, 0.0f);
          float block[kNvfp4Block];
          for (int k = 0; k < 256; ++k, a = std::nextafter(a, INFINITY)) {
            check(a, s, b);
            block[k % kNvfp4Block] = k % 3 ? a : -a;
            if (k % kNvfp4Block == kNvfp4Block - 1 &&
                bits(dm::nvfp4_sq_error(block, s)) != bits(nvfp4_block_sq_error(block, s)) && bad++ < 5)
              ADD_FAILURE() << std::hexfloat << "block error near " << a << " s " << s;
          }
        }
        check(0.0f, s, b);
        check(0x1p-149f, s, b);
        check(0x1.fffffep127f, s, b);
      }
  const float block[kNvfp4Block] = {0.0f, -0.0f, 1e-45f, -3e-41f, 1e-20f, -2.5f, 3e38f, 1.0f,
                                   0.5f, -0.75f, 6.0f, 1e-3f, -1e-30f, 7.0f, -0.0625f, 2.0f};
  EXPECT_EQ(bits(dm::nvfp4_sq_error(block, 0.0f)), bits(nvfp4_block_sq_error(block, 0.0f)));  // zero scale
  EXPECT_EQ(bad, 0) << "of " << checked;
  EXPECT_GT(checked, 50'000'000);
}

// fp8_code_with_inverse equals e4m3_encode(fl(w / s)), and fp8_sq_term_fast the reference's term: for every float w in [2^-8 s, 512 s) (both
// signs) under a few scales, and for the 64 floats on each side of every E4M3 rounding midpoint times
// scales spread over the float range (where the shortcut applies and where it does not).
TEST(cuda_device_math, fp8_code_with_inverse_matches_division) {
  int64_t bad = 0, checked = 0;
  auto check = [&](float w, float s, float inv) {
    ++checked;
    if (dm::fp8_code_with_inverse(w, s, inv) != fp8_code(w, s) && bad++ < 5)
      ADD_FAILURE() << std::hexfloat << "w " << w << " s " << s << ": " << dm::fp8_code_with_inverse(w, s, inv)
                    << " want " << int(fp8_code(w, s));
    const double term = dm::fp8_sq_term_fast(w, s, inv), want = dm::fp8_sq_term(w, s);
    if (std::bit_cast<uint64_t>(term) != std::bit_cast<uint64_t>(want) && !(std::isnan(term) && std::isnan(want)) &&
        bad++ < 5)
      ADD_FAILURE() << std::hexfloat << "w " << w << " s " << s << ": term " << term << " want " << want;
  };
  for (float s : {1.0f, 0x1.6db6dcp-9f, 0x1.fffffep-3f}) {
    const float inv = dm::fp8_inverse(s);
    ASSERT_NE(inv, 0.0f);
    for (uint32_t u = bits(0x1p-8f * s); u < bits(512.0f * s); u += 3) {
      check(std::bit_cast<float>(u), s, inv);
      check(-std::bit_cast<float>(u), s, inv);
    }
  }
  std::vector<double> midpoints;
  for (int b = 0; b < 0x7e; ++b) midpoints.push_back((double(e4m3_decode_table()[b]) + e4m3_decode_table()[b + 1]) / 2);
  for (float s : {1.0f, 0.0123f, 3.1e-30f, 1.7e30f, 0x1p-125f, 0x1p125f, 0x1.8p125f, 0x1p-130f, 2.1e-3f, 0.77f}) {
    const float inv = dm::fp8_inverse(s);
    for (double m : midpoints) {
      float w = float(m * double(s));
      if (!std::isfinite(w) || w == 0.0f) continue;
      for (int k = 0; k < 64; ++k) w = std::nextafter(w, 0.0f);
      for (int k = 0; k < 128; ++k, w = std::nextafter(w, INFINITY)) check(w, s, inv), check(-w, s, inv);
    }
    for (float w : {0.0f, -0.0f, 0x1p-149f, -0x1p-149f, 448.0f * s, 464.0f * s, 0x1.fffffep127f}) check(w, s, inv);
  }
  EXPECT_EQ(bad, 0) << "of " << checked;
}

TEST(cuda_device_math, fp8_arithmetic_matches_reference) {
  for (float a : {0.0f, 1e-45f, 0x1p-24f, 0x1.000002p-24f, 1e-20f, 0.02f, 1.0f, 448.0f, 3e38f, 3.4e38f, INFINITY})
    EXPECT_EQ(bits(dm::fp8_scale(a)), bits(fp8_scale_for_amax(a))) << a;
  for (const auto& t : testing::all_kinds(16, 333, 9)) {
    float amax = 0.0f;
    for (float v : t.values) amax = std::fmax(amax, std::fabs(v));
    for (float c : default_mse_multipliers()) {
      const float scale = dm::fp8_scale(amax * c);
      ASSERT_EQ(bits(scale), bits(fp8_scale_for_amax(amax * c)));
      for (int64_t r = 0; r < t.rows; ++r) {
        const float* row = t.values.data() + r * t.cols;
        double lane[dm::kFp8Lanes] = {};  // as fp8_row_error_kernel adds them
        for (int64_t i = 0; i < t.cols; ++i) {
          lane[i % dm::kFp8Lanes] = dm::add(lane[i % dm::kFp8Lanes], dm::fp8_sq_term_fast(row[i], scale, dm::fp8_inverse(scale)));
          ASSERT_EQ(dm::fp8_code(row[i], scale), fp8_code(row[i], scale));
        }
        const double err = dm::fp8_lanes_total(lane);
        ASSERT_EQ(std::bit_cast<uint64_t>(err), std::bit_cast<uint64_t>(fp8_row_sq_error(row, t.cols, scale)))
            << t.name << " row " << r << " c " << c;
      }
    }
  }
}

// settle_by_bounds, given sums in some other order, never contradicts the block-order comparison.
TEST(cuda_device_math, four_over_six_choice_from_bounds_matches_ordered_sums) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> exp2(-120, 100);
  int decided = 0, undecided = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const size_t n = size_t(1) << (trial % 15);
    std::vector<float> a(n), b(n);
    for (size_t i = 0; i < n; ++i) a[i] = std::ldexp(unit(rng), trial % 3 == 0 ? exp2(rng) : -10);
    b = a;
    std::shuffle(b.begin(), b.end(), rng);  // the same terms: exact sums tie
    if (trial % 2) b[n / 2] = std::nextafter(b[n / 2], INFINITY);
    if (trial % 5 == 0) b[0] *= 1.0f + 1e-6f;
    if (trial % 7 == 0) std::swap(a, b);
    double qa = 0.0, qb = 0.0, pa = 0.0, pb = 0.0;
    for (size_t i = 0; i < n; ++i) qa += a[i], qb += b[i];
    for (size_t i = n; i-- > 0;) pa += a[i], pb += b[i];  // another order
    const int settled = dm::settle_by_bounds(pa, pb, int64_t(n));
    if (settled < 0) {
      ++undecided;
      continue;
    }
    ++decided;
    EXPECT_EQ(settled == 1, qa < qb) << "n " << n << " trial " << trial;
  }
  EXPECT_GT(decided, 0);
  EXPECT_GT(undecided, 0);
  EXPECT_EQ(dm::settle_by_bounds(0.0, 0.0, 10), 0);
  EXPECT_EQ(dm::settle_by_bounds(0.0, 1e-300, 10), 1);
  EXPECT_EQ(dm::settle_by_bounds(INFINITY, 1.0, 10), 0);
  EXPECT_EQ(dm::settle_by_bounds(1.0, INFINITY, 10), 1);
  EXPECT_EQ(dm::settle_by_bounds(INFINITY, INFINITY, 10), -1);
  EXPECT_EQ(dm::settle_by_bounds(1.0, 1.0 + 1e-12, 1000), -1);
  EXPECT_EQ(dm::settle_by_bounds(1.0, 1.0 + 1e-6, 1000), 1);
}

}  // namespace
}  // namespace mixq
