#include "kernels/cpu/fp8_mse_histogram.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

#if MIXQ_HAVE_SIMD_TARGETS
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#include "kernels/cpu/e4m3_avx2.hpp"
#pragma GCC pop_options
#endif

namespace mixq::cpu {
namespace {

constexpr uint32_t bins = 0x8000;

// Counts one thread's values by magnitude key; two interleaved tables so that runs of equal values
// (zeros, padding) do not chain every increment on the one before. F32 values count by their top
// 16 bits (their BF16 value), the bits below ORed into `rest`: zero when every value is a BF16 one.
MIXQ_ALWAYS_INLINE uint32_t key_of(uint16_t v, uint32_t&) { return v & 0x7fffu; }
MIXQ_ALWAYS_INLINE uint32_t key_of(uint32_t v, uint32_t& rest) {
  rest |= v & 0xffffu;
  return (v >> 16) & 0x7fffu;
}

template <class T>
uint32_t count_values(const T* p, int64_t n, uint32_t* h0, uint32_t* h1) {
  uint32_t rest = 0;
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    ++h0[key_of(p[i], rest)];
    ++h1[key_of(p[i + 1], rest)];
  }
  if (i < n) ++h0[key_of(p[i], rest)];
  return rest;
}

#if MIXQ_HAVE_SIMD_TARGETS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
// runs_sq_errors_impl's sums in 8-lane registers, bit for bit: each 16 values' weighted squares
// (values 0-7 and 8-15 as the generic form's lo and hi) added per lane as it adds them, the FP8
// value by the multiply-add rounding (e4m3_avx2.hpp) instead of a chain of selects.
void runs_sq_errors(const float* values, const double* counts, int64_t n, const float* scales,
                    const fp8_error_estimate::edge_range* ranges, int64_t n_scales, double* out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t c = 0; c < n_scales; ++c) {
    const int64_t low_end = ranges[c].low_end, high_begin = std::max(ranges[c].high_begin, low_end);
    const __m256 scale = _mm256_set1_ps(scales[c]);
    const __m256i gap = _mm256_set1_epi32(int(uint32_t(high_begin - low_end)));
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();  // lanes 0-3, 4-7
    for (int64_t i = 0; i < n; i += 16) {
      if (i >= low_end && i + 16 <= high_begin) {  // a vector within the gap between the runs
        i = high_begin / 16 * 16 - 16;
        continue;
      }
      __m256d d[2][2];  // [values 0-7, 8-15][lanes 0-3, 4-7]
      for (int h = 0; h < 2; ++h) {
        // values in the gap [low_end, high_begin) read as 0 (no error): index − low_end below the gap's width
        const __m256i index = _mm256_add_epi32(lane, _mm256_set1_epi32(int(uint32_t(i + 8 * h - low_end))));
        const __m256i outside = _mm256_cmpeq_epi32(_mm256_max_epu32(index, gap), index);
        const __m256 x = _mm256_and_ps(_mm256_loadu_ps(values + i + 8 * h), _mm256_castsi256_ps(outside));
        e4m3_avx2::differences_from_fp8(x, scale, d[h]);
      }
      for (int q = 0; q < 2; ++q) {
        const __m256d a = _mm256_mul_pd(_mm256_loadu_pd(counts + i + 4 * q), _mm256_mul_pd(d[0][q], d[0][q]));
        const __m256d b = _mm256_mul_pd(_mm256_loadu_pd(counts + i + 8 + 4 * q), _mm256_mul_pd(d[1][q], d[1][q]));
        (q == 0 ? lo : hi) = _mm256_add_pd(q == 0 ? lo : hi, _mm256_add_pd(a, b));
      }
    }
    alignas(32) double sum[8];
    _mm256_store_pd(sum, lo);
    _mm256_store_pd(sum + 4, hi);
    double total = 0.0;
    for (double s : sum) total += s;
    out[c] = total;
  }
}

// Lane numbers of each 8-bit mask's set lanes, packed first, a byte each: the permute that
// left-packs a vector's selected lanes.
constexpr auto kPackedLanes = [] {
  std::array<uint64_t, 256> t{};
  for (uint32_t m = 0; m < 256; ++m)
    for (uint32_t i = 0, j = 0; i < 8; ++i)
      if (m >> i & 1u) t[m] |= uint64_t(i) << (8 * j++);
  return t;
}();

// take_binade_impl's outputs, 8 counts at a time: a mask of the non-zero ones and one permute
// left-packs their magnitudes and counts (stores run up to 8 lanes past the packed ones, within
// the n slots the caller provides: kept never passes k0). No branch on empty chunks (see the
// AVX-512 form).
size_t take_binade(uint32_t* table, size_t n, uint32_t top, int shift, double* dense, float* values, double* nonzero,
                   uint64_t* sum) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i zero = _mm256_setzero_si256();
  __m256i total = zero;  // 4 lanes of 64 bits
  size_t kept = 0;
  for (size_t k0 = 0; k0 < n; k0 += 8) {
    const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + k0));
    const uint32_t present = uint32_t(~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(t, zero)))) & 0xffu;
    const __m128i t_lo = _mm256_castsi256_si128(t), t_hi = _mm256_extracti128_si256(t, 1);
    _mm256_storeu_pd(dense + k0, _mm256_cvtepi32_pd(t_lo));
    _mm256_storeu_pd(dense + k0 + 4, _mm256_cvtepi32_pd(t_hi));
    total = _mm256_add_epi64(total, _mm256_add_epi64(_mm256_cvtepu32_epi64(t_lo), _mm256_cvtepu32_epi64(t_hi)));
    const __m256i pack = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(kPackedLanes[present])));
    const __m256i keys = _mm256_add_epi32(lane, _mm256_set1_epi32(int(k0)));
    const __m256i bits = _mm256_or_si256(_mm256_set1_epi32(int(top)), _mm256_sll_epi32(keys, _mm_cvtsi32_si128(shift)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + kept), _mm256_permutevar8x32_epi32(bits, pack));
    const __m256i counts = _mm256_permutevar8x32_epi32(t, pack);
    _mm256_storeu_pd(nonzero + kept, _mm256_cvtepi32_pd(_mm256_castsi256_si128(counts)));
    _mm256_storeu_pd(nonzero + kept + 4, _mm256_cvtepi32_pd(_mm256_extracti128_si256(counts, 1)));
    kept += size_t(std::popcount(present));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(table + k0), zero);
  }
  alignas(32) uint64_t lanes4[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes4), total);
  *sum = lanes4[0] + lanes4[1] + lanes4[2] + lanes4[3];
  return kept;
}
}  // namespace avx2
#pragma GCC pop_options
#endif

#if MIXQ_HAVE_SIMD_TARGETS
MIXQ_BEGIN_AVX512_REGION
namespace avx512 {
// take_binade_impl's outputs, 16 counts at a time: the non-zero ones' mask from one test, their
// magnitudes and counts left-packed by one compress each (stores run up to 16 lanes past the
// packed ones, within the n slots the caller provides: kept never passes k0). No branch on empty
// chunks: in the sparse edges below a row's core they come and go unpredictably.
size_t take_binade(uint32_t* table, size_t n, uint32_t top, int shift, double* dense, float* values, double* nonzero,
                   uint64_t* sum) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i zero = _mm512_setzero_si512(), top_bits = _mm512_set1_epi32(int(top));
  const __m128i by = _mm_cvtsi32_si128(shift);
  __m512i total = zero;  // 8 lanes of 64 bits
  size_t kept = 0;
  for (size_t k0 = 0; k0 < n; k0 += 16) {
    const __m512i t = _mm512_loadu_si512(table + k0);
    const __mmask16 present = _mm512_test_epi32_mask(t, t);
    const __m256i t_lo = _mm512_castsi512_si256(t), t_hi = _mm512_extracti64x4_epi64(t, 1);
    _mm512_storeu_pd(dense + k0, _mm512_cvtepu32_pd(t_lo));
    _mm512_storeu_pd(dense + k0 + 8, _mm512_cvtepu32_pd(t_hi));
    total = _mm512_add_epi64(total, _mm512_add_epi64(_mm512_cvtepu32_epi64(t_lo), _mm512_cvtepu32_epi64(t_hi)));
    const __m512i keys = _mm512_add_epi32(lane, _mm512_set1_epi32(int(k0)));
    const __m512i bits = _mm512_or_si512(top_bits, _mm512_sll_epi32(keys, by));
    _mm512_storeu_si512(values + kept, _mm512_maskz_compress_epi32(present, bits));
    const __m512i counts = _mm512_maskz_compress_epi32(present, t);
    _mm512_storeu_pd(nonzero + kept, _mm512_cvtepu32_pd(_mm512_castsi512_si256(counts)));
    _mm512_storeu_pd(nonzero + kept + 8, _mm512_cvtepu32_pd(_mm512_extracti64x4_epi64(counts, 1)));
    kept += size_t(std::popcount(uint32_t(present)));
    _mm512_storeu_si512(table + k0, zero);
  }
  *sum = uint64_t(_mm512_reduce_add_epi64(total));
  return kept;
}
// coarse_weighted_squares_impl's AVX-512 form (see there).
void coarse_weighted_squares(const float* const* differences, const float* weight, float* out) {
  __m512 acc[4][4];
  for (int i = 0; i < 4; ++i) {
    const __m512 w0 = _mm512_loadu_ps(weight + 16 * i), w1 = _mm512_loadu_ps(weight + 16 * (i + 4));
    for (int j = 0; j < 4; ++j) {
      const __m512 d0 = _mm512_loadu_ps(differences[j] + 16 * i), d1 = _mm512_loadu_ps(differences[j] + 16 * (i + 4));
      acc[j][i] = _mm512_fmadd_ps(w1, _mm512_mul_ps(d1, d1), _mm512_mul_ps(w0, _mm512_mul_ps(d0, d0)));
    }
  }
  for (int j = 0; j < 4; ++j)
    out[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]), _mm512_add_ps(acc[j][2], acc[j][3])));
}
}  // namespace avx512
MIXQ_END_AVX512_REGION
#endif

// For each scale c: Σ count · err² over values [0, low_end) and [high_begin, n), n a multiple of 16
// (zero counts past the values).
template <simd_level L>
MIXQ_ALWAYS_INLINE void runs_sq_errors_impl(const float* values, const double* counts, int64_t n, const float* scales,
                                            const fp8_error_estimate::edge_range* ranges, int64_t n_scales, double* out) {
#if MIXQ_HAVE_SIMD_TARGETS
  if constexpr (L == simd_level::avx2) return avx2::runs_sq_errors(values, counts, n, scales, ranges, n_scales, out);
#endif
  const lanes::v16u lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t c = 0; c < n_scales; ++c) {
    const int64_t low_end = ranges[c].low_end, high_begin = std::max(ranges[c].high_begin, low_end);
    lanes::lane_sums8<L> acc;
    for (int64_t i = 0; i < n; i += 16) {
      if (i >= low_end && i + 16 <= high_begin) {  // a vector within the gap between the runs
        i = high_begin / 16 * 16 - 16;
        continue;
      }
      // Values in the gap [low_end, high_begin) read as 0 (no error): one unsigned compare.
      const lanes::v16u past_low_end = lane + uint32_t(i - low_end);
      const lanes::v16u bits =
          lanes::load_bits(values + i) & ~lanes::below_unsigned(past_low_end, uint32_t(high_begin - low_end));
      const lanes::v16f deq = lanes::fp8_dequantized(bits, scales[c]);
      lanes::v8d lo, hi;
      lanes::fp8_differences((lanes::v16f)bits, deq, &lo, &hi);
      lanes::v8d w_lo, w_hi;
      std::memcpy(&w_lo, counts + i, sizeof w_lo);
      std::memcpy(&w_hi, counts + i + 8, sizeof w_hi);
      acc.add(w_lo * (lo * lo) + w_hi * (hi * hi));
    }
    out[c] = acc.total();
  }
}
MIXQ_SIMD_KERNEL(void, runs_sq_errors, runs_sq_errors_impl,
                 (const float* values, const double* counts, int64_t n, const float* scales,
                  const fp8_error_estimate::edge_range* ranges, int64_t n_scales, double* out),
                 (values, counts, n, scales, ranges, n_scales, out))

// The FP8 error under scale of each magnitude x = 2^q · (1 + k / 2^m) of the reference binade, 16
// at a time (2^m: a multiple of 16), to each(k, x − fl(v · scale)). With 2^q / scale in (1, 2],
// every y = fl(x / scale) lies in [1, 4]: FP8 rounds it to 3 mantissa bits (RNE) without reaching
// subnormals or saturation, and its value v · scale is within 1/16 of x, so x − fl(v · scale) is
// exact in float (Sterbenz) and its square exact in double: the reference's term, bit for bit.
template <class Each>
MIXQ_ALWAYS_INLINE void for_reference_differences(int q, int mantissa_bits, float scale, Each each) {
  const lanes::v16u step = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const uint32_t top = uint32_t(q + 127) << 23;
  for (uint32_t k = 0; k < (1u << mantissa_bits); k += 16) {
    const lanes::v16f x = (lanes::v16f)(top | ((k + step) << (23 - mantissa_bits)));
    const lanes::v16u y = (lanes::v16u)(x / scale);
    const lanes::v16f v = (lanes::v16f)((y + 0x7ffffu + ((y >> 20) & 1u)) & 0xfff00000u);
    each(k, x - v * scale);  // (no contraction: -ffp-contract=off)
  }
}

// Their squares, to each(k, lanes 0-7, lanes 8-15).
template <class Each>
MIXQ_ALWAYS_INLINE void for_reference_errors(int q, int mantissa_bits, float scale, Each each) {
  for_reference_differences(q, mantissa_bits, scale, [&](uint32_t k, lanes::v16f d) {
    lanes::v8d lo, hi;
    lanes::widen(d, &lo, &hi);
    each(k, lo * lo, hi * hi);
  });
}

// Those errors, into errors.
MIXQ_CLONES void reference_errors(int q, int mantissa_bits, float scale, double* errors) {
  for_reference_errors(q, mantissa_bits, scale, [&](uint32_t k, lanes::v8d lo2, lanes::v8d hi2) {
    std::memcpy(errors + k, &lo2, sizeof lo2);
    std::memcpy(errors + k + 8, &hi2, sizeof hi2);
  });
}

// Σ weight · error over them.
template <simd_level L>
MIXQ_ALWAYS_INLINE double weighted_reference_errors_impl(int q, int mantissa_bits, float scale, const double* weight) {
  lanes::lane_sums8<L> acc;
  for_reference_errors(q, mantissa_bits, scale, [&](uint32_t k, lanes::v8d lo2, lanes::v8d hi2) {
    lanes::v8d w_lo, w_hi;
    std::memcpy(&w_lo, weight + k, sizeof w_lo);
    std::memcpy(&w_hi, weight + k + 8, sizeof w_hi);
    acc.add(w_lo * lo2 + w_hi * hi2);
  });
  return acc.total();
}
MIXQ_SIMD_KERNEL(double, weighted_reference_errors, weighted_reference_errors_impl,
                 (int q, int mantissa_bits, float scale, const double* weight), (q, mantissa_bits, scale, weight))

// The differences behind those errors, into out.
MIXQ_CLONES void reference_differences(int q, int mantissa_bits, float scale, float* out) {
  for_reference_differences(q, mantissa_bits, scale, [&](uint32_t k, lanes::v16f d) { std::memcpy(out + k, &d, sizeof d); });
}

// weighted_reference_errors from stored differences: the same terms summed in the same order.
template <simd_level L>
MIXQ_ALWAYS_INLINE double weighted_squares_impl(const float* differences, int mantissa_bits, const double* weight) {
  lanes::lane_sums8<L> acc;
  for (uint32_t k = 0; k < (1u << mantissa_bits); k += 16) {
    lanes::v16f d;
    std::memcpy(&d, differences + k, sizeof d);
    lanes::v8d lo, hi, w_lo, w_hi;
    lanes::widen(d, &lo, &hi);
    std::memcpy(&w_lo, weight + k, sizeof w_lo);
    std::memcpy(&w_hi, weight + k + 8, sizeof w_hi);
    acc.add(w_lo * (lo * lo) + w_hi * (hi * hi));
  }
  return acc.total();
}
MIXQ_SIMD_KERNEL(double, weighted_squares, weighted_squares_impl,
                 (const float* differences, int mantissa_bits, const double* weight), (differences, mantissa_bits, weight))

// Σ a · b (n: a multiple of 8).
template <simd_level L>
MIXQ_ALWAYS_INLINE double dot_impl(const double* a, const double* b, int64_t n) {
  lanes::lane_sums8<L> acc;
  for (int64_t i = 0; i < n; i += 8) {
    lanes::v8d x, y;
    std::memcpy(&x, a + i, sizeof x);
    std::memcpy(&y, b + i, sizeof y);
    acc.add(x * y);
  }
  return acc.total();
}
MIXQ_SIMD_KERNEL(double, dot, dot_impl, (const double* a, const double* b, int64_t n), (a, b, n))

// Σ weight · difference² over a binade's 128 differences in float, for each of four difference
// tables (out[j] from differences[j]). Each term is within 3 roundings of its exact value (the
// weight's and the difference's to float, the square's), and each level's sum within 8 more:
// - AVX-512: four 16-lane sums per table (sum i takes the vectors i and i + 4), added pairwise,
//   then their lanes by a 4-level tree;
// - otherwise: four 8-lane sums (sum i takes the 8 differences at k ≡ 8i mod 32, in order), added
//   pairwise, then their lanes pairwise.
// (Four tables at once: no sum waits on its own adds.)
template <simd_level L>
MIXQ_ALWAYS_INLINE void coarse_weighted_squares_impl(const float* const* differences, const float* weight, float* out) {
#if MIXQ_HAVE_SIMD_TARGETS
  if constexpr (L == simd_level::avx512) return avx512::coarse_weighted_squares(differences, weight, out);
#endif
  typedef float v8f __attribute__((vector_size(32)));
  v8f acc[4][4] = {};
  for (int k = 0; k < 128; k += 32)
    for (int i = 0; i < 4; ++i) {
      v8f w;
      std::memcpy(&w, weight + k + 8 * i, sizeof w);
      for (int j = 0; j < 4; ++j) {
        v8f d;
        std::memcpy(&d, differences[j] + k + 8 * i, sizeof d);
        acc[j][i] += w * (d * d);
      }
    }
  for (int j = 0; j < 4; ++j) {
    const v8f sum = (acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3]);
    out[j] = ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]));
  }
}
MIXQ_SIMD_KERNEL(void, coarse_weighted_squares, coarse_weighted_squares_impl,
                 (const float* const* differences, const float* weight, float* out), (differences, weight, out))

// with_top = float(core + top) (top null: 0) and alone = float(core); false where a sum exceeds
// 2^100. (In explicit 8-lane vectors: the compiler leaves the test's reduction scalar.)
MIXQ_CLONES bool to_float_sums(const double* core, const double* top, float* with_top, float* alone, size_t n) {
  typedef double v8d __attribute__((vector_size(64)));
  typedef float v8f __attribute__((vector_size(32)));
  typedef int64_t v8l __attribute__((vector_size(64)));
  v8l over = {};
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    v8d c, t = {};
    std::memcpy(&c, core + k, sizeof c);
    if (top) std::memcpy(&t, top + k, sizeof t);
    const v8d w = c + t;
    over |= (w <= 0x1p100) == 0;  // (NaN too)
    const v8f wf = __builtin_convertvector(w, v8f), cf = __builtin_convertvector(c, v8f);
    std::memcpy(with_top + k, &wf, sizeof wf);
    std::memcpy(alone + k, &cf, sizeof cf);
  }
  bool within = true;
  for (int j = 0; j < 8; ++j) within = within && over[j] == 0;
  for (; k < n; ++k) {
    const double w = core[k] + (top ? top[k] : 0.0);
    within = within && w <= 0x1p100;
    with_top[k] = float(w);
    alone[k] = float(core[k]);
  }
  return within;
}

// out[k] = (prev ? prev[k] : 0) + f · c[k], and out += f · c (the binade sums, vectorized per target).
MIXQ_CLONES void add_scaled(double* out, const double* prev, double f, const double* c, size_t n) {
  if (prev)
    for (size_t k = 0; k < n; ++k) out[k] = prev[k] + f * c[k];
  else
    for (size_t k = 0; k < n; ++k) out[k] = f * c[k];
}
MIXQ_CLONES void accumulate_scaled(double* out, double f, const double* c, size_t n) {
  for (size_t k = 0; k < n; ++k) out[k] += f * c[k];
}
// out[k] += f_b · counts[b · n + k] for the binades b = 0, 1, .. in order (f_b = f · 4^b), the
// counts zeroed: a row's core binades, straight from its table, in one call. Returns their total
// count, and in *nonempty how many binades have one.
MIXQ_CLONES uint64_t accumulate_binades32(double* out, double f, uint32_t* counts, size_t n, size_t binades,
                                          size_t* nonempty) {
  uint64_t total = 0;
  size_t filled = 0;
  for (size_t b = 0; b < binades; ++b, f *= 4.0) {
    uint32_t* c = counts + b * n;
    uint64_t sum = 0;
    for (size_t k = 0; k < n; ++k) {
      sum += c[k];
      out[k] += f * double(c[k]);
      c[k] = 0;
    }
    total += sum;
    filled += sum != 0;
  }
  *nonempty = filled;
  return total;
}
// c[k] = counts[k] as doubles, and their total.
MIXQ_CLONES uint64_t widen_counts(const uint64_t* counts, double* c, size_t n) {
  uint64_t sum = 0;
  for (size_t k = 0; k < n; ++k) {
    sum += counts[k];
    c[k] = double(counts[k]);
  }
  return sum;
}


// One binade of a row's counts (table[0 .. n), n a multiple of 16; mantissa k is the magnitude
// top | k << shift) moved out: as doubles by mantissa into dense (all n written), and the non-zero
// ones compacted into values / nonzero (room for n of each); the table left zeroed. Edges are
// sparse: whole empty 16-count chunks are skipped, and a chunk's non-zero counts found from one bit
// mask. Counts are below 2^31 (a row's elements).
template <simd_level L>
MIXQ_ALWAYS_INLINE size_t take_binade_impl(uint32_t* table, size_t n, uint32_t top, int shift, double* dense,
                                           float* values, double* nonzero, uint64_t* sum) {
#if MIXQ_HAVE_SIMD_TARGETS
  if constexpr (L == simd_level::avx2) return avx2::take_binade(table, n, top, shift, dense, values, nonzero, sum);
  if constexpr (L == simd_level::avx512) return avx512::take_binade(table, n, top, shift, dense, values, nonzero, sum);
#endif
  size_t kept = 0;
  uint64_t total = 0;
  for (size_t k0 = 0; k0 < n; k0 += 16) {
    lanes::v16u t;
    std::memcpy(&t, table + k0, sizeof t);
    uint32_t present = lanes::reduce16_bits(lanes::above(t, 0u) & lanes::kLaneBit);
    std::fill(dense + k0, dense + k0 + 16, 0.0);
    if (present == 0) continue;
    for (; present != 0; present &= present - 1) {
      const size_t k = k0 + size_t(std::countr_zero(present));
      const uint32_t c = table[k];
      dense[k] = double(c);
      values[kept] = std::bit_cast<float>(top | uint32_t(k << shift));
      nonzero[kept++] = double(c);
      total += c;
    }
    std::memset(table + k0, 0, sizeof t);
  }
  *sum = total;
  return kept;
}
MIXQ_SIMD_KERNEL(size_t, take_binade, take_binade_impl,
                 (uint32_t * table, size_t n, uint32_t top, int shift, double* dense, float* values, double* nonzero,
                  uint64_t* sum),
                 (table, n, top, shift, dense, values, nonzero, sum))

float magnitude_of(source_dtype dtype, uint32_t key) {
  return dtype == source_dtype::bf16 ? bf16_decode(uint16_t(key)) : f16_decode_table()[key];
}

uint32_t first_nonfinite_key(source_dtype dtype) { return dtype == source_dtype::bf16 ? 0x7f80 : 0x7c00; }

}  // namespace

std::optional<magnitude_histogram> magnitude_histogram::of(const source_matrix& w) {
  const int64_t n = w.size();
  const bool f32 = w.dtype == source_dtype::f32;
  if (f32) {  // a quick look first: most F32 weights are not BF16 values, and the first values say so
    const auto* p = static_cast<const uint32_t*>(w.data);
    for (int64_t i = 0; i < std::min<int64_t>(n, 4096); ++i)
      if (p[i] & 0xffffu) return std::nullopt;
  }
  magnitude_histogram h;
  h.dtype = f32 ? source_dtype::bf16 : w.dtype;
  h.count.assign(bins, 0);
  uint32_t rest = 0;
#pragma omp parallel if (worth_threads(n)) reduction(| : rest)
  {
    // 32-bit tables per thread, added into the 64-bit total before they could overflow.
    std::vector<uint32_t> local(2 * bins, 0);
    const auto flush = [&] {
#pragma omp critical
      for (uint32_t b = 0; b < bins; ++b) h.count[b] += uint64_t(local[b]) + local[bins + b];
      std::fill(local.begin(), local.end(), 0u);
    };
    constexpr int64_t step = int64_t(1) << 16;
    int64_t pending = 0;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; s += step) {
      const int64_t len = std::min(step, n - s);
      if (pending + len > int64_t(UINT32_MAX)) flush(), pending = 0;
      rest |= f32 ? count_values(static_cast<const uint32_t*>(w.data) + s, len, local.data(), local.data() + bins)
                  : count_values(static_cast<const uint16_t*>(w.data) + s, len, local.data(), local.data() + bins);
      pending += len;
    }
    flush();
  }
  if (rest != 0) return std::nullopt;
  return h;
}

float magnitude_histogram::value(uint32_t bin) const { return magnitude_of(dtype, bin); }

uint32_t magnitude_histogram::first_nonfinite_bin() const { return first_nonfinite_key(dtype); }

bool magnitude_histogram::has_nonfinite() const {
  return std::any_of(count.begin() + first_nonfinite_bin(), count.end(), [](uint64_t c) { return c != 0; });
}

void magnitude_histogram::zero_nonfinite() {
  for (uint32_t b = first_nonfinite_bin(); b < bins; ++b) count[0] += std::exchange(count[b], 0);
}

float magnitude_histogram::amax() const {
  for (uint32_t b = first_nonfinite_bin(); b-- > 0;)
    if (count[b] != 0) return value(b);
  return 0.0f;
}

void fp8_error_estimate::take(const magnitude_histogram& h) {
  take_counts(h.dtype, h.count.data(), 1, h.first_nonfinite_bin() - 1);
}

void fp8_error_estimate::take_counts(source_dtype dtype, const uint64_t* table, uint32_t lo, uint32_t hi) {
  mantissa_bits_ = dtype == source_dtype::bf16 ? 7 : 10;
  const uint32_t per = 1u << mantissa_bits_;
  const int bias = dtype == source_dtype::bf16 ? 127 : 15;
  binades_.clear();
  counts_.clear();
  values_.clear();
  nonzero_counts_.clear();
  elements_ = 0.0;
  lo = std::max(lo, 1u);  // zeros add no error
  hi = std::min(hi, first_nonfinite_key(dtype) - 1);
  for (uint32_t e = lo >> mantissa_bits_; lo <= hi && e <= hi >> mantissa_bits_; ++e) {
    const uint32_t first = std::max(e << mantissa_bits_, lo), last = std::min(((e + 1) << mantissa_bits_) - 1, hi);
    if (e == 0) {  // 16-bit subnormals: only ever evaluated value by value
      for (uint32_t key = first; key <= last; ++key)
        if (table[key] != 0) {
          values_.push_back(magnitude_of(dtype, key));
          nonzero_counts_.push_back(double(table[key]));
          elements_ += double(table[key]);
        }
      continue;
    }
    const size_t offset = counts_.size();
    counts_.resize(offset + per, 0.0);
    double* c = counts_.data() + offset;  // by mantissa: key - base
    const uint32_t base = e << mantissa_bits_;
    const uint64_t sum = widen_counts(table + first, c + (first - base), last - first + 1);
    if (sum == 0) {
      counts_.resize(offset);
      continue;
    }
    uint32_t least = first, largest = last;
    while (c[least - base] == 0.0) ++least;
    while (c[largest - base] == 0.0) --largest;
    binades_.push_back({int(e) - bias, magnitude_of(dtype, least), magnitude_of(dtype, largest), offset, 0, 0});
    elements_ += double(sum);
  }
  tiny_ = values_.size();
  n_binades_ = binades_.size();
}


bool fp8_binade_scales(int exponent, double lo, double hi, float scale) {
  const int q = int((std::bit_cast<uint32_t>(scale) >> 23) & 0xffu) - 126;  // see exponent_of
  // (products, not quotients: the margins dwarf their rounding, and no quotient waits on a divider)
  return q >= -100 && q <= 100 && exponent >= -100 && exponent <= 100 && lo >= 0x1p-6 * (1.0 + 0x1p-10) * double(scale) &&
         hi <= 460.0 * double(scale);
}

namespace {
// scale = f · 2^q with f in [0.5, 1) (frexp's q, from the bits: scale is positive; an infinite or
// subnormal one lands outside [-100, 100]).
int exponent_of(float scale) { return int((std::bit_cast<uint32_t>(scale) >> 23) & 0xffu) - 126; }
double power_of_four(int k) { return std::bit_cast<double>(uint64_t(1023 + 2 * k) << 52); }  // |k| <= 200
}  // namespace

void fp8_error_estimate::start_split() {
  core_.assign(size_t(1) << mantissa_bits_, 0.0);
  has_core_ = false;
  core_exponent_ = 0;
  edges_.clear();
  values_.resize(tiny_);
  nonzero_counts_.resize(tiny_);
}

void fp8_error_estimate::add_to_core(int exponent, const double* c) {
  if (!has_core_) core_exponent_ = exponent, has_core_ = true;  // (else 0: q is in reach)
  accumulate_scaled(core_.data(), power_of_four(exponent - core_exponent_), c, core_.size());
}

void fp8_error_estimate::add_edge(const binade& b) {
  const size_t per = core_.size();
  const double* c = counts_.data() + b.offset;
  binade edge = b;
  edge.first = values_.size();
  // The non-zero counts and their magnitudes, compacted without a branch per mantissa (edges are
  // sparse: a branch would mostly mispredict).
  values_.resize(edge.first + per);
  nonzero_counts_.resize(edge.first + per);
  float* v = values_.data() + edge.first;
  double* n = nonzero_counts_.data() + edge.first;
  const uint32_t top = uint32_t(b.exponent + 127) << 23;
  size_t kept = 0;
  for (size_t k = 0; k < per; ++k) {
    v[kept] = std::bit_cast<float>(top | uint32_t(k << (23 - mantissa_bits_)));
    n[kept] = c[k];
    kept += c[k] != 0.0;
  }
  edge.n = kept;
  values_.resize(edge.first + kept);
  nonzero_counts_.resize(edge.first + kept);
  edges_.push_back(edge);
}

void fp8_error_estimate::split(float least, float largest) {
  start_split();
  for (const binade& b : binades_) {
    // The tests are monotone in the scale: passing at both ends, a binade passes in between.
    if (fp8_binade_scales(b.exponent, b.lo, b.hi, least) && fp8_binade_scales(b.exponent, b.lo, b.hi, largest))
      add_to_core(b.exponent, counts_.data() + b.offset);
    else
      add_edge(b);
  }
  finish_split();
}

void fp8_error_estimate::take_row(source_dtype dtype, uint32_t* table, uint32_t lo, uint32_t hi, float least,
                                  float largest) {
  mantissa_bits_ = dtype == source_dtype::bf16 ? 7 : 10;
  const uint32_t per = 1u << mantissa_bits_;
  const int bias = dtype == source_dtype::bf16 ? 127 : 15;
  counts_.clear();
  values_.clear();
  nonzero_counts_.clear();
  elements_ = 0.0;
  n_binades_ = 0;
  lo = std::max(lo, 1u);  // zeros add no error
  hi = std::min(hi, first_nonfinite_key(dtype) - 1);
  for (uint32_t key = lo; key <= std::min(hi, per - 1); ++key)  // 16-bit subnormals: value by value
    if (table[key] != 0) {
      values_.push_back(magnitude_of(dtype, key));
      nonzero_counts_.push_back(double(table[key]));
      elements_ += double(std::exchange(table[key], 0u));
    }
  tiny_ = values_.size();
  start_split();
  // The core's binades (consecutive: the tests below are monotone in the exponent) are summed in
  // one call when the first binade above a run of them, or the end, is reached.
  uint32_t run_first = 0, run_binades = 0;
  const auto sum_run = [&] {
    size_t nonempty = 0;
    const double f = power_of_four(int(run_first) - bias - core_exponent_);
    elements_ += double(accumulate_binades32(core_.data(), f, table + (run_first << mantissa_bits_), per, run_binades,
                                             &nonempty));
    n_binades_ += nonempty;
    run_binades = 0;
  };
  for (uint32_t e = std::max(lo >> mantissa_bits_, 1u); lo <= hi && e <= hi >> mantissa_bits_; ++e) {
    const uint32_t base = e << mantissa_bits_;
    const int exponent = int(e) - bias;
    // Whole binades into the core (its present magnitudes are not looked for): a binade that
    // scales from its least to its largest value under both scales, and so under every one between.
    // (Counts outside [lo, hi] are zero: the row's keys lie there.)
    const float least_value = magnitude_of(dtype, base), largest_value = magnitude_of(dtype, base + per - 1);
    if (fp8_binade_scales(exponent, least_value, largest_value, least) &&
        fp8_binade_scales(exponent, least_value, largest_value, largest)) {
      if (!has_core_) core_exponent_ = exponent, has_core_ = true;
      if (run_binades++ == 0) run_first = e;
      continue;
    }
    if (run_binades != 0) sum_run();
    // An edge.
    const size_t offset = counts_.size(), at = values_.size();
    counts_.resize(offset + per);  // (take_binade writes every count)
    values_.resize(at + per);
    nonzero_counts_.resize(at + per);
    uint64_t sum = 0;
    const size_t kept = take_binade(table + base, per, uint32_t(exponent + 127) << 23, 23 - mantissa_bits_,
                                    counts_.data() + offset, values_.data() + at, nonzero_counts_.data() + at, &sum);
    values_.resize(at + kept);
    nonzero_counts_.resize(at + kept);
    if (kept == 0) {
      counts_.resize(offset);
      continue;
    }
    elements_ += double(sum);
    ++n_binades_;
    // its least and largest present magnitudes, for the per-scale tests
    edges_.push_back({exponent, values_[at], values_[at + kept - 1], offset, at, kept});
  }
  if (run_binades != 0) sum_run();
  finish_split();
}

void fp8_error_estimate::finish_split() {
  const size_t per = size_t(1) << mantissa_bits_;
  combined_valid_ = false;
  // Padded to whole vectors with zero counts (values 0: no error) for runs_sq_errors.
  values_.resize((values_.size() + 15) / 16 * 16, 0.0f);
  nonzero_counts_.resize(values_.size(), 0.0);
  // With a core, the edges that scale under a scale are the bottom ones nearest the core and the
  // top ones nearest it: their counts summed outward from the core (never a difference), scaled
  // as the core's.
  below_core_ = 0;
  while (has_core_ && below_core_ < edges_.size() && edges_[below_core_].exponent < core_exponent_) ++below_core_;
  // (The bottom ones when an estimate needs them: a row's screening does not.)
  outward_.resize(has_core_ ? edges_.size() * per : 0);  // (every one written before it is read)
  if (has_core_)
    for (size_t e = below_core_; e < edges_.size(); ++e) add_outward(e, e > below_core_ ? e - 1 : SIZE_MAX);
  bottom_outward_ = !has_core_ || below_core_ == 0;
}

// outward_[into] = outward_[from] (none: SIZE_MAX) + edge into's counts, scaled as the core's.
void fp8_error_estimate::add_outward(size_t into, size_t from) {
  const size_t per = size_t(1) << mantissa_bits_;
  add_scaled(outward_.data() + into * per, from == SIZE_MAX ? nullptr : outward_.data() + from * per,
             power_of_four(edges_[into].exponent - core_exponent_), counts_.data() + edges_[into].offset, per);
}

void fp8_error_estimate::estimate(std::span<const float> scales, double* out) {
  if (!bottom_outward_) {
    for (size_t e = below_core_; e-- > 0;) add_outward(e, e + 1 < below_core_ ? e + 1 : SIZE_MAX);
    bottom_outward_ = true;
  }
  const int64_t per = int64_t(1) << mantissa_bits_;
  const size_t n = scales.size();
  const int64_t n_values = int64_t(values_.size());
  errors_.resize(size_t(per));
  // The edges that do not scale are those below the first that does (x / scale reaching FP8's
  // subnormals) and above the last (reaching saturation): value by value, in two runs of values_,
  // for all scales at once (the runs are short: one call per run would be mostly latency).
  ranges_.resize(n);
  for (size_t c = 0; c < n; ++c) {
    edge_range& r = ranges_[c];
    r.first = 0, r.last = edges_.size();
    if (!screened_.empty() && screened_[c]) {  // (not estimated)
      r.low_end = r.high_begin = int64_t(values_.size());
      continue;
    }
    const auto scales_at = [&](const binade& b) { return fp8_binade_scales(b.exponent, b.lo, b.hi, scales[c]); };
    while (r.first < r.last && !scales_at(edges_[r.first])) ++r.first;
    while (r.last > r.first && !scales_at(edges_[r.last - 1])) --r.last;
    r.low_end = int64_t(r.first < edges_.size() ? edges_[r.first].first : values_.size());
    r.high_begin = int64_t(r.last < edges_.size() ? edges_[r.last].first : values_.size());
  }
  // Scales under which top edges saturate (a run above the last edge that scales) come last: one
  // whose error over the 32 largest magnitudes alone (part of its sum: a lower bound) already
  // exceeds an evaluated scale's upper bound cannot be the least, and is left unevaluated (+inf).
  const auto saturates = [&](size_t c) { return ranges_[c].high_begin < n_values && n > 1; };
  const auto screened = [&](size_t c) { return !screened_.empty() && screened_[c] != 0; };
  std::vector<float>& subset = subset_scales_;
  std::vector<edge_range>& subset_ranges = subset_ranges_;
  std::vector<double>& subset_out = subset_out_;
  std::vector<size_t>& index = subset_index_;
  const auto evaluate = [&](auto&& pick) {
    subset.clear(), subset_ranges.clear(), index.clear();
    for (size_t c = 0; c < n; ++c)
      if (pick(c)) subset.push_back(scales[c]), subset_ranges.push_back(ranges_[c]), index.push_back(c);
    subset_out.assign(subset.size(), 0.0);
    runs_sq_errors(values_.data(), nonzero_counts_.data(), n_values, subset.data(), subset_ranges.data(),
                   int64_t(subset.size()), subset_out.data());
    for (size_t k = 0; k < index.size(); ++k) out[index[k]] = subset_out[k] + reference_part(index[k], scales[index[k]]);
  };
  std::fill(out, out + n, 0.0);
  evaluate([&](size_t c) { return !saturates(c) && !screened(c); });
  const double relative = relative_margin();
  double least_upper = INFINITY;
  for (size_t c = 0; c < n; ++c)
    if (!saturates(c) && !screened(c) && std::isfinite(scales[c]))
      least_upper = std::min(least_upper, out[c] + relative * out[c]);
  std::vector<uint8_t>& ruled_out = ruled_out_;
  ruled_out.assign(n, 0);
  if (least_upper < INFINITY) {  // the lower bounds, all saturating scales in one call
    subset.clear(), index.clear();
    for (size_t c = 0; c < n; ++c)
      if (saturates(c) && !screened(c)) subset.push_back(scales[c]), index.push_back(c);
    largest_values_errors(subset);
    // (32 terms, each within 2^-53: the bound's own rounding is far inside 2^-40; the reference's
    // sum is within γ_N of the exact one, inside the margin.)
    for (size_t k = 0; k < index.size(); ++k)
      if (subset_out[k] * (1.0 - 0x1p-40) - relative * subset_out[k] > least_upper) ruled_out[index[k]] = 1;
  }
  evaluate([&](size_t c) { return saturates(c) && !ruled_out[c] && !screened(c); });
  for (size_t c = 0; c < n; ++c)
    if (ruled_out[c] || screened(c)) out[c] = INFINITY;
}

// subset_out_[k]: scale subset[k]'s error over the 32 largest magnitudes in values_ (edge values,
// never the core's; a lower bound of its sum), all in one call.
void fp8_error_estimate::largest_values_errors(std::span<const float> subset) {
  const int64_t n_values = int64_t(values_.size()), top = std::max<int64_t>(0, n_values - 32);
  subset_ranges_.assign(subset.size(), {0, 0, 0, top});
  subset_out_.assign(subset.size(), 0.0);
  runs_sq_errors(values_.data(), nonzero_counts_.data(), n_values, subset.data(), subset_ranges_.data(),
                 int64_t(subset.size()), subset_out_.data());
}

// Before the estimates, rules out (screened_) the scales whose reference error provably exceeds
// another's, from coarse bounds (needs a core and the row's cached differences):
// - a scale under which every top edge scales: the core and the top edges summed in float over the
//   cached differences (coarse_weighted_squares: within 2^-20 relative, with the weight's rounding
//   to float), the bottom edges' values (and 16-bit subnormals) bounded, each value x's error
//   between 0 and max(x² / 256, s² / 2^20) (half an FP8 step below saturation, or x itself where
//   it rounds to 0; its roundings inside the margin);
// - any other (a top edge saturates): its core's sum (as above, below its rounding) and its error
//   over the 32 largest magnitudes (edge values, never the core's), a lower bound.
// A scale whose lower bound exceeds the least upper bound cannot be the reference's choice. True
// when one scale is left (the choice); the rest, when more are left, are estimated in full.
bool fp8_error_estimate::screen(std::span<const float> scales) {
  const size_t n = scales.size(), per = size_t(1) << mantissa_bits_;
  screened_.assign(n, 0);
  if (!has_core_ || n < 2 || per != 128) return false;
  const bool any_top = below_core_ < edges_.size();
  coarse_weight_.resize(2 * per);  // the core with every top edge, and the core alone
  float* const with_top = coarse_weight_.data();
  float* const core_alone = coarse_weight_.data() + per;
  if (!to_float_sums(core_.data(), any_top ? outward_.data() + (edges_.size() - 1) * per : nullptr, with_top,
                     core_alone, per))
    return false;  // (far past any row's counts: left to the estimates; the core alone is less)
  const size_t bottom_end = any_top ? edges_[below_core_].first : values_.size();
  double below_squares = 0.0, below_count = 0.0;  // Σ count · x² / 256 and Σ count over the bottom values
  for (size_t i = 0; i < bottom_end; ++i) {
    below_squares += nonzero_counts_[i] * (double(values_[i]) * double(values_[i]) / 256.0);
    below_count += nonzero_counts_[i];
  }
  constexpr double margin = 0x1p-17;  // (float sums within 2^-20, double ones and the reference's far inside)
  const double reference = rounding_gamma(elements_);
  const double core_factor = power_of_four(core_exponent_ - 1);
  std::vector<double>& lower = coarse_lower_;
  lower.assign(n, 0.0);
  // The scales under which the top edges scale (those under which the highest does: the others'
  // values lie between it and the core, which scales under every scale), and the others.
  unclipped_.clear(), saturating_.clear();
  const binade* highest = any_top ? &edges_.back() : nullptr;
  for (size_t c = 0; c < n; ++c) {
    if (!std::isfinite(scales[c])) continue;  // (never the choice: left to choose)
    const bool top_scales = !highest || fp8_binade_scales(highest->exponent, highest->lo, highest->hi, scales[c]);
    if (const float* d = cached_differences(c, scales[c]))
      (top_scales ? unclipped_ : saturating_).push_back({c, d});
    else if (!top_scales)
      saturating_.push_back({c, nullptr});  // (an unclipped one is left to the estimates)
  }
  // Their coarse sums, four at a time: over the core and the top edges, or the core alone.
  const auto coarse_sums = [&](std::vector<coarse_candidate>& list, const float* weight) {
    static const float no_differences[128] = {};  // (a candidate without them, and the padding: 0)
    for (size_t k = 0; k < list.size(); k += 4) {
      const float* d[4];
      float sum[4];
      for (size_t j = 0; j < 4; ++j)
        d[j] = k + j < list.size() && list[k + j].differences ? list[k + j].differences : no_differences;
      coarse_weighted_squares(d, weight, sum);
      for (size_t j = 0; j < 4 && k + j < list.size(); ++j) list[k + j].sum = core_factor * double(sum[j]);
    }
  };
  coarse_sums(unclipped_, with_top);
  coarse_sums(saturating_, core_alone);
  double least_upper = INFINITY;
  for (const coarse_candidate& u : unclipped_) {
    const double s2 = double(scales[u.index]) * double(scales[u.index]);
    const double upper = (u.sum + below_squares + s2 * 0x1p-20 * below_count) * (1.0 + margin) * (1.0 + reference);
    lower[u.index] = u.sum * (1.0 - margin) * (1.0 - reference);
    least_upper = std::min(least_upper, upper);
  }
  if (least_upper == INFINITY) return false;
  if (!saturating_.empty()) {  // their 32 largest magnitudes' terms
    subset_scales_.clear();
    for (const coarse_candidate& v : saturating_) subset_scales_.push_back(scales[v.index]);
    largest_values_errors(subset_scales_);
    for (size_t k = 0; k < saturating_.size(); ++k)
      lower[saturating_[k].index] = (saturating_[k].sum + subset_out_[k]) * (1.0 - margin) * (1.0 - reference);
  }
  for (size_t c = 0; c < n; ++c)
    if (std::isfinite(scales[c]) && lower[c] > least_upper) screened_[c] = 1;
  size_t left = 0;
  bool finite = true;
  for (size_t c = 0; c < n; ++c)
    if (!screened_[c]) ++left, finite = finite && std::isfinite(scales[c]);
  return left == 1 && finite;
}

// The part of a scale's estimate from the core and the edges that scale under it (after ranges_).
double fp8_error_estimate::reference_part(size_t c, float scale) {
  const int64_t per = int64_t(1) << mantissa_bits_;
  const edge_range& r = ranges_[c];
  const int q = exponent_of(scale);
  // A core or an edge that scales puts q in reach; otherwise no reference errors are needed.
  if (q < -100 || q > 100) return 0.0;
  if (!has_core_) {  // (rare: a row in a binade or two) each edge that scales on its own
    double sum = 0.0;
    reference_errors(q, mantissa_bits_, scale, errors_.data());
    for (size_t e = r.first; e < r.last; ++e)
      sum += power_of_four(edges_[e].exponent - q) * dot(counts_.data() + edges_[e].offset, errors_.data(), per);
    return sum;
  }
  // The core with the edges that scale (those between the core and r's ends, summed outward), as
  // one weight over the reference binade's errors; consecutive scales mostly share it.
  if (r.first != combined_first_ || r.last != combined_last_ || !combined_valid_) {
    combined_first_ = r.first, combined_last_ = r.last, combined_valid_ = true;
    const bool any = r.first < r.last;
    const double* down = any && r.first < below_core_ ? outward_.data() + r.first * size_t(per) : nullptr;
    const double* up = any && r.last > below_core_ ? outward_.data() + (r.last - 1) * size_t(per) : nullptr;
    combined_.assign(core_.begin(), core_.end());
    if (down) accumulate_scaled(combined_.data(), 1.0, down, size_t(per));
    if (up) accumulate_scaled(combined_.data(), 1.0, up, size_t(per));
  }
  // A scale 2^j · s0 (s0 in [1, 2), its mantissa) gives the reference binade 2^j times s0's, each
  // difference 2^j times, each term and sum 4^j times, exactly: s0's differences, kept per row
  // amax and candidate, serve every row whose amax shares them (a 16-bit amax has 128 mantissas).
  if (float* d = cached_differences(c, scale); d != nullptr)
    return power_of_four(core_exponent_ - 1) * weighted_squares(d, mantissa_bits_, combined_.data());
  return power_of_four(core_exponent_ - q) * weighted_reference_errors(q, mantissa_bits_, scale, combined_.data());
}

float* fp8_error_estimate::cached_differences(size_t c, float scale) {
  const uint32_t bits = std::bit_cast<uint32_t>(scale);
  if (cache_slot_ == SIZE_MAX || mantissa_bits_ != kCachedMantissaBits || c >= cache_candidates_ ||
      bits - 0x00800000u >= 0x7f000000u)  // (normal scales only)
    return nullptr;
  const size_t per = size_t(1) << kCachedMantissaBits, at = cache_slot_ * cache_candidates_ + c;
  const uint32_t tag = (bits & 0x7fffffu) | 0x80000000u;  // (never a fresh slot's 0)
  float* d = cache_.data() + at * per;
  if (cache_tags_[at] != tag) {
    reference_differences(1, kCachedMantissaBits, std::bit_cast<float>((bits & 0x7fffffu) | 0x3f800000u), d);
    cache_tags_[at] = tag;
  }
  return d;
}

// Reference and estimate both sum exactly the same nonnegative terms (count · err², err² the same
// bits: x / scale, its FP8 value and the difference all scale by the binade's power of two): the
// reference's rounded once per element, the estimate's at most B times each, B below the number
// of counted magnitudes plus binades plus the dot products' lanes. So |reference − estimate| ≤
// (γ_N + γ_B) E, and E ≤ estimate / (1 − γ_B); the margin is twice that.
double fp8_error_estimate::relative_margin() const {
  const double g = rounding_gamma(double(n_binades_ * core_.size() + values_.size() + 2 * n_binades_) + 16.0);
  return 2.0 * (rounding_gamma(elements_) + g) / (1.0 - g);
}

double fp8_error_estimate::sq_error(float scale) {
  split(scale, scale);
  double err = 0.0;
  estimate({&scale, 1}, &err);
  return err;
}

std::vector<float> fp8_error_estimate::scales_of(float amax, std::span<const float> multipliers) {
  std::vector<float> scale(multipliers.size());
  for (size_t c = 0; c < multipliers.size(); ++c) scale[c] = fp8_scale_for_amax(amax * multipliers[c]);
  return scale;
}

std::vector<size_t> fp8_error_estimate::contenders(float amax, std::span<const float> multipliers) {
  if (multipliers.empty()) return {};
  const std::vector<float> scale = scales_of(amax, multipliers);
  split(*std::min_element(scale.begin(), scale.end()), *std::max_element(scale.begin(), scale.end()));
  return choose(scale);
}

std::vector<size_t> fp8_error_estimate::row_contenders(source_dtype dtype, uint32_t* table, uint32_t lo, uint32_t hi,
                                                       float amax, std::span<const float> multipliers) {
  if (multipliers.empty()) return {};
  const std::vector<float> scale = scales_of(amax, multipliers);
  take_row(dtype, table, lo, hi, *std::min_element(scale.begin(), scale.end()),
           *std::max_element(scale.begin(), scale.end()));
  // Rows' cached differences by their amax's top 7 mantissa bits (a BF16 amax's all; a slot's
  // tags tell a candidate's scale apart from another amax's).
  if (mantissa_bits_ == kCachedMantissaBits && multipliers.size() <= kCachedCandidates) {
    if (cache_candidates_ != multipliers.size()) {
      cache_candidates_ = multipliers.size();
      cache_tags_.assign(kCacheSlots * cache_candidates_, 0u);
      cache_.resize(kCacheSlots * cache_candidates_ << kCachedMantissaBits);
    }
    cache_slot_ = (std::bit_cast<uint32_t>(amax) >> 16) & (kCacheSlots - 1);
  }
  std::vector<size_t> kept;
  if (cache_slot_ != SIZE_MAX && screen(scale)) {  // one left: the choice, without its estimate
    estimates_.assign(scale.size(), INFINITY);
    for (size_t c = 0; c < scale.size(); ++c)
      if (!screened_[c]) kept.push_back(c), estimates_[c] = NAN;
  } else {
    kept = choose(scale);
  }
  cache_slot_ = SIZE_MAX;
  screened_.clear();
  return kept;
}

std::vector<size_t> fp8_error_estimate::choose(std::span<const float> scale) {
  const size_t n_cand = scale.size();
  std::vector<double>& estimate_of = estimates_;
  estimate_of.resize(n_cand);
  estimate(scale, estimate_of.data());
  const double relative = relative_margin();
  relative_bound_ = relative;
  // A candidate with an infinite scale errs by NaN (x / inf = 0, 0 · inf): never the reference's.
  double least_upper = INFINITY;
  for (size_t c = 0; c < n_cand; ++c)
    if (std::isfinite(scale[c])) least_upper = std::min(least_upper, estimate_of[c] + relative * estimate_of[c]);
  std::vector<size_t> kept;  // (+inf: screened out before; said outright, not left to inf − inf)
  for (size_t c = 0; c < n_cand; ++c)
    if (std::isfinite(scale[c]) && estimate_of[c] < INFINITY && estimate_of[c] - relative * estimate_of[c] <= least_upper)
      kept.push_back(c);
  // An estimate of 0 is exact (every term is 0): the first such candidate is the choice.
  if (least_upper == 0.0) kept.resize(1);
  return kept;
}

namespace {
// The least nonzero and the largest magnitude key (BF16 bits: the top 16) of an F32 row (lo > hi:
// all zero); vectorized.
MIXQ_CLONES std::pair<uint32_t, uint32_t> key_range32(const uint32_t* p, int64_t n) {
  uint16_t below = UINT16_MAX, top = 0;  // below: the least key less one (key 0 wraps to the top)
  for (int64_t i = 0; i < n; ++i) {
    const auto key = uint16_t((p[i] >> 16) & 0x7fffu);
    below = std::min(below, uint16_t(key - 1u));
    top = std::max(top, key);
  }
  return {uint32_t(below) + 1u, top};
}
MIXQ_CLONES uint32_t low_bits(const uint32_t* p, int64_t n) {
  uint32_t rest = 0;
  for (int64_t i = 0; i < n; ++i) rest |= p[i];
  return rest & 0xffffu;
}
// A 16-bit row's magnitude keys counted into table (four per 64-bit load) and their range (as
// key_range32's, by vector min / max), in one pass over the row.
MIXQ_CLONES std::pair<uint32_t, uint32_t> count_keys16(const uint16_t* p, int64_t n, uint32_t* table) {
  typedef uint16_t v16h __attribute__((vector_size(32)));
  v16h below = {}, top = {};  // below: the least key less one (key 0 wraps to the top)
  below = ~below;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v16h keys;
    std::memcpy(&keys, p + i, sizeof keys);
    keys &= 0x7fff;
    const v16h less_one = keys - 1;
    below = below < less_one ? below : less_one;
    top = top > keys ? top : keys;
    count_magnitude_keys(p + i, 16, table);  // (from memory, not from the vector: no spills)
  }
  uint16_t least = UINT16_MAX, largest = 0;
  for (int j = 0; j < 16; ++j) least = std::min(least, below[j]), largest = std::max(largest, top[j]);
  for (; i < n; ++i) {
    const auto key = uint16_t(p[i] & 0x7fffu);
    ++table[key];
    least = std::min(least, uint16_t(key - 1u));
    largest = std::max(largest, key);
  }
  return {uint32_t(least) + 1u, largest};
}
}  // namespace

std::pair<uint32_t, uint32_t> row_magnitude_counter::count16(const uint16_t* p, int64_t n) {
  if (table.empty()) table.assign(bins, 0);
  return count_keys16(p, n, table.data());
}

void row_magnitude_counter::forget(std::pair<uint32_t, uint32_t> keys) {
  table[0] = 0;
  for (uint32_t key = keys.first; key <= keys.second; ++key) table[key] = 0;
}

std::vector<size_t> row_magnitude_counter::counted_contenders(source_dtype dtype, std::pair<uint32_t, uint32_t> keys,
                                                              float amax, std::span<const float> multipliers) {
  const auto [lo, hi] = keys;
  table[0] = 0;  // (non-finite values, zeroed by the policy in a row's copy, are cleared here)
  const uint32_t finite_end = first_nonfinite_key(dtype);
  for (uint32_t key = finite_end; key <= hi; ++key) table[key] = 0;
  return estimate.row_contenders(dtype, table.data(), lo, std::min(hi, finite_end - 1), amax, multipliers);
}

std::optional<std::vector<size_t>> row_magnitude_counter::contenders(const source_matrix& w, int64_t r, const float* x,
                                                                      float amax, std::span<const float> multipliers) {
  if (w.dtype != source_dtype::f32)  // in place
    return counted_contenders(w.dtype, count16(static_cast<const uint16_t*>(w.data) + r * w.cols, w.cols), amax,
                              multipliers);
  // counted as BF16 when every value is one
  if (table.empty()) table.assign(bins, 0);
  const int64_t n = w.cols;
  const auto* p = reinterpret_cast<const uint32_t*>(x);
  if (low_bits(p, n) != 0) return std::nullopt;
  for (int64_t i = 0; i < n; ++i) ++table[(p[i] >> 16) & 0x7fffu];
  return counted_contenders(source_dtype::bf16, key_range32(p, n), amax, multipliers);
}

}  // namespace mixq::cpu
