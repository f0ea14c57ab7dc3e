// Elementwise math the compiler can vectorize: std::exp is a library call, which keeps every loop
// that uses it scalar. Include only from translation units whose hot loops are MIXQ_CLONES, so these
// inline into each instruction-set clone.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "kernels/cpu/simd_dispatch.hpp"

// Passing 64-byte vectors by value would differ between the AVX-512 and baseline ABIs; the helpers
// below are always inlined into their caller's clone, never called across that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mixq::cpu {

// e^r for |r| <= ln2/2: the degree-7 Taylor polynomial by Horner (float or vec16 lanes).
template <class F>
MIXQ_ALWAYS_INLINE F exp_taylor7(F r) {
  F p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}

// e^x for float, within 2 ulp of the correctly rounded value on [-86.9, 88.7] (tests/kernels checks
// it against std::exp); 0 below (where e^x < 2e-38), +inf above. Branch-free so loops over it
// vectorize: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for an exact product), e^r by its
// degree-7 Taylor polynomial (Horner, relative error < 1e-8), 2^n added straight into the exponent bits
// (the bounds keep the result normal).
MIXQ_ALWAYS_INLINE float fast_exp(float x) {
  constexpr float lo = -86.9f, hi = 88.7f;
  constexpr float log2e = 1.44269504088896341f;
  constexpr float ln2_hi = 0.693145751953125f;  // the top 16 bits of ln 2: n·ln2_hi is exact
  constexpr float ln2_lo = 1.42860682030941723212e-6f;
  constexpr float round_magic = 12582912.0f;  // 1.5·2^23: (v + magic) − magic rounds v to even
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = (xc * log2e + round_magic) - round_magic;
  const float r = (xc - n * ln2_hi) - n * ln2_lo;
  const float p = exp_taylor7(r);
  const float y = std::bit_cast<float>(std::bit_cast<int32_t>(p) + (int32_t(n) << 23));
  return x < lo ? 0.0f : (x > hi ? __builtin_inff() : (x == x ? y : x));  // NaN stays NaN
}

MIXQ_ALWAYS_INLINE float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// Reductions in a fixed order: 16 partial results (lane l takes elements l, l + 16, ...), combined
// at the end. The compiler vectorizes a fixed-width lane loop without reassociating anything, so the
// result does not depend on thread counts or data layout. Where a file allows FMA contraction
// (kernels/cpu/CMakeLists.txt) the AVX2 / AVX-512 clones differ from the baseline one in the last
// bits; the quantizers, which must match their references bit for bit, do not allow it.
constexpr int64_t reduce_lanes = 16;

MIXQ_ALWAYS_INLINE float lane_sum(const float* x, int64_t n) {
  float acc[reduce_lanes] = {};
  int64_t i = 0;
  for (; i + reduce_lanes <= n; i += reduce_lanes)
    for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] += x[i + l];
  for (int64_t l = 0; i + l < n; ++l) acc[l] += x[i + l];
  float total = 0.0f;
  for (int64_t l = 0; l < reduce_lanes; ++l) total += acc[l];
  return total;
}

// Four lane sets in flight (64 products per step) so that the multiply-add latency does not
// serialize the loop; folded to 16 lanes, then summed.
MIXQ_ALWAYS_INLINE float lane_dot(const float* x, const float* y, int64_t n) {
  constexpr int64_t wide = 4 * reduce_lanes;
  float acc[wide] = {};
  int64_t i = 0;
  for (; i + wide <= n; i += wide)
    for (int64_t l = 0; l < wide; ++l) acc[l] += x[i + l] * y[i + l];
  for (; i + reduce_lanes <= n; i += reduce_lanes)
    for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] += x[i + l] * y[i + l];
  for (int64_t l = 0; i + l < n; ++l) acc[l] += x[i + l] * y[i + l];
  for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] += (acc[l + 16] + acc[l + 32]) + acc[l + 48];
  float total = 0.0f;
  for (int64_t l = 0; l < reduce_lanes; ++l) total += acc[l];
  return total;
}

// The largest element (n >= 1; NaN-free input).
MIXQ_ALWAYS_INLINE float lane_max(const float* x, int64_t n) {
  float acc[reduce_lanes];
  for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] = x[0];
  int64_t i = 0;
  for (; i + reduce_lanes <= n; i += reduce_lanes)
    for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] = std::max(acc[l], x[i + l]);
  for (int64_t l = 0; i + l < n; ++l) acc[l] = acc[l] > x[i + l] ? acc[l] : x[i + l];
  float m = acc[0];
  for (int64_t l = 1; l < reduce_lanes; ++l) m = m > acc[l] ? m : acc[l];
  return m;
}

// Sixteen floats as one value (GCC / Clang vector extension): one AVX-512 register, two AVX2 ones,
// four SSE ones. Loops that keep many running sums (a register per channel) hold them in these so
// the compiler cannot spill them through the stack as it does with plain arrays.
using vec16 = float __attribute__((vector_size(64)));
using ivec16 = int32_t __attribute__((vector_size(64)));
static_assert(sizeof(vec16) == reduce_lanes * sizeof(float));

MIXQ_ALWAYS_INLINE vec16 load16(const float* p) {
  vec16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
MIXQ_ALWAYS_INLINE void store16(float* p, vec16 v) { __builtin_memcpy(p, &v, sizeof v); }
MIXQ_ALWAYS_INLINE vec16 splat16(float x) { return vec16{} + x; }

// Lanes summed in order, as lane_sum combines its partial results.
MIXQ_ALWAYS_INLINE float sum16(vec16 v) {
  float total = 0.0f;
  for (int l = 0; l < reduce_lanes; ++l) total += v[l];
  return total;
}
MIXQ_ALWAYS_INLINE float max16(vec16 v) {
  float m = v[0];
  for (int l = 1; l < reduce_lanes; ++l) m = m > v[l] ? m : v[l];
  return m;
}
MIXQ_ALWAYS_INLINE vec16 max16(vec16 a, vec16 b) { return a > b ? a : b; }

// fast_exp on sixteen lanes, the same operations lane by lane (so the same results).
MIXQ_ALWAYS_INLINE vec16 fast_exp16(vec16 x) {
  constexpr float lo = -86.9f, hi = 88.7f;
  const vec16 xc = x < lo ? splat16(lo) : (x > hi ? splat16(hi) : x);
  const vec16 n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const vec16 r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  const vec16 p = exp_taylor7(r);
  const vec16 y = std::bit_cast<vec16>(std::bit_cast<ivec16>(p) + (__builtin_convertvector(n, ivec16) << 23));
  return x < lo ? vec16{} : (x > hi ? splat16(__builtin_inff()) : (x == x ? y : x));
}

}  // namespace mixq::cpu
