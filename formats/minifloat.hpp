// Small floating-point formats as strong types with bit-exact codecs.
//
//   e2m1_t  FP4   1-2-1, bias 1,  no inf / NaN, saturating          {0,.5,1,1.5,2,3,4,6}
//   e4m3_t  FP8   1-4-3, bias 7,  E4M3FN: no inf, NaN = S.1111.111,  max 448, satfinite
//   e5m2_t  FP8   1-5-2, bias 15, IEEE-like: inf and NaN,            max 57344
//   fp16_t  FP16  1-5-10, bias 15, IEEE binary16
//   bf16_t  BF16  1-8-7,  bias 127, IEEE-like (upper half of binary32)
//   ue8m0_t MX block scale: 8-bit unsigned exponent, bias 127, 0xFF = NaN, value 2^(bits-127)
//
// Every conversion from float rounds to nearest, ties to even (RNE). Formats without an infinity
// saturate to their largest finite value; formats with one overflow to it (IEEE).
// Sources: OCP 8-bit FP spec (E4M3FN / E5M2), OCP MX spec v1.0 (E2M1, E8M0), IEEE 754.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

// Marks the few helpers that CUDA kernels (kernels/cuda) share with the CPU code, so that host
// and device compile the same arithmetic; empty for other compilers.
#if defined(__CUDACC__)
#define MIXQ_HD __host__ __device__
#else
#define MIXQ_HD
#endif

namespace mixq {

enum class minifloat_specials : uint8_t {
  ieee,      // all-ones exponent holds inf (mantissa 0) and NaN
  nan_only,  // "FN": no inf; only the all-ones pattern S.1..1.1..1 is NaN (E4M3FN)
  none,      // neither inf nor NaN (E2M1)
};

// The layout of one format; the codec below is written once against it.
struct minifloat_spec {
  int exp_bits;
  int man_bits;
  int bias;
  minifloat_specials specials;
  bool saturate;  // out-of-range finite values clamp to the largest finite value instead of inf

  constexpr int total_bits() const { return 1 + exp_bits + man_bits; }
  constexpr int min_exponent() const { return 1 - bias; }  // exponent of the smallest normal
  constexpr uint32_t sign_mask() const { return 1u << (exp_bits + man_bits); }
};

inline constexpr minifloat_spec kE2M1{2, 1, 1, minifloat_specials::none, true};
inline constexpr minifloat_spec kE4M3{4, 3, 7, minifloat_specials::nan_only, true};
inline constexpr minifloat_spec kE5M2{5, 2, 15, minifloat_specials::ieee, false};
inline constexpr minifloat_spec kFP16{5, 10, 15, minifloat_specials::ieee, false};
inline constexpr minifloat_spec kBF16{8, 7, 127, minifloat_specials::ieee, false};

// Generic reference codec (exact, not fast): used for the 16-bit types and for tests.
float minifloat_decode(uint32_t bits, const minifloat_spec& spec);
uint32_t minifloat_encode(float x, const minifloat_spec& spec);
float minifloat_max_finite(const minifloat_spec& spec);

// ---- fast paths for the formats on hot loops --------------------------------------------------

// E2M1 magnitude code (0..7) of a >= 0 by RNE with saturation. The thresholds are the midpoints
// of the grid; ties at 0.25, 1.25, 2.5, 5 go down and at 0.75, 1.75, 3.5 go up (to the even code).
// Written as a sum of comparisons so loops over it vectorize.
MIXQ_HD inline uint8_t e2m1_magnitude_code(float a) {
  return static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                              (a >= 3.5f) + (a > 5.0f));
}
// The E2M1 value a rounds to (same rounding as e2m1_magnitude_code), branch-free.
MIXQ_HD inline float e2m1_round_magnitude(float a) {
  return 0.5f * float(a > 0.25f) + 0.5f * float(a >= 0.75f) + 0.5f * float(a > 1.25f) + 0.5f * float(a >= 1.75f) +
         float(a > 2.5f) + float(a >= 3.5f) + 2.0f * float(a > 5.0f);
}
inline constexpr float kE2M1Magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// E4M3FN value of every byte (NaN for 0x7F / 0xFF).
const float* e4m3_decode_table();
// The same value computed from the bits, branch-free (for vectorized loops).
inline float e4m3_decode(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24, e = (b >> 3) & 15u, m = b & 7u;
  const float subnormal = std::bit_cast<float>(sign | std::bit_cast<uint32_t>(float(m) * 0x1p-9f));
  const float normal = std::bit_cast<float>(sign | ((e + 120u) << 23) | (m << 20));
  const float v = e == 0 ? subnormal : normal;
  return (b & 0x7fu) == 0x7fu ? std::bit_cast<float>(0x7fc00000u) : v;
}
// E4M3FN from float: RNE, satfinite (|x| > 448 -> ±448), NaN -> 0x7F|sign.
inline uint8_t e4m3_encode(float x) {
  // Branch-free so that loops over it vectorize: every case is computed, then selected.
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t u = bits & 0x7fffffffu;
  // Below 2^-6 the grid is k·2^-9, k = 0..8: adding 2^23 to a·512 rounds it to an integer by the
  // FPU's RNE (k = 8 is the smallest normal, 0x08).
  const float t = std::bit_cast<float>(u) * 512.0f + 8388608.0f;
  const uint32_t subnormal = std::bit_cast<uint32_t>(t) - 0x4b000000u;
  // Normal: RNE of the 23-bit mantissa to 3 bits; a carry moves into the exponent by itself.
  const uint32_t r = u + 0x7ffffu + ((u >> 20) & 1u);
  const uint32_t normal = ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)) & 0x7fu;
  uint32_t code = u < 0x3c800000u ? subnormal : normal;
  code = u >= 0x43e00000u ? 0x7eu : code;  // >= 448 (and inf): satfinite
  code = u > 0x7f800000u ? 0x7fu : code;   // NaN
  return static_cast<uint8_t>(sign | code);
}


inline uint16_t bf16_encode(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                                        // RNE
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_decode(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t fp16_encode(float x);
float fp16_decode(uint16_t h);

// ---- strong types -----------------------------------------------------------------------------

struct e2m1_t {
  static constexpr const minifloat_spec& spec = kE2M1;
  uint8_t bits = 0;  // low 4 bits: sign<<3 | magnitude code
  static e2m1_t from_float(float x) {
    const uint8_t sign = std::signbit(x) ? 0x8 : 0x0;
    return {static_cast<uint8_t>(sign | e2m1_magnitude_code(x < 0 ? -x : x))};
  }
  float to_float() const {
    const float m = kE2M1Magnitudes[bits & 0x7];
    return (bits & 0x8) ? -m : m;
  }
};

struct e4m3_t {
  static constexpr const minifloat_spec& spec = kE4M3;
  uint8_t bits = 0;
  static e4m3_t from_float(float x) { return {e4m3_encode(x)}; }
  float to_float() const { return e4m3_decode_table()[bits]; }
};

struct e5m2_t {
  static constexpr const minifloat_spec& spec = kE5M2;
  uint8_t bits = 0;
  static e5m2_t from_float(float x) { return {static_cast<uint8_t>(minifloat_encode(x, kE5M2))}; }
  float to_float() const { return minifloat_decode(bits, kE5M2); }
};

struct fp16_t {
  static constexpr const minifloat_spec& spec = kFP16;
  uint16_t bits = 0;
  static fp16_t from_float(float x) { return {fp16_encode(x)}; }
  float to_float() const { return fp16_decode(bits); }
};

struct bf16_t {
  static constexpr const minifloat_spec& spec = kBF16;
  uint16_t bits = 0;
  static bf16_t from_float(float x) { return {bf16_encode(x)}; }
  float to_float() const { return bf16_decode(bits); }
};

// MX shared block scale: a power of two 2^(bits-127); 0xFF is NaN.
struct ue8m0_t {
  uint8_t bits = 127;
  static ue8m0_t from_exponent(int e) {  // clamps to the representable [-127, 127]
    e = e < -127 ? -127 : (e > 127 ? 127 : e);
    return {static_cast<uint8_t>(e + 127)};
  }
  int exponent() const { return static_cast<int>(bits) - 127; }
  float to_float() const;
};

template <class T>
inline constexpr int sizeof_bits = T::spec.total_bits();
template <>
inline constexpr int sizeof_bits<ue8m0_t> = 8;

static_assert(sizeof_bits<e2m1_t> == 4 && sizeof_bits<e4m3_t> == 8 && sizeof_bits<e5m2_t> == 8);
static_assert(sizeof_bits<fp16_t> == 16 && sizeof_bits<bf16_t> == 16);

}  // namespace mixq
