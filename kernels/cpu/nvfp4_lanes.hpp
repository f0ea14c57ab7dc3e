// NVFP4 arithmetic on 16 lanes at once, with GCC vector extensions (one zmm with AVX-512, two ymm
// with AVX2, four xmm otherwise; no intrinsics). Each function is the lane-wise twin of a scalar
// one in formats/ (named in its comment) and gives the same bits: tests/kernels checks the fast
// paths built from them against the references.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <utility>

#include "formats/nvfp4.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

// Passing 64-byte vectors by value would differ between the AVX-512 and baseline ABIs; these
// functions are inline helpers of one translation unit, never called across that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mixq::cpu::lanes {

typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint8_t v8b __attribute__((vector_size(8)));
typedef uint8_t v16b __attribute__((vector_size(16)));
typedef double v8d __attribute__((vector_size(64)));
typedef double v16d __attribute__((vector_size(128)));
typedef uint64_t v8q __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef int32_t v16i __attribute__((vector_size(64)));

MIXQ_ALWAYS_INLINE v16u load_bits(const float* p) {
  v16u v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
MIXQ_ALWAYS_INLINE v16f abs_of(v16u bits) { return (v16f)(bits & 0x7fffffffu); }
// The float bits of 16 BF16 values (a BF16 is the upper half of a float).
MIXQ_ALWAYS_INLINE v16u widen_bf16(const uint16_t* p) {
  v16h h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, v16u) << 16;
}
MIXQ_ALWAYS_INLINE v16f broadcast(float x) { return v16f{} + x; }

// Bit j in lane j (masks of lanes as bits, by an or-reduction).
inline constexpr v16u kLaneBit = {1u << 0, 1u << 1, 1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
                                  1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};

// Comparisons without compare instructions: GCC lowers a compare or select of 64-byte vectors lane
// by lane, with a branch per lane, for targets without 64-byte vectors (AVX2, baseline), while
// shifts and bitwise operations split into halves cleanly. below(a, b): all ones where a < b, for
// a, b < 2^31 (such as the bits of non-negative floats, which order as their values).
MIXQ_ALWAYS_INLINE v16u below(v16u a, v16u b) { return (v16u)((v16i)(a - b) >> 31); }
MIXQ_ALWAYS_INLINE v16u below(v16u a, uint32_t b) { return (v16u)((v16i)(a - b) >> 31); }
MIXQ_ALWAYS_INLINE v16u above(v16u a, uint32_t b) { return (v16u)((v16i)(b - a) >> 31); }
// All ones where a < b as unsigned integers, for any a and b <= 2^31 (such as codes that may have
// wrapped below 0).
MIXQ_ALWAYS_INLINE v16u below_unsigned(v16u a, uint32_t b) { return below(a & 0x7fffffffu, b) & ~(v16u)((v16i)a >> 31); }
MIXQ_ALWAYS_INLINE v16u select(v16u mask, v16u a, v16u b) { return (a & mask) | (b & ~mask); }

// |x| and the larger of two non-negative doubles (inf included, NaN not) by their bits.
MIXQ_ALWAYS_INLINE v8d abs_of(v8d x) { return (v8d)((v8q)x & 0x7fffffffffffffffull); }
MIXQ_ALWAYS_INLINE v8d max_nonnegative(v8d a, v8d b) {
  const v8q a_below = v8q{} - (((v8q)a - (v8q)b) >> 63);
  return (v8d)(((v8q)b & a_below) | ((v8q)a & ~a_below));
}

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
// Lane-wise operations for the reductions (functors rather than lambdas: a lambda is a function of
// its own, compiled for the baseline target, if the compiler does not inline it).
struct max_op {
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return a > b ? a : b; }
};
struct min_op {
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return a < b ? a : b; }
};
struct sum_op {
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return a + b; }
};
struct magnitude_max_op {  // max_op for non-negative, non-NaN lanes (their bits order as they do)
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return (v16f)select(below((v16u)a, (v16u)b), (v16u)b, (v16u)a); }
};
struct bits_max_op {  // the max of the bit patterns as unsigned integers
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return (v16f)((v16u)a > (v16u)b ? (v16u)a : (v16u)b); }
};
struct or_op {
  MIXQ_ALWAYS_INLINE v16f operator()(v16f a, v16f b) const { return (v16f)((v16u)a | (v16u)b); }
};
MIXQ_ALWAYS_INLINE float max16(v16f v) { return reduce16(v, max_op{}); }
MIXQ_ALWAYS_INLINE float min16(v16f v) { return reduce16(v, min_op{}); }
MIXQ_ALWAYS_INLINE float sum16(v16f v) { return reduce16(v, sum_op{}); }
// The 16 lanes or'ed together.
MIXQ_ALWAYS_INLINE uint32_t reduce16_bits(v16u m) { return std::bit_cast<uint32_t>(reduce16((v16f)m, or_op{})); }

// reduce16 of 16 vectors at once: lane j of the result is reduce16(v[j], op), combined in the same
// order (lanes i and i+8 first, ...), but as a transpose: 15 ops and 30 in-lane shuffles in all
// instead of 16 × (4 ops + 4 shuffles). In steps: halves_of_pair does the first level;
// reduce_halves the rest, on vectors whose lanes 0-7 and 8-15 are 8 partial results of two
// vectors each (v[2p] and v[2p+1] in m[p]).
template <class Op>
MIXQ_ALWAYS_INLINE v16f halves_of_pair(v16f a, v16f b, Op op) {
  return op(__builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
            __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
}
// The last three levels, with the result's lanes in the order v[0], v[4], v[8], v[12], v[2], v[6],
// v[10], v[14], v[1], v[5], ... (to_vector_order puts them back).
template <class Op>
MIXQ_ALWAYS_INLINE v16f reduce_halves_unordered(const v16f* m, Op op) {
  v16f m2[4], m3[2];
  for (int p = 0; p < 4; ++p) {  // 4-lane groups: v[4p], v[4p+2], v[4p+1], v[4p+3]
    const v16f a = m[2 * p], b = m[2 * p + 1];
    m2[p] = op(__builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
               __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31));
  }
  for (int p = 0; p < 2; ++p) {  // 2-lane groups: v[8p], v[8p+4], v[8p+2], v[8p+6], v[8p+1], ...
    const v16f a = m2[2 * p], b = m2[2 * p + 1];
    m3[p] = op(__builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
               __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31));
  }
  const v16f a = m3[0], b = m3[1];
  return op(__builtin_shufflevector(a, b, 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30),
            __builtin_shufflevector(a, b, 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31));
}
MIXQ_ALWAYS_INLINE v16f to_vector_order(v16f r) {
  return __builtin_shufflevector(r, r, 0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15);
}
template <class Op>
MIXQ_ALWAYS_INLINE v16f reduce_halves(const v16f* m, Op op) {
  return to_vector_order(reduce_halves_unordered(m, op));
}
template <class Op>
MIXQ_ALWAYS_INLINE v16f reduce16x16(const v16f* v, Op op) {
  v16f m[8];
  for (int p = 0; p < 8; ++p) m[p] = halves_of_pair(v[2 * p], v[2 * p + 1], op);
  return reduce_halves(m, op);
}

// nvfp4_clamp_block_scale (with the all-zero substitution done by the caller; s >= 0, not NaN).
MIXQ_ALWAYS_INLINE v16f clamp_block_scale(v16f s) {
  const v16u u = (v16u)s;
  const uint32_t least = std::bit_cast<uint32_t>(kNvfp4MinBlockScale), most = std::bit_cast<uint32_t>(448.0f);
  return (v16f)select(below(u, least), v16u{} + least, select(above(u, most), v16u{} + most, u));
}
// The all-zero block's substitute scale 1 (s >= 0).
MIXQ_ALWAYS_INLINE v16f one_if_zero(v16f s) {
  const v16u u = (v16u)s;
  return (v16f)select(below(u, 1u), v16u{} + 0x3f800000u, u);
}
// nvfp4_max_block_scale_f32, before and after its clamp.
MIXQ_ALWAYS_INLINE v16f unclamped_max_block_scale(v16f block_amax, float ws2) {
  return one_if_zero(block_amax / (6.0f * ws2));
}
MIXQ_ALWAYS_INLINE v16f max_block_scale(v16f block_amax, float ws2) {
  return clamp_block_scale(unclamped_max_block_scale(block_amax, ws2));
}
// nvfp4_block_scale_f32 (g > 0), before and after its clamp.
MIXQ_ALWAYS_INLINE v16f unclamped_static_block_scale(v16f block_amax, float g, float normalizer) {
  return one_if_zero(block_amax / 6.0f) * normalizer / (g / 6.0f);
}
MIXQ_ALWAYS_INLINE v16f static_block_scale(v16f block_amax, float g, float normalizer) {
  return clamp_block_scale(unclamped_static_block_scale(block_amax, g, normalizer));
}
// e4m3_encode for non-negative lanes (+inf included, NaN not).
MIXQ_ALWAYS_INLINE v16u e4m3_encode(v16f s) {
  const v16u u = (v16u)s;
  const v16u subnormal = (v16u)(s * 512.0f + 8388608.0f) - 0x4b000000u;
  const v16u r = u + 0x7ffffu + ((u >> 20) & 1u);
  const v16u normal = ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)) & 0x7fu;
  return select(below(u, 0x43e00000u), select(below(u, 0x3c800000u), subnormal, normal), v16u{} + 0x7eu);
}
// e4m3_decode for codes 0..0x7e.
MIXQ_ALWAYS_INLINE v16f e4m3_decode(v16u code) {
  const v16u e = code >> 3, m = code & 7u;
  return (v16f)select(below(code, 8u), (v16u)(__builtin_convertvector(m, v16f) * 0x1p-9f), ((e + 120u) << 23) | (m << 20));
}
// fp8_code of 16 lanes (float bits) under scale: e4m3_encode(x / scale), NaN included.
MIXQ_ALWAYS_INLINE v16u fp8_codes(v16u bits, float scale) {
  const v16u q = (v16u)((v16f)bits / scale);
  const v16u u = q & 0x7fffffffu;
  return select(above(u, 0x7f800000u), v16u{} + 0x7fu, e4m3_encode((v16f)u)) | ((q >> 24) & 0x80u);
}
// e4m3_decode(e4m3_encode(s)) without the code (s >= 0, +inf included, NaN not): below 2^-6 the
// multiples of 2^-9 (s + 2^14 rounds to one), above it the floats RNE-rounded to 3 mantissa bits
// (the encoder's carry into bit 20, then its low bits cleared), saturating at 448.
MIXQ_ALWAYS_INLINE v16f e4m3_round(v16f s) {
  const v16u u = (v16u)s;
  const v16u subnormal = (v16u)((s + 16384.0f) - 16384.0f);
  const v16u normal = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
  return (v16f)select(below(u, 0x3c800000u), subnormal, select(below(normal, 0x43e00000u), normal, v16u{} + 0x43e00000u));
}
// fp8_code then its value, for 16 finite lanes (float bits) under scale; the sign kept.
MIXQ_ALWAYS_INLINE v16f fp8_dequantized(v16u bits, float scale) {
  return (v16f)((v16u)(e4m3_round(abs_of(bits) / scale) * scale) | (bits & 0x80000000u));  // |x / scale|: sign restored
}

// 16 floats in double (exact): lanes 0-7 into lo, 8-15 into hi. One conversion of all 16 (two
// full-width instructions with AVX-512; converting each half on its own splits them further).
MIXQ_ALWAYS_INLINE void widen(v16f x, v8d* lo, v8d* hi) {
  const v16d d = __builtin_convertvector(x, v16d);
  std::memcpy(lo, &d, sizeof *lo);
  std::memcpy(hi, reinterpret_cast<const char*>(&d) + sizeof *lo, sizeof *hi);
}

// x - fp8 value of x in double (exact), lanes 0-7 into lo, 8-15 into hi.
MIXQ_ALWAYS_INLINE void fp8_differences(v16f x, v16f deq, v8d* lo, v8d* hi) {
  v8d x_lo, x_hi, d_lo, d_hi;
  widen(x, &x_lo, &x_hi);
  widen(deq, &d_lo, &d_hi);
  *lo = x_lo - d_lo;
  *hi = x_hi - d_hi;
}

MIXQ_ALWAYS_INLINE double fp8_scalar_difference(float x, float scale) {
  return double(x) - double(mixq::e4m3_decode(mixq::e4m3_encode(x / scale)) * scale);
}

// Sums of eight double lanes (lane j of every v8d added into lane j; total: lanes 0-7 in order).
// Below AVX-512 they are held as two 32-byte halves: GCC keeps a 64-byte vector variable in memory
// where the target has no 64-byte registers, a store and narrower reloads (a forwarding stall) per
// update.
template <bool kHalves>
struct lane_sums8_as {
  v8d sum = {};
  MIXQ_ALWAYS_INLINE void add(v8d x) { sum += x; }
  MIXQ_ALWAYS_INLINE double lane(int j) const { return sum[j]; }
  MIXQ_ALWAYS_INLINE double total() const {
    double t = 0.0;
    for (int j = 0; j < 8; ++j) t += lane(j);
    return t;
  }
};
template <>
struct lane_sums8_as<true> {
  typedef double v4d __attribute__((vector_size(32)));
  v4d lo = {}, hi = {};
  MIXQ_ALWAYS_INLINE void add(v8d x) {
    lo += __builtin_shufflevector(x, x, 0, 1, 2, 3);
    hi += __builtin_shufflevector(x, x, 4, 5, 6, 7);
  }
  MIXQ_ALWAYS_INLINE double lane(int j) const { return j < 4 ? lo[j] : hi[j - 4]; }
  MIXQ_ALWAYS_INLINE double total() const {
    double t = 0.0;
    for (int j = 0; j < 8; ++j) t += lane(j);
    return t;
  }
};
template <simd_level L>
using lane_sums8 = lane_sums8_as<L != simd_level::avx512>;

// Σ weight · (x − fp8 value)² over n values (weight null: 1) in 8 double lanes (lane j takes
// elements j, j+8, ...), lanes added in order at the end. Unweighted, the reference's row sum.
template <simd_level L>
MIXQ_ALWAYS_INLINE double fp8_sq_error_lanes(const float* x, const double* weight, int64_t n, float scale) {
  lane_sums8<L> acc;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const v16u bits = load_bits(x + i);
    const v16f deq = fp8_dequantized(bits, scale);
    v8d lo, hi;
    fp8_differences((v16f)bits, deq, &lo, &hi);
    if (weight) {
      v8d w_lo, w_hi;
      std::memcpy(&w_lo, weight + i, sizeof w_lo);
      std::memcpy(&w_hi, weight + i + 8, sizeof w_hi);
      acc.add(w_lo * (lo * lo));
      acc.add(w_hi * (hi * hi));
    } else {
      acc.add(lo * lo);
      acc.add(hi * hi);
    }
  }
  double lane[8];
  for (int j = 0; j < 8; ++j) lane[j] = acc.lane(j);
  for (int j = 0; i + j < n; ++j) {  // the tail, into the lanes the reference uses
    const double d = fp8_scalar_difference(x[i + j], scale);
    lane[j % 8] += weight ? weight[i + j] * (d * d) : d * d;
  }
  double err = 0.0;
  for (double l : lane) err += l;
  return err;
}
template <simd_level L>
MIXQ_ALWAYS_INLINE double fp8_row_sq_error(const float* row, int64_t n, float scale) {
  return fp8_sq_error_lanes<L>(row, nullptr, n, scale);
}

// e2m1_code_by_bits: RNE(2q) below 1, one mantissa bit above, saturating at 7 (q >= 0 finite).
MIXQ_ALWAYS_INLINE v16u e2m1_codes(v16f q) {
  const v16u small = (v16u)(q * 2.0f + 8388608.0f) - 0x4b000000u;
  const v16u u = (v16u)q;
  const v16u large = ((u + 0x1fffffu + ((u >> 22) & 1u)) >> 22) - 252u;  // (< 2^31 from q >= 1)
  const v16u code = select(below(u, 0x3f800000u), small, large);
  return select(below(code, 7u), code, v16u{} + 7u);
}
// e2m1_magnitude_of: a table lookup held in one register (a lane permute: one AVX-512 instruction).
MIXQ_ALWAYS_INLINE v16f e2m1_magnitudes(v16u c) {
  const v16f table = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  return __builtin_shuffle(table, c);
}
// The same from the code's bits, for targets without a 16-lane permute: codes 2-7 are
// 2^((c >> 1) - 1) · (1 + (c & 1) / 2), codes 0 and 1 are c / 2 (bits c · 0x3f000000).
MIXQ_ALWAYS_INLINE v16f e2m1_magnitudes_by_bits(v16u c) {
  return (v16f)select(below(c, 2u), c * 0x3f000000u, (((c >> 1) + 126u) << 23) | ((c & 1u) << 22));
}
// e2m1_code_by_bits by table: every rounding threshold (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) is a
// multiple of 2^21 in the float's bit pattern u, so a key near u / 2^21 (clamped to [496, 527]:
// q in [2^-4, 32)) decides the code, by one 32-entry lookup: a single instruction (vpermt2d) with
// AVX-512 only — other targets use e2m1_codes.
// The code key is ceil((u + bit 22 of u) / 2^21): ceil puts a threshold t = k·2^21 in the interval
// below it, as q > t wants (0.25, 1.25, 2.5, 5: mantissa bit 22 clear), and the +1 where bit 22 is
// set moves t into the interval above, as q >= t wants (0.75, 1.75, 3.5: bit 22 set); a value
// next to a threshold keeps its side either way. Thresholds' keys (t / 2^21): 0.25 -> 500,
// 0.75 -> 506, 1.25 -> 509, 1.75 -> 511, 2.5 -> 513, 3.5 -> 515, 5 -> 517; q beyond t <=> key > that.
constexpr uint32_t e2m1_code_of_key(uint32_t k) {
  return (k > 500) + (k > 506) + (k > 509) + (k > 511) + (k > 513) + (k > 515) + (k > 517);
}
// The floor key floor(u / 2^21) of the nearest-level estimate (ties either way).
constexpr float e2m1_magnitude_of_floor_key(uint32_t k) {
  constexpr float mags[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return mags[(k >= 500) + (k >= 506) + (k >= 509) + (k >= 511) + (k >= 513) + (k >= 515) + (k >= 517)];
}
// Tables indexed by the key's low 5 bits: slots 0-15 hold keys 512-527, slots 16-31 keys 496-511.
template <class V, class F, size_t... I>
constexpr V key_table(F f, uint32_t first, std::index_sequence<I...>) {
  return V{f(first + uint32_t(I))...};
}
inline constexpr v16u kE2M1CodeLo = key_table<v16u>(e2m1_code_of_key, 512, std::make_index_sequence<16>());
inline constexpr v16u kE2M1CodeHi = key_table<v16u>(e2m1_code_of_key, 496, std::make_index_sequence<16>());
inline constexpr v16f kE2M1MagLo = key_table<v16f>(e2m1_magnitude_of_floor_key, 512, std::make_index_sequence<16>());
inline constexpr v16f kE2M1MagHi = key_table<v16f>(e2m1_magnitude_of_floor_key, 496, std::make_index_sequence<16>());
// By the code key: the codes shifted to the high nibble, and their magnitudes.
constexpr uint32_t e2m1_high_code_of_key(uint32_t k) { return e2m1_code_of_key(k) << 4; }
constexpr float e2m1_magnitude_of_key(uint32_t k) {
  constexpr float mags[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return mags[e2m1_code_of_key(k)];
}
inline constexpr v16u kE2M1HighCodeLo = key_table<v16u>(e2m1_high_code_of_key, 512, std::make_index_sequence<16>());
inline constexpr v16u kE2M1HighCodeHi = key_table<v16u>(e2m1_high_code_of_key, 496, std::make_index_sequence<16>());
inline constexpr v16f kE2M1KeyMagLo = key_table<v16f>(e2m1_magnitude_of_key, 512, std::make_index_sequence<16>());
inline constexpr v16f kE2M1KeyMagHi = key_table<v16f>(e2m1_magnitude_of_key, 496, std::make_index_sequence<16>());
MIXQ_ALWAYS_INLINE v16u e2m1_codes_by_key(v16f q) {
  const v16u u = (v16u)q;
  v16u key = (u + ((u & 0x400000u) != 0u ? 0x200000u : 0x1fffffu)) >> 21;
  key = key > 496u ? key : v16u{} + 496u;
  key = key < 527u ? key : v16u{} + 527u;
  return __builtin_shuffle(kE2M1CodeLo, kE2M1CodeHi, key);
}
// The E2M1 magnitude nearest to q in [0, 32), ties either way (the floor key puts a threshold in
// the interval above it): for error estimates, not for codes.
MIXQ_ALWAYS_INLINE v16f e2m1_nearest_by_key(v16f q) {
  v16u key = (v16u)q >> 21;
  key = key > 496u ? key : v16u{} + 496u;
  return __builtin_shuffle(kE2M1MagLo, kE2M1MagHi, key);
}
// The same by rounding, for targets without a two-register permute: below 1 the levels are the
// multiples of 1/2 (q + 2^22 rounds to one), from 1 to 6 the floats with one mantissa bit (the
// mantissa rounded half up to one bit; 8 and above is past the last level, 6).
MIXQ_ALWAYS_INLINE v16f e2m1_nearest_by_rounding(v16f q) {
  const v16u u = (v16u)q;
  const v16u small = (v16u)((q + 0x1p22f) - 0x1p22f);
  const v16u large = (u + 0x200000u) & 0xffc00000u;
  const uint32_t six = std::bit_cast<uint32_t>(6.0f);
  return (v16f)select(below(u, 0x3f800000u), small, select(above(large, six), v16u{} + six, large));
}

// The sign bit of nvfp4_code: set for x < 0 (not for -0): the sign, where the magnitude is not 0.
MIXQ_ALWAYS_INLINE v16u sign_bits(v16u x_bits) {
  const v16u nonzero = ((x_bits & 0x7fffffffu) + 0x7fffffffu) >> 31;
  return ((x_bits >> 31) & nonzero) << 3;
}

// Two codes per byte, even element in the low nibble: as 64-bit lanes, each pair is one shift and
// one or away from its byte.
MIXQ_ALWAYS_INLINE uint64_t packed_codes(v16u code) {
  const v8q pairs = (v8q)code;
  const v8b bytes = __builtin_convertvector(pairs | (pairs >> 28), v8b);
  uint64_t out;
  std::memcpy(&out, &bytes, sizeof out);
  return out;
}
// The same through 16-bit pairs (codes narrowed to bytes, each byte pair one 16-bit lane c0 | c1 << 8
// folded to c0 | c1 << 4): GCC narrows 64-bit lanes one by one without AVX-512, and this form is
// the faster one there (the slower one with AVX-512).
MIXQ_ALWAYS_INLINE uint64_t packed_codes_by_pairs16(v16u code) {
  typedef uint16_t v8h __attribute__((vector_size(16)));
  const v8h pairs = (v8h)__builtin_convertvector(__builtin_convertvector(code, v16h), v16b);
  const v8b bytes = __builtin_convertvector(pairs | (pairs >> 4), v8b);
  uint64_t out;
  std::memcpy(&out, &bytes, sizeof out);
  return out;
}
// Packed codes stored at dst, in the form that is fast at level L.
template <simd_level L = simd_level::avx512>
MIXQ_ALWAYS_INLINE void store_packed(v16u code, uint8_t* dst) {
  const uint64_t bytes = L == simd_level::avx512 ? packed_codes(code) : packed_codes_by_pairs16(code);
  std::memcpy(dst, &bytes, sizeof bytes);
}
// (Through 16-bit lanes: GCC 12 narrows 32 bits to 8 in one step lane by lane, even with AVX-512.)
MIXQ_ALWAYS_INLINE void store_bytes(v16u v, uint8_t* dst) {
  const v16b b = __builtin_convertvector(__builtin_convertvector(v, v16h), v16b);
  std::memcpy(dst, &b, sizeof b);
}

}  // namespace mixq::cpu::lanes
