// E4M3 rounding in 8 AVX2 lanes, for the AVX2 NVFP4 and FP8 kernels (quantize_nvfp4.cpp,
// quantize.cpp, fp8_mse_histogram.cpp): include it where "arch=x86-64-v3" is the target (#pragma
// GCC target), outside any namespace. Each gives, lane by lane, what the scalar reference in
// formats/minifloat.hpp gives; the kernels' tests check them through every path that uses them.
#pragma once

#include <immintrin.h>

#include "formats/nvfp4.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu::e4m3_avx2 {

// q >= 0 rounded to E4M3's step in its binade, ties to the even code: t = q + C with C = b · 2^20,
// b = max(2^floor(log2 q), 2^-6), in one multiply-add (C exact in it), rounds to b / 8 (the
// subnormals' 2^-9 below 2^-6). The sum's bits count those steps above C (8 to 16 in a normal
// binade), and each binade adds 8 codes.
struct rounding {
  __m256i b;  // as bits
  __m256 t;
};
MIXQ_ALWAYS_INLINE rounding round_to_e4m3(__m256 q) {
  const __m256i exponent = _mm256_and_si256(_mm256_castps_si256(q), _mm256_set1_epi32(0x7f800000));
  const __m256i b = _mm256_max_epu32(exponent, _mm256_set1_epi32(0x3c800000));
  return {b, _mm256_fmadd_ps(_mm256_castsi256_ps(b), _mm256_set1_ps(0x1p20f), q)};
}
// The code of the rounded value, unsaturated: t − C + 8 log2 b + 48 in the bits (q = 1: 8 + 48 =
// 0x38); past 448, and where C overflows, at least 0x7f as an unsigned number.
MIXQ_ALWAYS_INLINE __m256i code_of(rounding r) {
  const __m256i k = _mm256_sub_epi32(_mm256_srli_epi32(r.b, 20), _mm256_set1_epi32((20 << 23) + 968));
  return _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(r.t), r.b), k);
}
// The rounded value itself, unsaturated: t − C (exact).
MIXQ_ALWAYS_INLINE __m256 value_of(rounding r) {
  return _mm256_fnmadd_ps(_mm256_castsi256_ps(r.b), _mm256_set1_ps(0x1p20f), r.t);
}
// A block scale s >= 0 (not NaN) clamped to [2^-9, 448] (nvfp4_clamp_block_scale) and rounded:
// its code and value (in that range nothing saturates).
struct block_scale {
  __m256i code;
  __m256 value;
};
MIXQ_ALWAYS_INLINE block_scale round_block_scale(__m256 s) {
  const rounding r =
      round_to_e4m3(_mm256_min_ps(_mm256_max_ps(s, _mm256_set1_ps(kNvfp4MinBlockScale)), _mm256_set1_ps(448.0f)));
  return {code_of(r), value_of(r)};
}
// lanes::e4m3_round: the value saturating at 448 (from 464 up, and where C overflows: inf − inf is
// NaN, and min gives its second operand).
MIXQ_ALWAYS_INLINE __m256 e4m3_rounded(__m256 q) {
  return _mm256_min_ps(value_of(round_to_e4m3(q)), _mm256_set1_ps(448.0f));
}

// a − (a's FP8 value under scale) for 8 magnitudes a, in double (exact: as x − the signed value's
// for x = ±a), lanes 0-3 into d[0] and 4-7 into d[1]; the value as lanes::fp8_dequantized's.
MIXQ_ALWAYS_INLINE void differences_from_fp8(__m256 a, __m256 scale, __m256d* d) {
  const __m256 v = _mm256_mul_ps(e4m3_rounded(_mm256_div_ps(a, scale)), scale);
  d[0] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  d[1] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

}  // namespace mixq::cpu::e4m3_avx2
