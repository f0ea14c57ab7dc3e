#include "kernels/cpu/quantize.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <omp.h>

#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "kernels/cpu/fp8_mse_histogram.hpp"
#include "kernels/cpu/fp8_mse_moments.hpp"
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

void require_shape(const source_matrix& w, format_id format) {
  if (auto why = format_cannot_hold(format, w.rows, w.cols))
    throw format_error(fmt::format("tensor '{}': {}", w.name, *why));
}

void require_output(std::span<float> out, int64_t n, std::string_view what) {
  if (int64_t(out.size()) != n) throw format_error(fmt::format("{}: output holds {} values, need {}", what, out.size(), n));
}

// Source values [i, i + n) widened to fp32 (BF16 / F16 / F32), vectorized per target.
MIXQ_CLONES void widen(const source_matrix& w, int64_t i, int n, float* dst, bool zero_nonfinite) {
  load_f32(w, i, n, dst, zero_nonfinite);
}

}  // namespace

void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out) {
  require_output(out, q.rows * q.cols, "nvfp4_dequantize");
  const int64_t blocks = q.rows * q.cols / kNvfp4Block;
  const float* e4m3 = e4m3_decode_table();
#pragma omp parallel for schedule(static) if (worth_threads(q.rows * q.cols))
  for (int64_t b = 0; b < blocks; ++b) {
    const float scale = e4m3[q.block_scales[size_t(b)]] * q.global_scale;
    const uint8_t* p = q.packed.data() + b * (kNvfp4Block / 2);
    float* o = out.data() + b * kNvfp4Block;
    for (int i = 0; i < kNvfp4Block; ++i) {
      const uint8_t nib = (i & 1) ? uint8_t(p[i / 2] >> 4) : uint8_t(p[i / 2] & 0xF);
      o[i] = kNvfp4Values[nib] * scale;
    }
  }
}

// One row of FP8 work: optionally its amax and its squared error under each candidate scale.
// The amax as the max of magnitude bits (integers vectorize where a float max with NaN rules
// does not; the values are finite here).
MIXQ_CLONES float fp8_row_amax(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::bit_cast<uint32_t>(x[i]) & 0x7fffffffu);
  return std::bit_cast<float>(m);
}

#if MIXQ_HAVE_SIMD_TARGETS
namespace avx2 {
double row_sq_error(const float* x, int64_t n, float scale);
void nf4_block_codes(const float* p, float scale, const int32_t* mid, uint8_t* dst);
}
#endif

template <simd_level L>
MIXQ_ALWAYS_INLINE void fp8_row_errors_impl(const float* x, int64_t n, float amax, std::span<const float> multipliers,
                                            double* err) {
  for (size_t c = 0; c < multipliers.size(); ++c) {
    const float scale = fp8_scale_for_amax(amax * multipliers[c]);
#if MIXQ_HAVE_SIMD_TARGETS
    if constexpr (L == simd_level::avx2) {
      err[c] = avx2::row_sq_error(x, n, scale);
      continue;
    }
#endif
    err[c] = lanes::fp8_row_sq_error<L>(x, n, scale);
  }
}
MIXQ_SIMD_KERNEL(void, fp8_row_errors, fp8_row_errors_impl,
                 (const float* x, int64_t n, float amax, std::span<const float> multipliers, double* err),
                 (x, n, amax, multipliers, err))

MIXQ_CLONES void fp8_row_codes(const float* x, int64_t n, float scale, uint8_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) lanes::store_bytes(lanes::fp8_codes(lanes::load_bits(x + i), scale), dst + i);
  for (; i < n; ++i) dst[i] = fp8_code(x[i], scale);
}

#if MIXQ_HAVE_SIMD_TARGETS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
// The range of a row's 16-bit magnitude keys counted beside its neighbour's codes
// (row_codes_counting), by 16-lane minima and maxima. (count_keys16 finds the same range with GCC
// vectors; shared from a header, those made this loop 15-40 % slower: intrinsics here.)
struct key_range {
  __m256i below, top;  // below: the least key less one
  MIXQ_ALWAYS_INLINE key_range() : below(_mm256_set1_epi16(-1)), top(_mm256_setzero_si256()) {}
  MIXQ_ALWAYS_INLINE void add(const uint16_t* p) {  // 16 keys
    const __m256i keys = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), _mm256_set1_epi16(0x7fff));
    below = _mm256_min_epu16(below, _mm256_sub_epi16(keys, _mm256_set1_epi16(1)));
    top = _mm256_max_epu16(top, keys);
  }
  // The range, with the last n keys (fewer than a vector's) counted one by one.
  MIXQ_ALWAYS_INLINE std::pair<uint32_t, uint32_t> with_tail(const uint16_t* p, int64_t n, uint32_t* table) const {
    alignas(32) uint16_t lo[16], hi[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lo), below);
    _mm256_store_si256(reinterpret_cast<__m256i*>(hi), top);
    uint16_t least = *std::min_element(lo, lo + 16), largest = *std::max_element(hi, hi + 16);
    for (int64_t i = 0; i < n; ++i) {
      const auto key = uint16_t(p[i] & 0x7fffu);
      ++table[key];
      least = std::min(least, uint16_t(key - 1u));
      largest = std::max(largest, key);
    }
    return {uint32_t(least) + 1u, largest};
  }
};
#pragma GCC pop_options
#endif

#if MIXQ_HAVE_SIMD_TARGETS
// AVX-512 rows read BF16 / F16 / F32 in place: the codes from the source (no F32 copy of the row) and
// the amax of a row as the max of its magnitude bits, 32 BF16 or 16 F32 per instruction.
MIXQ_BEGIN_AVX512_REGION
namespace avx512 {

MIXQ_ALWAYS_INLINE __m512i u32(uint32_t x) { return _mm512_set1_epi32(int(x)); }

// The largest 16-bit magnitude pattern (sign cleared) of a row of BF16 or F16 values.
uint32_t row_max_magnitude16(const uint16_t* p, int64_t n) {
  const __m512i magnitude = _mm512_set1_epi16(0x7fff);
  __m512i m = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512(p + i), magnitude));
  if (i < n)
    m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_maskz_loadu_epi16(__mmask32((1ull << (n - i)) - 1), p + i), magnitude));
  const __m512i pairs = _mm512_max_epu32(_mm512_and_si512(m, u32(0xffffu)), _mm512_srli_epi32(m, 16));
  return _mm512_reduce_max_epu32(pairs);
}
// Max magnitude bits of a row, as float bits: >= 0x7f800000 when it holds an inf or a NaN.
uint32_t row_amax_bits(const uint16_t* p, int64_t n) { return row_max_magnitude16(p, n) << 16; }
uint32_t row_amax_bits(const f16_bits* p, int64_t n) {
  return std::bit_cast<uint32_t>(f16_decode_table()[row_max_magnitude16(&p->bits, n)]);
}
uint32_t row_amax_bits(const float* p, int64_t n) {
  __m512i m = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512(p + i), u32(0x7fffffffu)));
  if (i < n)
    m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_maskz_loadu_epi32(__mmask16((1u << (n - i)) - 1), p + i), u32(0x7fffffffu)));
  return _mm512_reduce_max_epu32(m);
}

// fp8_code of 16 values (float bits) under scale: e4m3_encode(x / scale), with the normal codes'
// RNE as a masked add and the subnormal ones' by a rounding conversion.
MIXQ_ALWAYS_INLINE __m128i fp8_codes(__m512i bits, __m512 scale) {
  const __m512i q = _mm512_castps_si512(_mm512_div_ps(_mm512_castsi512_ps(bits), scale));
  const __m512i u = _mm512_and_si512(q, u32(0x7fffffffu));
  __m512i r = _mm512_add_epi32(u, u32(0x7ffffu));
  r = _mm512_mask_add_epi32(r, _mm512_test_epi32_mask(u, u32(0x100000u)), r, u32(1));
  __m512i code = _mm512_sub_epi32(_mm512_srli_epi32(r, 20), u32(960));  // ((exp - 120) << 3) | mantissa
  const __m512i sub = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(u), _mm512_set1_ps(512.0f)),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  code = _mm512_mask_mov_epi32(code, _mm512_cmplt_epu32_mask(u, u32(0x3c800000u)), sub);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(u, u32(0x43e00000u)), u32(0x7e));
  code = _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(q, 24), u32(0x80), 0xf8);  // code | (sign & 0x80)
  return _mm512_cvtepi32_epi8(code);
}
MIXQ_ALWAYS_INLINE __m512i bits_of(const uint16_t* p) { return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16); }
MIXQ_ALWAYS_INLINE __m512i bits_of(const float* p) { return _mm512_loadu_si512(p); }
// F16 widened exactly (every F16 value is a float) by the hardware conversion.
MIXQ_ALWAYS_INLINE __m512i bits_of(const f16_bits* p) {
  return _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}

template <class T>
void row_codes(const T* p, int64_t n, float scale, uint8_t* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), fp8_codes(bits_of(p + i), s));
  if (i < n) {  // the tail through a zero-padded copy
    T tail[16] = {};
    std::copy_n(p + i, n - i, tail);
    alignas(16) uint8_t codes[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(codes), fp8_codes(bits_of(tail), s));
    std::copy_n(codes, n - i, dst + i);
  }
}
template void row_codes(const uint16_t*, int64_t, float, uint8_t*);
template void row_codes(const float*, int64_t, float, uint8_t*);
template void row_codes(const f16_bits*, int64_t, float, uint8_t*);

// row_codes of p while the next row's 16-bit magnitude keys (next: its bits) are counted into
// table, as count16 counts them (its least non-zero and largest key returned): the codes wait on
// the divider and the count on the load and store ports, so side by side each hides the other.
// The row after it (ahead, or null) is prefetched non-temporally: streamed through L1 without
// displacing the cached differences the rows' screening reads from L2 and L3.
template <class T>
std::pair<uint32_t, uint32_t> row_codes_counting(const T* p, int64_t n, float scale, uint8_t* dst,
                                                 const uint16_t* next, const uint16_t* ahead, uint32_t* table) {
  const __m512 s = _mm512_set1_ps(scale);
  key_range range;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (ahead && (i & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + i), _MM_HINT_NTA);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), fp8_codes(bits_of(p + i), s));
    range.add(next + i);
    count_magnitude_keys(next + i, 16, table);
  }
  if (i < n) row_codes(p + i, n - i, scale, dst + i);
  return range.with_tail(next + i, n - i, table);
}
template std::pair<uint32_t, uint32_t> row_codes_counting(const uint16_t*, int64_t, float, uint8_t*, const uint16_t*,
                                                          const uint16_t*, uint32_t*);
template std::pair<uint32_t, uint32_t> row_codes_counting(const f16_bits*, int64_t, float, uint8_t*, const uint16_t*,
                                                          const uint16_t*, uint32_t*);

}  // namespace avx512
MIXQ_END_AVX512_REGION
#endif

#if MIXQ_HAVE_SIMD_TARGETS
// The same row kernels with AVX2: 8 lanes per register, the codes of 32 values narrowed to bytes by
// two saturating packs and one lane permute.
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {

MIXQ_ALWAYS_INLINE __m256i u32(uint32_t x) { return _mm256_set1_epi32(int(x)); }

inline uint32_t max_epu32_of(__m256i m) {
  alignas(32) uint32_t lane[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane), m);
  return *std::max_element(lane, lane + 8);
}
uint32_t row_max_magnitude16(const uint16_t* p, int64_t n) {
  const __m256i magnitude = _mm256_set1_epi16(0x7fff);
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), magnitude));
  uint32_t top = max_epu32_of(_mm256_max_epu32(_mm256_and_si256(m, u32(0xffffu)), _mm256_srli_epi32(m, 16)));
  for (; i < n; ++i) top = std::max<uint32_t>(top, p[i] & 0x7fffu);
  return top;
}
uint32_t row_amax_bits(const uint16_t* p, int64_t n) { return row_max_magnitude16(p, n) << 16; }
uint32_t row_amax_bits(const f16_bits* p, int64_t n) {
  return std::bit_cast<uint32_t>(f16_decode_table()[row_max_magnitude16(&p->bits, n)]);
}
uint32_t row_amax_bits(const float* p, int64_t n) {
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), u32(0x7fffffffu)));
  uint32_t top = max_epu32_of(m);
  for (; i < n; ++i) top = std::max(top, std::bit_cast<uint32_t>(p[i]) & 0x7fffffffu);
  return top;
}

// lanes::fp8_codes of 8 values (float bits) under scale, each code in its lane: |q|'s E4M3 code
// off the rounding sum (e4m3_avx2.hpp), saturating at 0x7e by one unsigned min, and the sign. (No
// quotient is NaN: the values are finite, or zeroed, and every scale finite.)
MIXQ_ALWAYS_INLINE __m256i fp8_codes(__m256i bits, __m256 scale) {
  const __m256i q = _mm256_castps_si256(_mm256_div_ps(_mm256_castsi256_ps(bits), scale));
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_and_si256(q, u32(0x7fffffffu)));
  const __m256i code = _mm256_min_epu32(e4m3_avx2::code_of(e4m3_avx2::round_to_e4m3(magnitude)), u32(0x7eu));
  return _mm256_or_si256(code, _mm256_and_si256(_mm256_srli_epi32(q, 24), u32(0x80u)));
}
// lanes::fp8_row_sq_error<avx2>, bit for bit: (|x| − its FP8 value)² in double (the difference
// exact, as x − the signed value's), lane j of 8 taking elements j, j + 8, ..., the tail's terms
// from the scalar reference, the lanes added in order at the end.
double row_sq_error(const float* x, int64_t n, float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();  // lanes 0-3, 4-7
  int64_t i = 0;
  for (; i + 8 <= n / 16 * 16; i += 8) {
    __m256d d[2];
    e4m3_avx2::differences_from_fp8(_mm256_and_ps(_mm256_loadu_ps(x + i), _mm256_castsi256_ps(u32(0x7fffffffu))), s, d);
    lo = _mm256_add_pd(lo, _mm256_mul_pd(d[0], d[0]));
    hi = _mm256_add_pd(hi, _mm256_mul_pd(d[1], d[1]));
  }
  alignas(32) double lane[8];
  _mm256_store_pd(lane, lo);
  _mm256_store_pd(lane + 4, hi);
  for (int j = 0; i + j < n; ++j) {
    const double d = lanes::fp8_scalar_difference(x[i + j], scale);
    lane[j % 8] += d * d;
  }
  double err = 0.0;
  for (double l : lane) err += l;
  return err;
}

// nf4_blocks_impl's codes of one block for AVX2 (the generic lanes' 15 midpoint steps went through
// the stack): each value divided by the block's scale, its ordered integer key (|x| capped at 2,
// the sign applied as in nf4_key), the number of midpoint keys below it by 15 compares (ties: the
// lower code), 7 everywhere for a zero scale; packed low nibble first.
void nf4_block_codes(const float* p, float scale, const int32_t* mid, uint8_t* dst) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int i = 0; i < kNf4Block; i += 16) {
    __m256i pairs[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i bits = _mm256_castps_si256(_mm256_div_ps(_mm256_loadu_ps(p + i + 8 * h), s));
      const __m256i m = _mm256_min_epu32(_mm256_and_si256(bits, u32(0x7fffffffu)), u32(0x40000000u));
      const __m256i negative = _mm256_srai_epi32(bits, 31);
      const __m256i key = _mm256_sub_epi32(_mm256_xor_si256(m, negative), negative);
      __m256i code = _mm256_setzero_si256();
      for (int j = 0; j < 15; ++j) code = _mm256_sub_epi32(code, _mm256_cmpgt_epi32(key, u32(uint32_t(mid[j]))));
      if (!(scale > 0.0f)) code = u32(7);
      // even code | odd code << 4 in each 64-bit lane's low byte, the four of them to dwords 0-3
      const __m256i packed = _mm256_and_si256(_mm256_or_si256(code, _mm256_srli_epi64(code, 28)), u32(0xffu));
      pairs[h] = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    }
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(pairs[0]), _mm256_castsi256_si128(pairs[1]));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i / 2), _mm_packus_epi16(words, words));
  }
}

MIXQ_ALWAYS_INLINE __m256i bits_of(const uint16_t* p) {
  return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
}
MIXQ_ALWAYS_INLINE __m256i bits_of(const float* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
MIXQ_ALWAYS_INLINE __m256i bits_of(const f16_bits* p) {
  return _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// The codes of 32 values from p, in order.
template <class T>
MIXQ_ALWAYS_INLINE __m256i codes32(const T* p, __m256 s) {
  const __m256i a = fp8_codes(bits_of(p), s), b = fp8_codes(bits_of(p + 8), s);
  const __m256i c = fp8_codes(bits_of(p + 16), s), d = fp8_codes(bits_of(p + 24), s);
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <class T>
void row_codes(const T* p, int64_t n, float scale, uint8_t* dst) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), codes32(p + i, s));
  if (i < n) {  // the tail through a zero-padded copy
    T tail[32] = {};
    std::copy_n(p + i, n - i, tail);
    alignas(32) uint8_t codes[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), codes32(tail, s));
    std::copy_n(codes, n - i, dst + i);
  }
}
template void row_codes(const uint16_t*, int64_t, float, uint8_t*);
template void row_codes(const float*, int64_t, float, uint8_t*);
template void row_codes(const f16_bits*, int64_t, float, uint8_t*);

// avx512::row_codes_counting, 32 values at a time.
template <class T>
std::pair<uint32_t, uint32_t> row_codes_counting(const T* p, int64_t n, float scale, uint8_t* dst,
                                                 const uint16_t* next, const uint16_t* ahead, uint32_t* table) {
  const __m256 s = _mm256_set1_ps(scale);
  key_range range;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    if (ahead) _mm_prefetch(reinterpret_cast<const char*>(ahead + i), _MM_HINT_NTA);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), codes32(p + i, s));
    range.add(next + i), range.add(next + i + 16);
    count_magnitude_keys(next + i, 32, table);
  }
  if (i < n) row_codes(p + i, n - i, scale, dst + i);
  return range.with_tail(next + i, n - i, table);
}
template std::pair<uint32_t, uint32_t> row_codes_counting(const uint16_t*, int64_t, float, uint8_t*, const uint16_t*,
                                                          const uint16_t*, uint32_t*);
template std::pair<uint32_t, uint32_t> row_codes_counting(const f16_bits*, int64_t, float, uint8_t*, const uint16_t*,
                                                          const uint16_t*, uint32_t*);

}  // namespace avx2
#pragma GCC pop_options
#endif

// Row r of w as F32 (non-finite values zeroed when the policy says so), widened on first use: a
// 16-bit row read in place is mostly never copied.
class row_copy {
 public:
  row_copy(const source_matrix& w, bool zero) : w_(w), zero_(zero), x_(size_t(w.cols)) {}
  const float* operator()(int64_t r) {
    if (r != row_) widen(w_, r * w_.cols, int(w_.cols), x_.data(), zero_), row_ = r;
    return x_.data();
  }

 private:
  const source_matrix& w_;
  bool zero_;
  std::vector<float> x_;
  int64_t row_ = -1;
};

// How the FP8 rows are read: in place with the AVX-512 or AVX2 row kernels (nothing to zero), else
// through an F32 copy of each row.
struct fp8_rows {
  const source_matrix& w;
  bool zero_nonfinite;
  bool in_place;
  bool avx512;  // (else AVX2, where in place)

  fp8_rows(const source_matrix& m, bool zero)
      : w(m), zero_nonfinite(zero),
        in_place(MIXQ_HAVE_SIMD_TARGETS && active_simd_level() >= simd_level::avx2 && !zero),
        avx512(active_simd_level() == simd_level::avx512) {}

  // f(row r's values in their own type, its length, whether AVX-512).
  template <class F>
  auto on_row(int64_t r, F f) const {
    if (w.dtype == source_dtype::bf16) return f(static_cast<const uint16_t*>(w.data) + r * w.cols, w.cols, avx512);
    if (w.dtype == source_dtype::f16) return f(static_cast<const f16_bits*>(w.data) + r * w.cols, w.cols, avx512);
    return f(static_cast<const float*>(w.data) + r * w.cols, w.cols, avx512);
  }

  // Max magnitude bits of row r (>= 0x7f800000: not finite).
  uint32_t amax_bits(int64_t r, row_copy& x) const {
#if MIXQ_HAVE_SIMD_TARGETS
    if (in_place) return on_row(r, [](const auto* p, int64_t n, bool wide) {
      return wide ? avx512::row_amax_bits(p, n) : avx2::row_amax_bits(p, n);
    });
#endif
    return std::bit_cast<uint32_t>(fp8_row_amax(x(r), w.cols));
  }
  void codes(int64_t r, row_copy& x, float scale, uint8_t* dst) const {
#if MIXQ_HAVE_SIMD_TARGETS
    if (in_place) return on_row(r, [&](const auto* p, int64_t n, bool wide) {
      return wide ? avx512::row_codes(p, n, scale, dst) : avx2::row_codes(p, n, scale, dst);
    });
#endif
    fp8_row_codes(x(r), w.cols, scale, dst);
  }
};

// x · 2^k rounded to F16 into proxy (every |x · 2^k| below 2^15), and Σ δ² with
// δ = |x · 2^k − proxy| + 2^-20 max(|x · 2^k|, |proxy|): how far apart, in L2, the rows of the
// reference's FP8 errors of x · 2^k and of proxy can be under any scale (see row_mse_search).
template <simd_level L>
MIXQ_ALWAYS_INLINE double f16_proxy_row_impl(const float* x, int64_t n, int k, uint16_t* proxy) {
  using lanes::v16f, lanes::v16u, lanes::v8d;
  const float scale = std::ldexp(1.0f, k);
  const double scale_d = std::ldexp(1.0, k);
  const auto delta = [](v8d a, v8d b) {  // δ per lane
    return lanes::abs_of(a - b) + 0x1p-20 * lanes::max_nonnegative(lanes::abs_of(a), lanes::abs_of(b));
  };
  lanes::lane_sums8<L> acc;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const v16u bits = lanes::load_bits(x + i);
    const v16f v = (v16f)bits * scale;  // (exact but where it underflows: δ takes x · 2^k itself)
    const v16u u = (v16u)v & 0x7fffffffu, sign = (v16u)v & 0x80000000u;
    // F16 normals: RNE to 10 mantissa bits; below 2^-14, multiples of 2^-24 (0.5 + |v| rounds so)
    const v16u normal = (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
    const v16f tiny = (v16f)u + 0.5f;
    const v16u is_normal = ~lanes::below(u, 0x38800000u);
    const v16u code = (is_normal & ((normal >> 13) - (112u << 10))) | (~is_normal & ((v16u)tiny - 0x3f000000u));
    const v16f value = (v16f)((is_normal & normal) | (~is_normal & (v16u)(tiny - 0.5f))) ;
    const lanes::v16h h = __builtin_convertvector(code | (sign >> 16), lanes::v16h);
    std::memcpy(proxy + i, &h, sizeof h);
    v8d x_lo, x_hi, p_lo, p_hi;
    lanes::widen((v16f)bits, &x_lo, &x_hi);
    lanes::widen(value, &p_lo, &p_hi);
    const v8d d_lo = delta(lanes::abs_of(x_lo) * scale_d, p_lo), d_hi = delta(lanes::abs_of(x_hi) * scale_d, p_hi);
    acc.add(d_lo * d_lo + d_hi * d_hi);
  }
  double d2 = acc.total();
  for (; i < n; ++i) {
    const _Float16 h = static_cast<_Float16>(x[i] * scale);  // (RNE; F16C where the target has it)
    proxy[i] = std::bit_cast<uint16_t>(h);
    const double a = double(x[i]) * scale_d, b = double(f16_decode_table()[proxy[i]]);  // (both exact)
    const double d = std::abs(a - b) + 0x1p-20 * std::max(std::abs(a), std::abs(b));
    d2 += d * d;
  }
  return d2;
}
MIXQ_SIMD_KERNEL(double, f16_proxy_row, f16_proxy_row_impl, (const float* x, int64_t n, int k, uint16_t* proxy),
                 (x, n, k, proxy))

// Per-channel MSE: the first multiplier with the least squared error over one row. Over 16-bit
// values the row's counted magnitudes rule out all but (almost always) one candidate first, as per
// tensor (fp8_mse_histogram); the rest are evaluated exactly, in the reference's order. SIZE_MAX
// when no candidate's error is finite (every scale infinite).
//
// An F32 row of other values is counted as an F16 rounding of it (scaled by a power of two into
// F16's range: every candidate's error scales by its square), whose errors bound the row's: an
// element's FP8 error under scale s is its distance to the grid s · FP8 values within 4.01u|x|
// (u = 2^-24: the quotient's and the dequantized value's roundings), and that distance moves by at
// most |x − x'| when x moves to x', so the row's error vector is within ||δ|| (f16_proxy_row) of
// the proxy's in L2: sqrt(E) within sqrt(D) of sqrt(E'), E' within the estimate's own bound of its
// estimate. The candidates those intervals cannot rule out are evaluated exactly.
struct row_mse_search {
  row_magnitude_counter counter;
  std::vector<size_t> left;
  std::vector<float> subset;
  std::vector<uint16_t> proxy;
  std::vector<double> err;

  // The proxy's contenders for an F32 row x whose values are not all BF16 values; nullopt where the
  // bound's conditions fail (values near the float range's ends).
  std::optional<std::vector<size_t>> proxy_contenders(const source_matrix& w, const float* x, float amax,
                                                      std::span<const float> multipliers) {
    if (!(amax >= 0x1p-60f && amax <= 0x1p60f)) return std::nullopt;
    const int k = 14 - std::ilogb(amax);  // amax · 2^k in [2^14, 2^15)
    const float amax_scaled = std::ldexp(amax, k);
    // Every candidate's scale must scale with the row: none at fp8_scale_for_amax's floor (amax · m
    // at most 2^-24 takes scale 1) or past the float range, in either space.
    for (float m : multipliers)
      if (!(amax * m > 0x1p-24f) ||
          fp8_scale_for_amax(amax_scaled * m) != std::ldexp(fp8_scale_for_amax(amax * m), k) ||
          !std::isfinite(fp8_scale_for_amax(amax_scaled * m)) ||
          !std::isfinite(fp8_scale_for_amax(amax * m)))
        return std::nullopt;
    proxy.resize(size_t(w.cols));
    const double d2 = f16_proxy_row(x, w.cols, k, proxy.data()) * (1.0 + 2.0 * rounding_gamma(double(w.cols) + 16.0));
    const source_matrix row{proxy.data(), source_dtype::f16, 1, w.cols, w.name};
    if (!counter.contenders(row, 0, nullptr, amax_scaled, multipliers)) return std::nullopt;
    const std::vector<double>& estimate = counter.estimate.estimates();
    const double rel = counter.estimate.relative_bound(), sum_rounding = rounding_gamma(double(w.cols) + 8.0);
    const double d = std::sqrt(d2) * (1.0 + 0x1p-50);
    std::vector<double> lower(multipliers.size()), upper(multipliers.size());
    double least_upper = INFINITY;
    for (size_t c = 0; c < multipliers.size(); ++c) {
      // (+inf: left unevaluated in the proxy's space only, by a margin far inside sqrt(D): kept)
      const double lo = estimate[c] == INFINITY
                            ? 0.0
                            : std::max(0.0, std::sqrt(std::max(0.0, estimate[c] * (1.0 - rel))) * (1.0 - 0x1p-50) - d);
      const double hi = std::sqrt(estimate[c] * (1.0 + rel)) * (1.0 + 0x1p-50) + d;
      lower[c] = lo * lo * (1.0 - sum_rounding) * (1.0 - 0x1p-50);
      upper[c] = hi * hi * (1.0 + sum_rounding) * (1.0 + 0x1p-50);
      least_upper = std::min(least_upper, upper[c]);
    }
    std::vector<size_t> kept;
    for (size_t c = 0; c < multipliers.size(); ++c)
      if (lower[c] <= least_upper) kept.push_back(c);
    return kept;
  }

  // counted: row r's keys, already counted by counter.count16 (a 16-bit row in place), or null.
  size_t best(const source_matrix& w, int64_t r, row_copy& x, float amax, std::span<const float> multipliers,
              const std::pair<uint32_t, uint32_t>* counted) {
    left.clear();
    const bool f32 = w.dtype == source_dtype::f32;
    if (auto kept = counted ? counter.counted_contenders(w.dtype, *counted, amax, multipliers)
                            : counter.contenders(w, r, f32 ? x(r) : nullptr, amax, multipliers)) {
      left = std::move(*kept);
      if (left.size() <= 1) return left.empty() ? SIZE_MAX : left[0];
    } else if (auto proxied = f32 ? proxy_contenders(w, x(r), amax, multipliers) : std::nullopt) {
      left = std::move(*proxied);
      if (left.empty()) return SIZE_MAX;
    } else {
      for (size_t c = 0; c < multipliers.size(); ++c) left.push_back(c);
    }
    subset.clear();
    for (size_t c : left) subset.push_back(multipliers[c]);
    err.resize(subset.size());
    fp8_row_errors(x(r), w.cols, amax, subset, err.data());
    size_t k_best = SIZE_MAX;
    double least = INFINITY;
    for (size_t k = 0; k < subset.size(); ++k)
      if (err[k] < least) least = err[k], k_best = k;  // strict: the first least, as the reference (NaN never)
    return k_best == SIZE_MAX ? SIZE_MAX : left[k_best];
  }
};

// A 16-bit magnitude key's value as float bits, as row_amax_bits gives a row's largest
// (>= 0x7f800000: inf or NaN).
uint32_t magnitude_bits(source_dtype dtype, uint32_t key) {
  return dtype == source_dtype::bf16 ? key << 16 : std::bit_cast<uint32_t>(f16_decode_table()[key]);
}

// Per-channel scales (max, or the MSE search over multipliers) and codes, row by row, each row's
// codes while it is in cache. check_rows: the rows are read in place with no scan before (one
// pass over the weight); false as soon as a row holds an inf / NaN (its max magnitude bits
// >= 0x7f800000), for the general path to scan and apply the policy.
bool fp8_per_channel_rows(const source_matrix& w, const fp8_rows& rows, std::span<const float> multipliers,
                          bool check_rows, fp8_weight& q) {
  int64_t failed_row = -1;  // the first row whose candidates all err by NaN (infinite scales)
  float failed_amax = 0.0f;
  int finite = 1;
  const bool count_in_pass = rows.in_place && !multipliers.empty() && w.dtype != source_dtype::f32;
#pragma omp parallel reduction(& : finite) if (worth_threads(w.size() * int64_t(1 + multipliers.size())))
  {
    row_copy x(w, rows.zero_nonfinite);
    row_mse_search search;
    // (each thread's rows one contiguous share, so that it can count its next row early)
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t share = (w.rows + nt - 1) / nt, first = std::min(w.rows, t * share),
                  end = std::min(w.rows, first + share);
    const auto* bits16 = static_cast<const uint16_t*>(w.data);
    std::pair<uint32_t, uint32_t> next_keys{};
    int64_t counted = -1;  // the row whose keys next_keys holds (counted beside the codes before it)
    for (int64_t r = first; r < end; ++r) {
      // A 16-bit row read in place for the search is counted in the pass that finds its max
      // magnitude (its largest key): past a share's first row, the previous row's code pass.
      std::pair<uint32_t, uint32_t> keys{};
      if (count_in_pass) keys = counted == r ? next_keys : search.counter.count16(bits16 + r * w.cols, w.cols);
      const uint32_t bits = count_in_pass ? magnitude_bits(w.dtype, keys.second) : rows.amax_bits(r, x);
      if (check_rows && bits >= 0x7f800000u) {
        if (count_in_pass) search.counter.forget(keys);
        finite = 0;
        continue;
      }
      const float amax = std::bit_cast<float>(bits);
      const size_t chosen =
          multipliers.empty() ? 0 : search.best(w, r, x, amax, multipliers, count_in_pass ? &keys : nullptr);
      if (chosen == SIZE_MAX) {
#pragma omp critical
        if (failed_row < 0 || r < failed_row) failed_row = r, failed_amax = amax;
      }
      q.scales[size_t(r)] =
          fp8_scale_for_amax(!multipliers.empty() && chosen != SIZE_MAX ? amax * multipliers[chosen] : amax);
#if MIXQ_HAVE_SIMD_TARGETS
      if (count_in_pass && r + 1 < end) {  // (in place: AVX-512 or AVX2)
        next_keys = rows.on_row(r, [&](const auto* p, int64_t n, bool wide) {
          const float scale = q.scales[size_t(r)];
          uint8_t* dst = q.codes.data() + r * w.cols;
          const uint16_t* next = bits16 + (r + 1) * w.cols;
          const uint16_t* ahead = r + 2 < end ? next + w.cols : nullptr;
          uint32_t* table = search.counter.table.data();
          return wide ? avx512::row_codes_counting(p, n, scale, dst, next, ahead, table)
                      : avx2::row_codes_counting(p, n, scale, dst, next, ahead, table);
        });
        counted = r + 1;
        continue;
      }
#endif
      rows.codes(r, x, q.scales[size_t(r)], q.codes.data() + r * w.cols);
    }
  }
  if (!finite) return false;
  if (failed_row >= 0) throw fp8_no_finite_candidate(w.name, failed_row, failed_amax);
  return true;
}

fp8_weight fp8_quantize(const source_matrix& w, const fp8_options& options) {
  if (w.rows <= 0 || w.cols <= 0) throw format_error(fmt::format("tensor '{}': empty shape", w.name));
  require_finite_static_amax(w.name, options.amax, "FP8");
  require_valid_multipliers(w.name, options.multipliers, "FP8");
  const bool per_tensor = options.granularity == fp8_granularity::per_tensor;
  fp8_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.codes.resize(size_t(w.size()));
  std::span<const float> multipliers =
      options.selector == fp8_selector::mse
          ? (options.multipliers.empty() ? default_mse_multipliers() : options.multipliers)
          : std::span<const float>();
  if (!per_tensor) {  // rows read in place in one pass where they can be, else after the scan
    q.scales.resize(size_t(w.rows));
    const fp8_rows in_place(w, false);
    if (in_place.in_place && fp8_per_channel_rows(w, in_place, multipliers, true, q)) return q;
    const bool zero = apply_nonfinite_policy(w, scan_source(w), options.nonfinite);
    fp8_per_channel_rows(w, fp8_rows(w, zero), multipliers, false, q);
    return q;
  }
  bool zero = false;
  float tensor_amax = options.amax;
  std::vector<float> contenders;
  // A 16-bit source (or F32 holding BF16 values): the magnitude histogram rules out all but
  // (almost always) one candidate without the per-element errors, and gives the amax; the full
  // scan only to report inf / NaN.
  std::optional<magnitude_histogram> h;
  if (!multipliers.empty()) h = magnitude_histogram::of(w);
  if (h) {
    if (h->has_nonfinite()) {
      zero = apply_nonfinite_policy(w, scan_source(w), options.nonfinite);
      h->zero_nonfinite();
    }
    if (!(tensor_amax > 0.0f)) tensor_amax = h->amax();
    fp8_error_estimate estimate;
    estimate.take(*h);
    for (size_t c : estimate.contenders(tensor_amax, multipliers)) contenders.push_back(multipliers[c]);
    if (contenders.empty()) throw fp8_no_finite_candidate(w.name, -1, tensor_amax);
    multipliers = contenders;
  } else {
    const source_scan scan = scan_source(w);
    zero = apply_nonfinite_policy(w, scan, options.nonfinite);
    if (!(tensor_amax > 0.0f)) tensor_amax = scan.amax;
    // Any F32 values: bucketed moments rule out all but (almost always) one candidate.
    if (!multipliers.empty() && w.dtype == source_dtype::f32)
      if (auto kept = fp8_moment_contenders(w, scan.amax, tensor_amax, multipliers)) {
        for (size_t c : *kept) contenders.push_back(multipliers[c]);
        if (contenders.empty()) throw fp8_no_finite_candidate(w.name, -1, tensor_amax);
        multipliers = contenders;
      }
  }
  q.scales.assign(1, fp8_scale_for_amax(tensor_amax));
  if (multipliers.size() == 1) {  // decided: only the codes are left
    q.scales[0] = fp8_scale_for_amax(tensor_amax * multipliers[0]);
    if (!std::isfinite(q.scales[0])) throw fp8_no_finite_candidate(w.name, -1, tensor_amax);  // (errs by NaN)
    multipliers = {};
  }
  const size_t n_cand = multipliers.size();
  const fp8_rows rows(w, zero);
  const auto write_codes = [&] {
#pragma omp parallel if (worth_threads(w.size()))
    {
      row_copy x(w, zero);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < w.rows; ++r) rows.codes(r, x, q.scales[0], q.codes.data() + r * w.cols);
    }
  };
  if (n_cand == 0) {  // max, or decided
    write_codes();
    return q;
  }
  // MSE: every row's squared error under every candidate left, rows in parallel, then the codes.
  std::vector<double> row_err(size_t(w.rows) * n_cand);
#pragma omp parallel if (worth_threads(w.size() * int64_t(1 + n_cand)))
  {
    std::vector<float> x(size_t(w.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) {
      widen(w, r * w.cols, int(w.cols), x.data(), zero);
      fp8_row_errors(x.data(), w.cols, tensor_amax, multipliers, row_err.data() + size_t(r) * n_cand);
    }
  }

  double best = INFINITY;
  for (size_t c = 0; c < n_cand; ++c) {
    double total = 0.0;  // rows in order, as fp8_sq_error sums them
    for (int64_t r = 0; r < w.rows; ++r) total += row_err[size_t(r) * n_cand + c];
    if (total < best) best = total, q.scales[0] = fp8_scale_for_amax(tensor_amax * multipliers[c]);
  }
  if (!(best < INFINITY)) throw fp8_no_finite_candidate(w.name, -1, tensor_amax);
  write_codes();
  return q;
}

void fp8_dequantize(const fp8_weight& q, std::span<float> out) {
  require_output(out, q.rows * q.cols, "fp8_dequantize");
  const float* e4m3 = e4m3_decode_table();
#pragma omp parallel for schedule(static) if (worth_threads(q.rows * q.cols))
  for (int64_t r = 0; r < q.rows; ++r) {
    const float scale = q.scale_of_row(r);
    for (int64_t c = 0; c < q.cols; ++c) out[size_t(r * q.cols + c)] = e4m3[q.codes[size_t(r * q.cols + c)]] * scale;
  }
}

namespace {

// 16 floats from p for the AVX2 clones' lanes, where a 64-byte vector is not a machine mode and
// GCC 12 would copy a memcpy'd one into a temporary in 16-byte pieces (whose 32-byte reads then
// wait: no store forwarding), and build a splat of a variable through 16 scalar stores. Two 32-byte
// reads joined avoid the first; times() multiplies the halves before joining them (MXFP4 / MXFP8
// 2x faster on Zen 3), which for NF4's division was slower than dividing the joined vector.
typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
template <simd_level L>
MIXQ_ALWAYS_INLINE lanes::v16f load16(const float* p) {
  if constexpr (L != simd_level::avx2) return (lanes::v16f)lanes::load_bits(p);
  const v8f a = *reinterpret_cast<const v8f_unaligned*>(p), b = *reinterpret_cast<const v8f_unaligned*>(p + 8);
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
template <simd_level L>
MIXQ_ALWAYS_INLINE lanes::v16f times(const float* p, float s) {
  if constexpr (L != simd_level::avx2) return (lanes::v16f)lanes::load_bits(p) * s;
  const v8f a = *reinterpret_cast<const v8f_unaligned*>(p) * s, b = *reinterpret_cast<const v8f_unaligned*>(p + 8) * s;
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// MX blocks of F32 values: E8M0 scales and element codes (MXFP4 packed, low nibble even), as
// mx_quantize_block computes them; the loops over a block's 32 values vectorize per target. False
// when a block holds an inf / NaN (its codes are then meaningless).
template <simd_level L>
MIXQ_ALWAYS_INLINE bool mx_blocks_impl(const float* x, int64_t blocks, bool fp4, uint8_t* scales, uint8_t* elements) {
  const format_id format = fp4 ? format_id::mxfp4 : format_id::mxfp8;
  const int emax = fp4 ? 2 : 8;
  uint32_t largest = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* p = x + b * kMxBlock;
    uint32_t m = 0;
    for (int i = 0; i < kMxBlock; ++i) m = std::max(m, std::bit_cast<uint32_t>(p[i]) & 0x7fffffffu);
    largest = std::max(largest, m);
    // ilogb from the bits of a normal amax; zero and subnormal ones through the reference's function
    const int e = m >= 0x00800000u ? ue8m0_t::from_exponent(int(m >> 23) - 127 - emax).exponent()
                                   : mx_shared_exponent(std::bit_cast<float>(m), format);
    scales[b] = ue8m0_t::from_exponent(e).bits;
    const float inv = -e >= -126 ? std::bit_cast<float>(uint32_t(127 - e) << 23) : 0x1p-127f;  // 2^-e, e <= 127
    for (int i = 0; i < kMxBlock; i += 16) {
      const lanes::v16f v = times<L>(p + i, inv);
      const lanes::v16u sign = (lanes::v16u)v >> 31;  // (-0 too, as the reference's signbit)
      const lanes::v16f magnitude = lanes::abs_of((lanes::v16u)v);
      if (fp4)
        lanes::store_packed<L>(lanes::e2m1_codes(magnitude) | sign << 3, elements + b * (kMxBlock / 2) + i / 2);
      else
        lanes::store_bytes(lanes::e4m3_encode(magnitude) | sign << 7, elements + b * kMxBlock + i);
    }
  }
  return largest < 0x7f800000u;
}
MIXQ_SIMD_KERNEL(bool, mx_blocks, mx_blocks_impl,
                 (const float* x, int64_t blocks, bool fp4, uint8_t* scales, uint8_t* elements),
                 (x, blocks, fp4, scales, elements))

// NF4 blocks of F32 values: FP16 absmax scales and packed codes, as nf4_quantize_block. False when
// a block holds an inf / NaN.
// A float's value as a signed integer key that orders as the values do, for |x| up to 2 (larger
// ones capped at 2; -0 and +0 both key 0): the compares as integer subtractions.
MIXQ_ALWAYS_INLINE lanes::v16i nf4_key(lanes::v16f x) {
  const lanes::v16u bits = (lanes::v16u)x, cap = lanes::v16u{} + 0x40000000u;
  const lanes::v16u m = lanes::select(lanes::below(bits & 0x7fffffffu, 0x40000000u), bits & 0x7fffffffu, cap);
  const lanes::v16u negative = (lanes::v16u)((lanes::v16i)bits >> 31);
  return (lanes::v16i)((m ^ negative) - negative);
}

template <simd_level L>
MIXQ_ALWAYS_INLINE bool nf4_blocks_impl(const float* x, int64_t blocks, const float* midpoints, uint16_t* scales,
                                        uint8_t* packed) {
  int32_t mid[15];  // the midpoints' keys (each below 1 in magnitude)
  for (int j = 0; j < 15; ++j) mid[j] = nf4_key(lanes::broadcast(midpoints[j]))[0];
  uint32_t largest = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* p = x + b * kNf4Block;
    uint32_t m = 0;
    for (int i = 0; i < kNf4Block; ++i) m = std::max(m, std::bit_cast<uint32_t>(p[i]) & 0x7fffffffu);
    largest = std::max(largest, m);
    // FP16 has no room above 65504; the conversion is IEEE RNE (F16C where the target has it), as fp16_encode
    const _Float16 half = static_cast<_Float16>(std::fmin(std::bit_cast<float>(m), 65504.0f));
    scales[b] = std::bit_cast<uint16_t>(half);
    const float scale = static_cast<float>(half);
#if MIXQ_HAVE_SIMD_TARGETS
    if constexpr (L == simd_level::avx2) {
      avx2::nf4_block_codes(p, scale, mid, packed + b * (kNf4Block / 2));
      continue;
    }
#endif
    for (int i = 0; i < kNf4Block; i += 16) {
      const lanes::v16f v = load16<L>(p + i) / scale;
      // the number of midpoints below v (ties: the lower code): mid − key < 0 where v > mid
      const lanes::v16i key = nf4_key(v);
      lanes::v16u code = {};
      for (int j = 0; j < 15; ++j) code += (lanes::v16u)(mid[j] - key) >> 31;
      lanes::store_packed<L>(scale > 0.0f ? code : lanes::v16u{} + 7u, packed + b * (kNf4Block / 2) + i / 2);
    }
  }
  return largest < 0x7f800000u;
}
MIXQ_SIMD_KERNEL(bool, nf4_blocks, nf4_blocks_impl,
                 (const float* x, int64_t blocks, const float* midpoints, uint16_t* scales, uint8_t* packed),
                 (x, blocks, midpoints, scales, packed))

// Blocks of `block` values of w, widened to F32 64 blocks at a time, in parallel; blocks_of returns
// false for a chunk that holds an inf / NaN. One pass where every value is finite (the scales are
// per block: nothing global to find first); otherwise the scan, nonfinite's policy and a second pass.
template <class Blocks>
void for_block_chunks(const source_matrix& w, int block, nonfinite_policy nonfinite, const Blocks& blocks_of) {
  const int64_t blocks = w.size() / block, chunk = 64;
  const auto pass = [&](bool zero) {
    int finite = 1;
#pragma omp parallel reduction(& : finite) if (worth_threads(w.size()))
    {
      std::vector<float> x(size_t(chunk * block));
#pragma omp for schedule(static)
      for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
        const int64_t n = std::min(chunk, blocks - b0);
        widen(w, b0 * block, int(n * block), x.data(), zero);
        finite &= int(blocks_of(x.data(), b0, n));
      }
    }
    return finite != 0;
  };
  if (!pass(false)) pass(apply_nonfinite_policy(w, scan_source(w), nonfinite));
}

}  // namespace

mx_weight mx_quantize(const source_matrix& w, format_id format, nonfinite_policy nonfinite) {
  if (format != format_id::mxfp4 && format != format_id::mxfp8)
    throw format_error(fmt::format("mx_quantize: {} is not an MX format", traits_of(format).name));
  require_shape(w, format);
  const bool fp4 = format == format_id::mxfp4;
  mx_weight q;
  q.format = format;
  q.rows = w.rows;
  q.cols = w.cols;
  q.scales.resize(size_t(w.size() / kMxBlock));
  q.elements.resize(size_t(fp4 ? w.size() / 2 : w.size()));
  for_block_chunks(w, kMxBlock, nonfinite, [&](const float* x, int64_t b0, int64_t n) {
    return mx_blocks(x, n, fp4, q.scales.data() + b0, q.elements.data() + b0 * (fp4 ? kMxBlock / 2 : kMxBlock));
  });
  return q;
}

nf4_weight nf4_quantize(const source_matrix& w, nonfinite_policy nonfinite) {
  require_shape(w, format_id::nf4);
  nf4_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.packed.resize(size_t(w.size() / 2));
  q.scales.resize(size_t(w.size() / kNf4Block));
  const std::span<const float> codebook = nf4_codebook();
  float midpoints[15];
  for (size_t i = 0; i < 15; ++i) midpoints[i] = (codebook[i] + codebook[i + 1]) * 0.5f;  // as nf4_code's
  for_block_chunks(w, kNf4Block, nonfinite, [&](const float* x, int64_t b0, int64_t n) {
    return nf4_blocks(x, n, midpoints, q.scales.data() + b0, q.packed.data() + b0 * (kNf4Block / 2));
  });
  return q;
}

namespace {

// Element codes times their block's scale, as mx_dequantize / nf4_dequantize compute them:
// 4-bit codes through a 16-entry table (one lane permute), bytes through the E4M3 table.
MIXQ_CLONES void scaled_nibbles(const uint8_t* packed, const float* table16, const float* scales, int block,
                                int64_t blocks, float* out) {
  lanes::v16f table;
  std::memcpy(&table, table16, sizeof table);
  const lanes::v16u even = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7};
  const lanes::v16u shift = {0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4};
  for (int64_t b = 0; b < blocks; ++b)
    for (int i = 0; i < block; i += 16) {
      const uint8_t* p = packed + (b * block + i) / 2;
      lanes::v16u bytes;
      for (int j = 0; j < 16; ++j) bytes[j] = p[even[j]];
      const lanes::v16f v = __builtin_shuffle(table, (bytes >> shift) & 15u) * scales[b];
      std::memcpy(out + b * block + i, &v, sizeof v);
    }
}
MIXQ_CLONES void scaled_bytes(const uint8_t* codes, const float* table256, const float* scales, int block,
                              int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b)
    for (int i = 0; i < block; ++i) out[b * block + i] = table256[codes[b * block + i]] * scales[b];
}

}  // namespace

void mx_dequantize(const mx_weight& q, std::span<float> out) {
  require_output(out, q.rows * q.cols, "mx_dequantize");
  const int64_t blocks = q.rows * q.cols / kMxBlock, chunk = 256;
  float e2m1[16];
  for (uint8_t c = 0; c < 16; ++c) e2m1[c] = e2m1_t{c}.to_float();
#pragma omp parallel for schedule(static) if (worth_threads(q.rows * q.cols))
  for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
    const int64_t n = std::min(chunk, blocks - b0);
    float scales[chunk];
    for (int64_t b = 0; b < n; ++b) scales[b] = ue8m0_t{q.scales[size_t(b0 + b)]}.to_float();
    float* o = out.data() + b0 * kMxBlock;
    if (q.format == format_id::mxfp4)
      scaled_nibbles(q.elements.data() + b0 * kMxBlock / 2, e2m1, scales, kMxBlock, n, o);
    else
      scaled_bytes(q.elements.data() + b0 * kMxBlock, e4m3_decode_table(), scales, kMxBlock, n, o);
  }
}

void nf4_dequantize(const nf4_weight& q, std::span<float> out) {
  require_output(out, q.rows * q.cols, "nf4_dequantize");
  const int64_t blocks = q.rows * q.cols / kNf4Block, chunk = 256;
  const float* codebook = nf4_codebook().data();
#pragma omp parallel for schedule(static) if (worth_threads(q.rows * q.cols))
  for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
    const int64_t n = std::min(chunk, blocks - b0);
    float scales[chunk];
    for (int64_t b = 0; b < n; ++b) scales[b] = f16_decode_table()[q.scales[size_t(b0 + b)]];
    scaled_nibbles(q.packed.data() + b0 * kNf4Block / 2, codebook, scales, kNf4Block, n, out.data() + b0 * kNf4Block);
  }
}

void fake_quant_weight(const source_matrix& w, const weight_quant_spec& spec, std::span<float> out) {
  require_output(out, w.size(), fmt::format("tensor '{}'", w.name));
  switch (spec.format) {
    case format_id::bf16: {
      const bool zero = apply_nonfinite_policy(w, scan_source(w), spec.nonfinite);
#pragma omp parallel for schedule(static) if (worth_threads(w.size()))
      for (int64_t r = 0; r < w.rows; ++r) {
        float* o = out.data() + r * w.cols;
        load_f32(w, r * w.cols, int(w.cols), o, zero);
        for (int64_t c = 0; c < w.cols; ++c) o[c] = bf16_decode(bf16_encode(o[c]));
      }
      return;
    }
    case format_id::fp8_per_tensor:
    case format_id::fp8_per_channel: cpu::fp8_dequantize(cpu::fp8_quantize(w, fp8_options_for(spec)), out); return;
    case format_id::nvfp4:
    case format_id::nvfp4_w4a16: cpu::nvfp4_dequantize(cpu::nvfp4_quantize(w, nvfp4_options_for(spec)), out); return;
    case format_id::mxfp4:
    case format_id::mxfp8: cpu::mx_dequantize(cpu::mx_quantize(w, spec.format, spec.nonfinite), out); return;
    case format_id::nf4: cpu::nf4_dequantize(cpu::nf4_quantize(w, spec.nonfinite), out); return;
    case format_id::count: break;
  }
  throw format_error("fake_quant_weight: unknown format");
}

}  // namespace mixq::cpu
