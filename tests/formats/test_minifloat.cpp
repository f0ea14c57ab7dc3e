// Every code of every small format against an independent decode-by-formula, and encoding checked
// at every grid point, every midpoint (ties to even) and one ulp either side of it.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "formats/minifloat.hpp"

namespace mixq {
namespace {

// Decoding straight from the format definitions, written independently of minifloat.cpp.
double e4m3_by_formula(uint32_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  const double v = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
  return (b & 0x80) ? -v : v;
}
double e5m2_by_formula(uint32_t b) {
  const int e = (b >> 2) & 31, m = b & 3;
  if (e == 31) return m ? NAN : ((b & 0x80) ? -INFINITY : INFINITY);
  const double v = e == 0 ? m * std::ldexp(1.0, -16) : (1.0 + m / 4.0) * std::ldexp(1.0, e - 15);
  return (b & 0x80) ? -v : v;
}
double e2m1_by_formula(uint32_t b) {
  const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return (b & 8) ? -mag[b & 7] : mag[b & 7];
}
double fp16_by_formula(uint32_t b) {
  const int e = (b >> 10) & 31, m = b & 1023;
  if (e == 31) return m ? NAN : ((b & 0x8000) ? -INFINITY : INFINITY);
  const double v = e == 0 ? m * std::ldexp(1.0, -24) : (1.0 + m / 1024.0) * std::ldexp(1.0, e - 15);
  return (b & 0x8000) ? -v : v;
}
double bf16_by_formula(uint32_t b) { return std::bit_cast<float>(b << 16); }

void expect_same(double expected, float got, uint32_t bits) {
  if (std::isnan(expected)) EXPECT_TRUE(std::isnan(got)) << "bits 0x" << std::hex << bits;
  else EXPECT_EQ(expected, double(got)) << "bits 0x" << std::hex << bits;
}

TEST(minifloat, decode_every_code_matches_the_definition) {
  for (uint32_t b = 0; b < 16; ++b) expect_same(e2m1_by_formula(b), minifloat_decode(b, kE2M1), b);
  for (uint32_t b = 0; b < 16; ++b) expect_same(e2m1_by_formula(b), e2m1_t{uint8_t(b)}.to_float(), b);
  for (uint32_t b = 0; b < 256; ++b) expect_same(e4m3_by_formula(b), e4m3_t{uint8_t(b)}.to_float(), b);
  for (uint32_t b = 0; b < 256; ++b) expect_same(e4m3_by_formula(b), e4m3_decode(uint8_t(b)), b);
  for (uint32_t b = 0; b < 256; ++b) expect_same(e5m2_by_formula(b), e5m2_t{uint8_t(b)}.to_float(), b);
  for (uint32_t b = 0; b < 65536; ++b) expect_same(fp16_by_formula(b), fp16_decode(uint16_t(b)), b);
  for (uint32_t b = 0; b < 65536; ++b) expect_same(bf16_by_formula(b), minifloat_decode(b, kBF16), b);
}

TEST(minifloat, anchors) {
  EXPECT_EQ(e4m3_t{0x7e}.to_float(), 448.0f);
  EXPECT_EQ(e4m3_t{0x08}.to_float(), 0x1p-6f);
  EXPECT_EQ(e4m3_t{0x01}.to_float(), 0x1p-9f);
  EXPECT_EQ(e4m3_t{0x38}.to_float(), 1.0f);
  EXPECT_EQ(e5m2_t{0x7b}.to_float(), 57344.0f);
  EXPECT_EQ(minifloat_max_finite(kE2M1), 6.0f);
  EXPECT_EQ(minifloat_max_finite(kE4M3), 448.0f);
  EXPECT_EQ(minifloat_max_finite(kFP16), 65504.0f);
  EXPECT_EQ(ue8m0_t::from_exponent(0).bits, 127);
  EXPECT_EQ(ue8m0_t::from_exponent(-200).exponent(), -127);
  EXPECT_TRUE(std::isnan(ue8m0_t{0xff}.to_float()));
  EXPECT_EQ(ue8m0_t::from_exponent(-3).to_float(), 0.125f);
}

struct codec {
  const char* name;
  const minifloat_spec* spec;
  uint32_t (*encode)(float);  // the implementation under test
};

uint32_t enc_e2m1(float x) { return e2m1_t::from_float(x).bits; }
uint32_t enc_e4m3_fast(float x) { return e4m3_encode(x); }
uint32_t enc_e4m3_generic(float x) { return minifloat_encode(x, kE4M3); }
uint32_t enc_e5m2(float x) { return e5m2_t::from_float(x).bits; }
uint32_t enc_fp16(float x) { return fp16_encode(x); }
uint32_t enc_bf16_fast(float x) { return bf16_encode(x); }
uint32_t enc_bf16_generic(float x) { return minifloat_encode(x, kBF16); }
uint32_t enc_e2m1_generic(float x) { return minifloat_encode(x, kE2M1); }

// For every pair of neighbouring non-negative finite values: both ends, the midpoint (ties to the
// even code), one float ulp either side of the midpoint; negatives by symmetry; then overflow.
void check_rounding(const codec& c) {
  const minifloat_spec& s = *c.spec;
  const uint32_t n_codes = 1u << s.total_bits();
  std::vector<std::pair<double, uint32_t>> grid;
  for (uint32_t b = 0; b < n_codes / 2; ++b) {
    const double v = minifloat_decode(b, s);
    if (std::isfinite(v)) grid.push_back({v, b});
  }
  std::sort(grid.begin(), grid.end());
  const uint32_t sign = s.sign_mask();
  int failures = 0;
  auto check = [&](float x, uint32_t want) {
    const uint32_t got = c.encode(x);
    const uint32_t got_neg = c.encode(-x);
    if (got != want || got_neg != (want | sign)) {
      if (++failures < 10)
        ADD_FAILURE() << c.name << ": encode(" << x << ") = 0x" << std::hex << got << ", encode(-x) = 0x" << got_neg
                      << ", want 0x" << want;
    }
  };
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    const auto [lo, lo_bits] = grid[i];
    const auto [hi, hi_bits] = grid[i + 1];
    const float mid = float((lo + hi) / 2);
    ASSERT_EQ(double(mid), (lo + hi) / 2) << "midpoint not representable in float";
    check(float(lo), lo_bits);
    check(float(hi), hi_bits);
    check(mid, (lo_bits & 1) == 0 ? lo_bits : hi_bits);
    check(std::nextafter(mid, 0.0f), lo_bits);
    check(std::nextafter(mid, INFINITY), hi_bits);
  }
  // Beyond the largest finite value.
  const auto [top, top_bits] = grid.back();
  const double ulp = top - grid[grid.size() - 2].first;
  const float beyond = float(top + ulp);  // where the next binade's value would be
  if (s.saturate || s.specials != minifloat_specials::ieee) {
    check(beyond, top_bits);
    check(INFINITY, top_bits);
  } else {
    const uint32_t inf_bits = ((1u << s.exp_bits) - 1) << s.man_bits;
    check(std::nextafter(float(top + ulp / 2), 0.0f), top_bits);
    check(float(top + ulp / 2), inf_bits);  // the tie goes to the even (infinite) side
    check(INFINITY, inf_bits);
  }
  EXPECT_EQ(failures, 0) << c.name;
}

TEST(minifloat, rounding_at_every_midpoint) {
  const codec codecs[] = {
      {"e2m1", &kE2M1, enc_e2m1},          {"e2m1/generic", &kE2M1, enc_e2m1_generic},
      {"e4m3", &kE4M3, enc_e4m3_fast},     {"e4m3/generic", &kE4M3, enc_e4m3_generic},
      {"e5m2", &kE5M2, enc_e5m2},          {"fp16", &kFP16, enc_fp16},
      {"bf16", &kBF16, enc_bf16_fast},     {"bf16/generic", &kBF16, enc_bf16_generic},
  };
  for (const codec& c : codecs) check_rounding(c);
}

TEST(minifloat, nan_inf_and_signed_zero) {
  EXPECT_EQ(e4m3_encode(NAN), 0x7f);
  EXPECT_EQ(e4m3_encode(-NAN) & 0x7f, 0x7f);
  EXPECT_EQ(e4m3_encode(INFINITY), 0x7e);
  EXPECT_EQ(e4m3_encode(-INFINITY), 0xfe);
  EXPECT_EQ(e4m3_encode(-0.0f), 0x80);
  EXPECT_EQ(e5m2_t::from_float(INFINITY).bits, 0x7c);
  EXPECT_TRUE(std::isnan(e5m2_t{e5m2_t::from_float(NAN)}.to_float()));
  EXPECT_TRUE(std::isnan(bf16_decode(bf16_encode(NAN))));
  EXPECT_EQ(bf16_encode(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(fp16_decode(fp16_encode(NAN))));
  EXPECT_EQ(fp16_encode(1e6f), 0x7c00);
  EXPECT_EQ(e2m1_t::from_float(-0.1f).bits, 0x8);  // rounds to -0
}

// The fast codecs against the generic one on random floats of every magnitude, and FP16 against
// the compiler's own IEEE conversion.
TEST(minifloat, fast_codecs_match_generic_on_random_floats) {
  std::mt19937 rng(7);
  int mismatches = 0;
  for (int i = 0; i < 2000000; ++i) {
    const float x = std::bit_cast<float>(uint32_t(rng()));
    if (e4m3_encode(x) != minifloat_encode(x, kE4M3)) ++mismatches;
    if (!std::isnan(x) && bf16_encode(x) != minifloat_encode(x, kBF16)) ++mismatches;
    const _Float16 h = static_cast<_Float16>(x);
    if (!std::isnan(x) && fp16_encode(x) != std::bit_cast<uint16_t>(h)) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(minifloat, e2m1_code_and_value_agree) {
  for (float a = 0.0f; a < 8.0f; a += 0.0078125f)
    EXPECT_EQ(kE2M1Magnitudes[e2m1_magnitude_code(a)], e2m1_round_magnitude(a)) << a;
}

}  // namespace
}  // namespace mixq
