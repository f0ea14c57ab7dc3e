// The per-block / per-element arithmetic of the CUDA quantizers, written once for host and device.
// On the device every rounding is an explicit __f*_rn / __d*_rn intrinsic; on the host the same
// expressions are plain IEEE operations (the project compiles with -ffp-contract=off), so host
// tests (tests/cuda) can check this logic against the scalar reference without a GPU, and the GPU
// tests check that the device computes the same.
//
// Plain C++ when not compiled by nvcc: include it from .cpp files freely.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"  // MIXQ_HD, e2m1_magnitude_code, e2m1_round_magnitude
#include "formats/nvfp4.hpp"

#if defined(__CUDACC__)
#define MIXQ_HDI __host__ __device__ __forceinline__
#else
#define MIXQ_HDI inline
#endif
#if defined(__CUDA_ARCH__)
#define MIXQ_UNROLL _Pragma("unroll")
#else
#define MIXQ_UNROLL
#endif

namespace mixq::cuda::dm {

// ---- roundings, spelled out ------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
MIXQ_HDI float add(float a, float b) { return __fadd_rn(a, b); }
MIXQ_HDI float sub(float a, float b) { return __fsub_rn(a, b); }
MIXQ_HDI float mul(float a, float b) { return __fmul_rn(a, b); }
MIXQ_HDI float div(float a, float b) { return __fdiv_rn(a, b); }
MIXQ_HDI double add(double a, double b) { return __dadd_rn(a, b); }
MIXQ_HDI double sub(double a, double b) { return __dsub_rn(a, b); }
MIXQ_HDI double mul(double a, double b) { return __dmul_rn(a, b); }
MIXQ_HDI uint32_t bits_of(float x) { return __float_as_uint(x); }
MIXQ_HDI float float_of(uint32_t u) { return __uint_as_float(u); }
#else
MIXQ_HDI float add(float a, float b) { return a + b; }
MIXQ_HDI float sub(float a, float b) { return a - b; }
MIXQ_HDI float mul(float a, float b) { return a * b; }
MIXQ_HDI float div(float a, float b) { return a / b; }
MIXQ_HDI double add(double a, double b) { return a + b; }
MIXQ_HDI double sub(double a, double b) { return a - b; }
MIXQ_HDI double mul(double a, double b) { return a * b; }
MIXQ_HDI uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
MIXQ_HDI float float_of(uint32_t u) { return std::bit_cast<float>(u); }
#endif

MIXQ_HDI bool is_finite(float v) { return (bits_of(v) & 0x7f800000u) != 0x7f800000u; }
MIXQ_HDI float abs_as_reference(float w) { return w < 0.0f ? -w : w; }  // the reference's w < 0 ? -w : w

// ---- minifloats ----------------------------------------------------------------------------------

// formats/minifloat.cpp e4m3_encode, the same branch-free bit arithmetic (RNE, satfinite, NaN -> 0x7F|sign).
MIXQ_HDI uint32_t e4m3_encode(float x) {
  const uint32_t bits = bits_of(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t u = bits & 0x7fffffffu;
  const float t = add(mul(float_of(u), 512.0f), 8388608.0f);
  const uint32_t subnormal = bits_of(t) - 0x4b000000u;
  const uint32_t r = u + 0x7ffffu + ((u >> 20) & 1u);
  const uint32_t normal = ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)) & 0x7fu;
  uint32_t code = u < 0x3c800000u ? subnormal : normal;
  code = u >= 0x43e00000u ? 0x7eu : code;
  code = u > 0x7f800000u ? 0x7fu : code;
  return sign | code;
}

// What e4m3_decode_table() holds, built from the bits: 2^(e-7)·(1+m/8), m·2^-9, NaN for S.1111.111.
MIXQ_HDI float e4m3_decode(uint32_t b) {
  const uint32_t e = (b >> 3) & 15u, m = b & 7u;
  float v = e == 0 ? mul(float(m), 0.001953125f) : float_of(((e + 120u) << 23) | (m << 20));
  v = (b & 0x7fu) == 0x7fu ? float_of(0x7fc00000u) : v;
  return (b & 0x80u) ? -v : v;
}

// ---- quotients without division -------------------------------------------------------------------

// Float nearest to v from below / above (v within the float range or past it: ±inf where RN overflows).
MIXQ_HDI float float_rd(double v) {
#if defined(__CUDA_ARCH__)
  return __double2float_rd(v);
#else
  const float f = float(v);
  return double(f) > v ? std::nextafter(f, -INFINITY) : f;
#endif
}
MIXQ_HDI float float_ru(double v) {
#if defined(__CUDA_ARCH__)
  return __double2float_ru(v);
#else
  const float f = float(v);
  return double(f) < v ? std::nextafter(f, INFINITY) : f;
#endif
}

// E2M1 rounding of fl(a / s) compares fl(a / s) with the floats t = 0.25 (>), 0.75 (>=), 1.25 (>),
// 1.75 (>=), 2.5 (>), 3.5 (>=), 5 (>). Rounding is monotone and each t a float whose significand is
// even, so fl(a/s) > t iff a/s > t + ulp(t)/2 and fl(a/s) >= t iff a/s >= t - ulp(t)/2 (the quotient
// near a cut is a normal float whatever s is), i.e. a > (t + ulp/2)·s and a >= (t - ulp/2)·s. Those
// products are exact in double (25 and 24 significant bits), and a float exceeds a real T iff it
// exceeds RD(T), reaches T iff it reaches RU(T): one set of 7 float bounds per scale replaces a
// division per value. ready: s is positive and finite (a / 0 is inf or NaN, which no cut reproduces).
struct e2m1_bounds {
  float cut[7];
  bool ready;
};
MIXQ_HDI e2m1_bounds e2m1_bounds_for(float s) {
  const double d = double(s);
  e2m1_bounds b{};
  b.ready = s > 0.0f && s <= 0x1.fffffep127f;
  b.cut[0] = float_rd(mul(0.25 + 0x1p-26, d));
  b.cut[1] = float_ru(mul(0.75 - 0x1p-25, d));
  b.cut[2] = float_rd(mul(1.25 + 0x1p-24, d));
  b.cut[3] = float_ru(mul(1.75 - 0x1p-24, d));
  b.cut[4] = float_rd(mul(2.5 + 0x1p-23, d));
  b.cut[5] = float_ru(mul(3.5 - 0x1p-23, d));
  b.cut[6] = float_rd(mul(5.0 + 0x1p-22, d));
  return b;
}
// e2m1_magnitude_code(fl(a / s)) for a >= 0, given ready bounds (nvfp4_sq_error selects the rounded
// value from the same cuts).
MIXQ_HDI uint32_t e2m1_code_by_bounds(float a, const e2m1_bounds& b) {
  return uint32_t(a > b.cut[0]) + uint32_t(a >= b.cut[1]) + uint32_t(a > b.cut[2]) + uint32_t(a >= b.cut[3]) +
         uint32_t(a > b.cut[4]) + uint32_t(a >= b.cut[5]) + uint32_t(a > b.cut[6]);
}

// e4m3_encode(fl(w / s)) from r = fl(w · fl(1/s)): r is within 3.01·2^-24 relative of fl(w/s), under
// 4 ulps, so both round alike unless r sits within 8 ulps of a rounding midpoint (low 20 bits near
// 0x80000) or outside E4M3's normal range [2^-6, 448) (subnormal codes round at another bit): then
// divide. Clear of midpoints, no tie can occur, and rounding to 3 mantissa bits is adding half a step.
// inv = fp8_inverse(s): fl(1/s) for a normal s with a normal reciprocal, else 0 (always divide).
MIXQ_HDI float fp8_inverse(float s) { return s >= 0x1p-125f && s <= 0x1p125f ? div(1.0f, s) : 0.0f; }
struct fp8_quotient {
  uint32_t sign;     // 0x80000000 or 0
  uint32_t rounded;  // clear: |r| rounded to E4M3's 3 mantissa bits (float bits, low 20 bits zero); else 0
};
// Whether r (its bits without the sign) is clear of E4M3 midpoints and inside the normal range.
MIXQ_HDI bool fp8_clear(uint32_t u) {
  return u >= 0x3c800000u + 64u && u < 0x43e00000u && ((u & 0xfffffu) - 0x80000u + 8u) > 16u;
}
MIXQ_HDI fp8_quotient fp8_round_with_inverse(float w, float inv) {
  const uint32_t rb = bits_of(mul(w, inv));
  const uint32_t u = rb & 0x7fffffffu;
  return {rb & 0x80000000u, fp8_clear(u) ? (u + 0x80000u) & 0xfff00000u : 0u};
}
MIXQ_HDI uint32_t fp8_code_with_inverse(float w, float s, float inv) {
  const fp8_quotient q = fp8_round_with_inverse(w, inv);
  if (q.rounded != 0) return (q.sign >> 24) | ((q.rounded >> 20) - 960u);  // E4M3 exponent bias 7 vs 127
  if (inv != 0.0f && mul(w, inv) == 0.0f) return q.sign >> 24;            // +-0 (or under 2^-149): code +-0
  return e4m3_encode(div(w, s));
}

// ---- NVFP4 ---------------------------------------------------------------------------------------

MIXQ_HDI float nvfp4_clamp_block_scale(float s) {
  s = s < kNvfp4MinBlockScale ? kNvfp4MinBlockScale : s;
  return s > 448.0f ? 448.0f : s;
}

// nvfp4_max_block_scale_f32 (ModelOpt's dynamic path): a / (6 · weight_scale_2).
MIXQ_HDI float nvfp4_max_block_scale(float block_amax, float ws2) {
  const float s = div(block_amax, mul(6.0f, ws2));
  return nvfp4_clamp_block_scale(s == 0.0f ? 1.0f : s);
}

// nvfp4_block_scale_f32 (ModelOpt's static path): ((a/6 or 1) · normalizer) / (global_amax / 6).
MIXQ_HDI float nvfp4_block_scale(float block_amax, float global_amax, float normalizer) {
  const float g = global_amax > 0x1p-100f ? global_amax : 1.0f;  // nvfp4_scale_amax
  float t = div(block_amax, 6.0f);
  if (t == 0.0f) t = 1.0f;
  return nvfp4_clamp_block_scale(div(mul(t, normalizer), div(g, 6.0f)));
}

// nvfp4_block_sq_error (the same squared errors, summed as the same fixed tree) without divisions,
// for a finite scale >= 0 (as NVFP4's always are): the dequantized value of a is the step
// E2M1[k]·scale of the highest e2m1_bounds cut it passes (the cuts ascend), chosen by selects. A zero
// scale (not `ready`) has zero cuts and zero steps, hence d = 0 and error a², as the reference's
// a / 0 gives. (|w| by fabsf: +0 for the reference's -0 changes no comparison and no square.)
MIXQ_HDI float nvfp4_sq_error(const float (&w)[kNvfp4Block], float scale) {
  const e2m1_bounds b = e2m1_bounds_for(scale);
  const float step[8] = {0.0f,            mul(0.5f, scale), scale,            mul(1.5f, scale),
                         mul(2.0f, scale), mul(3.0f, scale), mul(4.0f, scale), mul(6.0f, scale)};
  float t[kNvfp4Block];
MIXQ_UNROLL
  for (int i = 0; i < kNvfp4Block; ++i) {
    const float a = fabsf(w[i]);
    float d = step[0];
    d = a > b.cut[0] ? step[1] : d;
    d = a >= b.cut[1] ? step[2] : d;
    d = a > b.cut[2] ? step[3] : d;
    d = a >= b.cut[3] ? step[4] : d;
    d = a > b.cut[4] ? step[5] : d;
    d = a >= b.cut[5] ? step[6] : d;
    d = a > b.cut[6] ? step[7] : d;
    const float e = sub(a, d);
    t[i] = mul(e, e);
  }
MIXQ_UNROLL
  for (int width = kNvfp4Block / 2; width >= 1; width /= 2)
MIXQ_UNROLL
    for (int i = 0; i < width; ++i) t[i] = add(t[i], t[i + width]);
  return t[0];
}

// nvfp4_code.
MIXQ_HDI uint32_t nvfp4_code(float w, float scale) {
  const float a = div(abs_as_reference(w), scale);
  return (w < 0.0f ? 0x8u : 0x0u) | e2m1_magnitude_code(a);
}

// nvfp4_code from ready bounds for its scale.
MIXQ_HDI uint32_t nvfp4_code_by_bounds(float w, const e2m1_bounds& b) {
  return (w < 0.0f ? 0x8u : 0x0u) | e2m1_code_by_bounds(fabsf(w), b);
}

// The squared error of the block's largest value a alone under code `bits` (the sweep's pruning test).
MIXQ_HDI float nvfp4_amax_sq_error(float a, uint32_t bits, float ws2) {
  const float scale = mul(e4m3_decode(bits), ws2);
  const float e = sub(a, mul(e2m1_round_magnitude(div(a, scale)), scale));
  return mul(e, e);
}

// choose_by_amax_multipliers: candidates in list order, strict "<"; the first is taken even if its error is inf.
MIXQ_HDI uint32_t choose_by_multipliers(const float (&x)[kNvfp4Block], float block_amax, float global_amax,
                                        float normalizer, float ws2, const float* multipliers, int n_multipliers) {
  uint32_t best_bits = 0;
  float best = INFINITY;
  for (int k = 0; k < n_multipliers; ++k) {
    const uint32_t bits = e4m3_encode(nvfp4_block_scale(mul(block_amax, multipliers[k]), global_amax, normalizer));
    // Cannot be taken (see choose_by_sweep): the best's code again, or worse on the largest value alone.
    if (best_bits != 0 && (bits == best_bits || nvfp4_amax_sq_error(block_amax, bits, ws2) > best)) continue;
    const float err = nvfp4_sq_error(x, mul(e4m3_decode(bits), ws2));
    if (err < best || best_bits == 0) best = err, best_bits = bits;
  }
  return best_bits;
}

// choose_by_fp8_sweep (codes 1..126 ascending, strict "<" from +inf), pruned as kernels/cpu does it
// without changing the answer: a code whose error on the block's largest value a alone exceeds the
// best full error cannot win (a float sum of non-negative terms is >= each of them). Seeded with the
// max-rule code; among equal errors (inf included) the smallest code is kept, which is what the
// reference's ascending scan returns (it takes code 1 first, then strictly better ones).
// Two runs of codes are pruned wholesale (scales grow with the code): those whose scale s has
// fl(6s) <= a and (a - fl(6s))^2 > best (a rounds to 6; the error only grows as s shrinks: a prefix),
// and, when a^2 > best, those with fl(a/s) <= 0.25 (a rounds to 0, error a^2: a suffix). Binary
// searches find both ends; the pruning test runs in between.
MIXQ_HDI uint32_t choose_by_sweep(const float (&x)[kNvfp4Block], float block_amax, float global_amax, float normalizer,
                                  float ws2) {
  const float a = block_amax;
  uint32_t best_bits = e4m3_encode(nvfp4_block_scale(a, global_amax, normalizer));
  float best = nvfp4_sq_error(x, mul(e4m3_decode(best_bits), ws2));
  auto saturated_beyond_best = [&](uint32_t bits) {
    const float d = mul(6.0f, mul(e4m3_decode(bits), ws2));
    const float e = sub(a, d);
    return d <= a && mul(e, e) > best;
  };
  auto rounds_to_zero = [&](uint32_t bits) { return div(a, mul(e4m3_decode(bits), ws2)) <= 0.25f; };
  uint32_t lo = 1, hi = 0x7fu;  // codes [lo, hi) are scanned
  if (saturated_beyond_best(1)) {  // the last code of the prefix: largest k with the property
    uint32_t in = 1, out = 0x7fu;
    while (out - in > 1) {
      const uint32_t mid = (in + out) / 2;
      (saturated_beyond_best(mid) ? in : out) = mid;
    }
    lo = in + 1;
  }
  if (mul(a, a) > best && rounds_to_zero(0x7eu)) {  // the first code of the suffix
    uint32_t out = lo - 1, in = 0x7eu;
    while (in - out > 1) {
      const uint32_t mid = (in + out) / 2;
      (rounds_to_zero(mid) ? in : out) = mid;
    }
    hi = in;
  }
  for (uint32_t bits = lo; bits < hi; ++bits) {
    if (nvfp4_amax_sq_error(a, bits, ws2) > best) continue;
    const float err = nvfp4_sq_error(x, mul(e4m3_decode(bits), ws2));
    if (err < best || (err == best && bits < best_bits)) best = err, best_bits = bits;
  }
  return best_bits;
}

// ---- FP8 -----------------------------------------------------------------------------------------

// fp8_scale_for_amax.
MIXQ_HDI float fp8_scale(float amax) {
  if (!(amax > 0x1p-24f)) return 1.0f;
  return div(amax, kE4M3Max);
}

// fp8_code.
MIXQ_HDI uint32_t fp8_code(float w, float scale) { return e4m3_encode(div(w, scale)); }

// One term of fp8_row_sq_error: (double(w) - double(e4m3(code)·scale))², the reference's formula.
MIXQ_HDI double fp8_sq_term(float w, float scale) {
  const float q = mul(e4m3_decode(fp8_code(w, scale)), scale);
  const double d = sub(double(w), double(q));
  return mul(d, d);
}
// The same term, inv = fp8_inverse(scale). Clear of midpoints (fp8_round_with_inverse) the dequantized
// q is the rounded quotient's float times the scale, within a factor 17/16 of w, so w - q is exact in
// float (Sterbenz) and equals the reference's double difference; its square is exact in double.
MIXQ_HDI double fp8_sq_term_fast(float w, float scale, float inv) {
  const fp8_quotient r = fp8_round_with_inverse(w, inv);
  if (r.rounded == 0) return fp8_sq_term(w, scale);
  const double d = double(sub(w, mul(float_of(r.sign | r.rounded), scale)));
  return mul(d, d);
}

// fp8_row_sq_error adds the terms of columns j, j+8, j+16, ... into lane j (in column order), then
// the lanes in lane order from 0.
inline constexpr int kFp8Lanes = 8;
MIXQ_HDI double fp8_lanes_total(const double (&lane)[kFp8Lanes]) {
  double err = 0.0;
  MIXQ_UNROLL
  for (int j = 0; j < kFp8Lanes; ++j) err = add(err, lane[j]);
  return err;
}

// ---- the mse_four_over_six tensor choice -----------------------------------------------------------

// The reference keeps the narrow (256) normalizer iff narrow_sum < standard_sum, each the n per-block
// float errors (>= 0) added in block order in double from 0. Given sums pn, ps of the same terms in
// any order: every summation order of n non-negative terms lies within a relative
// γ(n-1) = (n-1)·2^-53 / (1 - (n-1)·2^-53) of the exact sum, the block-order sum included, so the
// ordered sums lie within a factor (1+γ)/(1-γ) <= 1 + 4·n·2^-53 of pn and ps (for n <= 2^50), and when
// the intervals do not meet the ordered comparison is known. 2^-40 covers the rounding of k and of the
// products below. Returns 1 (narrow wins), 0 (standard stays) or -1 (too close: sum in order).
inline int settle_by_bounds(double pn, double ps, int64_t n) {
  if (!(pn >= 0.0) || !(ps >= 0.0)) return -1;
  if (pn == 0.0 && ps == 0.0) return 0;  // every term is 0: both ordered sums are 0 too, not "<"
  const double k = 1.0 + 4.0 * double(n) * 0x1p-53 + 0x1p-40;
  if (pn * k < ps / k) return 1;
  if (pn / k > ps * k) return 0;
  return -1;
}

}  // namespace mixq::cuda::dm
