// Elementwise math the compiler can vectorize: std::exp is a library call, which keeps every loop
// that uses it scalar. Include only from translation units whose hot loops are MIXQ_CLONES, so these
// inline into each instruction-set clone.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu {

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
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
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

}  // namespace mixq::cpu
