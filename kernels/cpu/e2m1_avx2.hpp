// E2M1 rounding in 8 AVX2 lanes, for the AVX2 NVFP4 kernels (quantize_nvfp4.cpp) and their tests:
// include it where "arch=x86-64-v3" is the target (#pragma GCC target), outside any namespace.
// Each gives, lane by lane, what the scalar reference in formats/minifloat.hpp gives.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu::e2m1_avx2 {

MIXQ_ALWAYS_INLINE __m256i u32(uint32_t x) { return _mm256_set1_epi32(int(x)); }

// b = max(1, 2^floor(log2 q)) of q >= 0: the binade whose level spacing (b / 2) rounds q.
MIXQ_ALWAYS_INLINE __m256 e2m1_binade(__m256 q) {
  return _mm256_and_ps(_mm256_max_ps(q, _mm256_set1_ps(1.0f)), _mm256_castsi256_ps(u32(0x7f800000u)));
}
// q >= 0 rounded to the spacing of its binade's E2M1 levels (1/2 below 2, then 1, then 2), to
// nearest, ties to the even code as the codes take them: q + C − C with C = 2^22 · max(1,
// 2^floor(log2 q)), in two multiply-adds (C = b · 2^22 is exact in each). Below 7 this is
// e2m1_round_magnitude; e2m1_levels saturates.
MIXQ_ALWAYS_INLINE __m256 e2m1_rounded(__m256 q) {
  const __m256 b = e2m1_binade(q);
  const __m256 c = _mm256_set1_ps(0x1p22f);
  return _mm256_fnmadd_ps(b, c, _mm256_fmadd_ps(b, c, q));
}
// q >= 0's code (e2m1_magnitude_code) straight from the sum t = q + C of e2m1_rounded, without its
// level: t's mantissa counts the steps of b / 2 above C (0 to 4), and each binade from b = 2 on adds
// two codes, so the code is t − C + 2 log2 b in the bits, saturating at 7. (Where C overflows, or q
// is NaN, the difference is at least 7 as an unsigned number.)
MIXQ_ALWAYS_INLINE __m256i e2m1_codes(__m256 q) {
  const __m256 b = e2m1_binade(q);
  const __m256i t = _mm256_castps_si256(_mm256_fmadd_ps(b, _mm256_set1_ps(0x1p22f), q));
  const __m256i bits = _mm256_castps_si256(b);  // C = b + 22 in the exponent; 2 log2 b = (b >> 22) − 254
  const __m256i code = _mm256_add_epi32(_mm256_sub_epi32(t, bits), _mm256_sub_epi32(_mm256_srli_epi32(bits, 22), u32((22u << 23) + 254)));
  return _mm256_min_epu32(code, u32(7));
}
// e2m1_round_magnitude of q >= 0, the magnitude of its code without the code. (Beyond 2^106 C
// overflows and the sum is +inf or NaN, as for q = inf or NaN, and the min still gives 6.)
MIXQ_ALWAYS_INLINE __m256 e2m1_levels(__m256 q) {
  return _mm256_min_ps(e2m1_rounded(q), _mm256_set1_ps(6.0f));  // (NaN: the second operand)
}
// A level's code: from its exponent ((bits >> 22) − 252 from 1 to 6), 0 for 0, 1 for 1/2.
MIXQ_ALWAYS_INLINE __m256i e2m1_code_of_level(__m256 level) {
  const __m256i bits = _mm256_castps_si256(level);
  const __m256i code = _mm256_max_epi32(_mm256_sub_epi32(_mm256_srli_epi32(bits, 22), u32(252)), _mm256_setzero_si256());
  return _mm256_sub_epi32(code, _mm256_cmpeq_epi32(bits, u32(0x3f000000u)));
}

}  // namespace mixq::cpu::e2m1_avx2
