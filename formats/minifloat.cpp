#include "formats/minifloat.hpp"

#include <array>
#include <cmath>
#include <limits>

namespace mixq {
namespace {

uint32_t exponent_all_ones(const minifloat_spec& s) { return (1u << s.exp_bits) - 1; }
uint32_t mantissa_all_ones(const minifloat_spec& s) { return (1u << s.man_bits) - 1; }

// Bits of the largest finite magnitude: the top exponent is reserved in IEEE formats, and in FN
// formats only its all-ones mantissa is (NaN).
uint32_t max_finite_bits(const minifloat_spec& s) {
  const uint32_t e = exponent_all_ones(s), m = mantissa_all_ones(s);
  switch (s.specials) {
    case minifloat_specials::ieee: return ((e - 1) << s.man_bits) | m;
    case minifloat_specials::nan_only: return (e << s.man_bits) | (m - 1);
    case minifloat_specials::none: return (e << s.man_bits) | m;
  }
  return 0;
}

}  // namespace

float minifloat_decode(uint32_t bits, const minifloat_spec& s) {
  const bool negative = (bits & s.sign_mask()) != 0;
  const uint32_t e = (bits >> s.man_bits) & exponent_all_ones(s);
  const uint32_t m = bits & mantissa_all_ones(s);
  const bool top = e == exponent_all_ones(s);
  if (s.specials == minifloat_specials::ieee && top) {
    if (m != 0) return std::numeric_limits<float>::quiet_NaN();
    return negative ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  }
  if (s.specials == minifloat_specials::nan_only && top && m == mantissa_all_ones(s))
    return std::numeric_limits<float>::quiet_NaN();
  const double v = e == 0 ? std::ldexp(double(m), s.min_exponent() - s.man_bits)
                          : std::ldexp(double(m + (1u << s.man_bits)), int(e) - s.bias - s.man_bits);
  return static_cast<float>(negative ? -v : v);
}

float minifloat_max_finite(const minifloat_spec& s) { return minifloat_decode(max_finite_bits(s), s); }

uint32_t minifloat_encode(float x, const minifloat_spec& s) {
  const uint32_t sign = std::signbit(x) ? s.sign_mask() : 0u;
  const uint32_t top = exponent_all_ones(s) << s.man_bits;
  const uint32_t max_bits = max_finite_bits(s);
  if (std::isnan(x)) {
    switch (s.specials) {
      case minifloat_specials::ieee: return sign | top | (1u << (s.man_bits - 1));  // quiet NaN
      case minifloat_specials::nan_only: return sign | top | mantissa_all_ones(s);
      case minifloat_specials::none: return sign | max_bits;  // unrepresentable: callers reject NaN first
    }
  }
  const bool has_inf = s.specials == minifloat_specials::ieee;
  auto overflow = [&]() -> uint32_t {
    if (s.saturate || s.specials == minifloat_specials::none) return sign | max_bits;
    return has_inf ? (sign | top) : (sign | top | mantissa_all_ones(s));
  };
  if (std::isinf(x)) return overflow();
  const double a = std::fabs(double(x));
  if (a == 0.0) return sign;

  // Quantum of a's binade (the subnormal binade below the smallest normal), then RNE.
  int e = std::ilogb(a);
  if (e < s.min_exponent()) e = s.min_exponent();
  const double n = std::nearbyint(std::ldexp(a, s.man_bits - e));  // default mode: ties to even
  const double v = std::ldexp(n, e - s.man_bits);
  if (v > double(minifloat_decode(max_bits, s))) return overflow();
  if (v == 0.0) return sign;

  const int ev = std::ilogb(v);
  if (ev < s.min_exponent())  // subnormal: exponent field 0
    return sign | static_cast<uint32_t>(std::ldexp(v, s.man_bits - s.min_exponent()));
  const uint32_t mant = static_cast<uint32_t>(std::ldexp(v, s.man_bits - ev)) - (1u << s.man_bits);
  return sign | (static_cast<uint32_t>(ev + s.bias) << s.man_bits) | mant;
}

const float* e4m3_decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (uint32_t b = 0; b < 256; ++b) t[b] = minifloat_decode(b, kE4M3);
    return t;
  }();
  return table.data();
}

uint16_t fp16_encode(float x) { return static_cast<uint16_t>(minifloat_encode(x, kFP16)); }
float fp16_decode(uint16_t h) { return minifloat_decode(h, kFP16); }

float ue8m0_t::to_float() const {
  if (bits == 0xff) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, exponent());
}

}  // namespace mixq
