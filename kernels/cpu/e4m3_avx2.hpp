// E4M3 rounding in 8 AVX2 lanes, for the AVX2 FP8 kernels (quantize.cpp, fp8_mse_histogram.cpp):
// include it where "arch=x86-64-v3" is the target (#pragma GCC target), outside any namespace.
#pragma once

#include <immintrin.h>

#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu::e4m3_avx2 {

// q >= 0 (a quotient x / scale) rounded to its nearest E4M3 value, ties to the even code, saturating
// at 448: q + C − C with C = b · 2^20, b = max(2^floor(log2 q), 2^-6), rounds to E4M3's step in q's
// binade (b / 8; the subnormals' 2^-9 below 2^-6) in two multiply-adds (C exact in each), and the
// min saturates from 464 up (and where C overflows: inf − inf is NaN, and min gives its second
// operand). As lanes::e4m3_round.
MIXQ_ALWAYS_INLINE __m256 e4m3_rounded(__m256 q) {
  const __m256i exponent = _mm256_and_si256(_mm256_castps_si256(q), _mm256_set1_epi32(0x7f800000));
  const __m256 b = _mm256_castsi256_ps(_mm256_max_epu32(exponent, _mm256_set1_epi32(0x3c800000)));
  const __m256 c = _mm256_set1_ps(0x1p20f);
  return _mm256_min_ps(_mm256_fnmadd_ps(b, c, _mm256_fmadd_ps(b, c, q)), _mm256_set1_ps(448.0f));
}

}  // namespace mixq::cpu::e4m3_avx2
