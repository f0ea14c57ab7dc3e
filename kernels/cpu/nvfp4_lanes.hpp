// NVFP4 arithmetic on 16 lanes at once, with GCC vector extensions (one zmm with AVX-512, two ymm
// with AVX2, four xmm otherwise; no intrinsics). Each function is the lane-wise twin of a scalar
// one in formats/ (named in its comment) and gives the same bits: tests/kernels checks the fast
// paths built from them against the references.
#pragma once

#include <cstdint>
#include <cstring>

#include "formats/nvfp4.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

// Passing 64-byte vectors by value would differ between the AVX-512 and baseline ABIs; these
// functions are inline helpers of one translation unit, never called across that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mixq::cpu::lanes {

typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));
typedef uint8_t v16b __attribute__((vector_size(16)));
typedef double v8d __attribute__((vector_size(64)));

MIXQ_ALWAYS_INLINE v16u load_bits(const float* p) {
  v16u v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
MIXQ_ALWAYS_INLINE v16f abs_of(v16u bits) { return (v16f)(bits & 0x7fffffffu); }

// The 16 lanes of v combined by op in nvfp4_block_sq_error's tree order: lanes i and i+8, then
// i+4, i+2, i+1 (so a sum is bit-identical to the reference's).
template <class Op>
MIXQ_ALWAYS_INLINE float reduce16(v16f m, Op op) {
  m = op(m, __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  m = op(m, __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  m = op(m, __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  m = op(m, __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return m[0];
}
MIXQ_ALWAYS_INLINE float max16(v16f v) {
  return reduce16(v, [](v16f a, v16f b) { return a > b ? a : b; });
}
MIXQ_ALWAYS_INLINE float sum16(v16f v) {
  return reduce16(v, [](v16f a, v16f b) { return a + b; });
}

// nvfp4_clamp_block_scale (with the all-zero substitution done by the caller).
MIXQ_ALWAYS_INLINE v16f clamp_block_scale(v16f s) {
  s = s < kNvfp4MinBlockScale ? kNvfp4MinBlockScale : s;
  return s > 448.0f ? 448.0f : s;
}
// nvfp4_max_block_scale_f32.
MIXQ_ALWAYS_INLINE v16f max_block_scale(v16f block_amax, float ws2) {
  const v16f s = block_amax / (6.0f * ws2);
  return clamp_block_scale(s == 0.0f ? 1.0f : s);
}
// nvfp4_block_scale_f32 (g > 0).
MIXQ_ALWAYS_INLINE v16f static_block_scale(v16f block_amax, float g, float normalizer) {
  v16f t = block_amax / 6.0f;
  t = t == 0.0f ? 1.0f : t;
  return clamp_block_scale(t * normalizer / (g / 6.0f));
}
// e4m3_encode for positive finite lanes.
MIXQ_ALWAYS_INLINE v16u e4m3_encode(v16f s) {
  const v16u u = (v16u)s;
  const v16u subnormal = (v16u)(s * 512.0f + 8388608.0f) - 0x4b000000u;
  const v16u r = u + 0x7ffffu + ((u >> 20) & 1u);
  const v16u normal = ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)) & 0x7fu;
  const v16u code = u < 0x3c800000u ? subnormal : normal;
  return u >= 0x43e00000u ? 0x7eu : code;
}
// e4m3_decode for codes 0..0x7e.
MIXQ_ALWAYS_INLINE v16f e4m3_decode(v16u code) {
  const v16u e = code >> 3, m = code & 7u;
  return e == 0u ? __builtin_convertvector(m, v16f) * 0x1p-9f : (v16f)(((e + 120u) << 23) | (m << 20));
}
// fp8_row_sq_error over a row: 8 double lanes (lane j takes elements j, j+8, ...), lanes added
// in order at the end; the same sums as the reference.
MIXQ_ALWAYS_INLINE double fp8_row_sq_error(const float* row, int64_t n, float scale) {
  v8d acc = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const v16u bits = load_bits(row + i);
    const v16f x = (v16f)bits;
    const v16u code = e4m3_encode(abs_of(bits) / scale);  // |x / scale|: sign restored below
    const v16f deq = (v16f)((v16u)(e4m3_decode(code) * scale) | (bits & 0x80000000u));
    const v8d lo = __builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7), v8d) -
                   __builtin_convertvector(__builtin_shufflevector(deq, deq, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
    const v8d hi = __builtin_convertvector(__builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15), v8d) -
                   __builtin_convertvector(__builtin_shufflevector(deq, deq, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
    acc += lo * lo;
    acc += hi * hi;
  }
  double lane[8];
  std::memcpy(lane, &acc, sizeof lane);
  for (int j = 0; i + j < n; ++j) {  // the tail, into the lanes the reference uses
    const int64_t k = i + j;
    const double d = double(row[k]) - double(mixq::e4m3_decode(mixq::e4m3_encode(row[k] / scale)) * scale);
    lane[j % 8] += d * d;
  }
  double err = 0.0;
  for (double l : lane) err += l;
  return err;
}

// e2m1_code_by_bits: RNE(2q) below 1, one mantissa bit above, saturating at 7.
MIXQ_ALWAYS_INLINE v16u e2m1_codes(v16f q) {
  const v16u small = (v16u)(q * 2.0f + 8388608.0f) - 0x4b000000u;
  const v16u u = (v16u)q;
  const v16u large = ((u + 0x1fffffu + ((u >> 22) & 1u)) >> 22) - 252u;
  const v16u code = q < 1.0f ? small : large;
  return code < 7u ? code : 7u;
}
// e2m1_magnitude_of: a table lookup held in one register (a lane permute).
MIXQ_ALWAYS_INLINE v16f e2m1_magnitudes(v16u c) {
  const v16f table = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  return __builtin_shuffle(table, c);
}
// The sign bit of nvfp4_code: set for x < 0 (not for -0).
MIXQ_ALWAYS_INLINE v16u sign_bits(v16u x_bits) { return (v16u)((v16f)x_bits < 0.0f) & 8u; }

// Two codes per byte, even element in the low nibble; 8 bytes to dst.
MIXQ_ALWAYS_INLINE void store_packed(v16u code, uint8_t* dst) {
  const v8u even = __builtin_shufflevector(code, code, 0, 2, 4, 6, 8, 10, 12, 14);
  const v8u odd = __builtin_shufflevector(code, code, 1, 3, 5, 7, 9, 11, 13, 15);
  const v8b bytes = __builtin_convertvector(even | (odd << 4), v8b);
  std::memcpy(dst, &bytes, sizeof bytes);
}
MIXQ_ALWAYS_INLINE void store_bytes(v16u v, uint8_t* dst) {
  const v16b b = __builtin_convertvector(v, v16b);
  std::memcpy(dst, &b, sizeof b);
}

}  // namespace mixq::cpu::lanes
