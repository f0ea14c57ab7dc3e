// E4M3 rounding of NVFP4 block scales in 16 AVX-512 lanes, for the AVX-512 NVFP4 kernels
// (quantize_nvfp4.cpp) and their tests: include it where "arch=x86-64-v4" is the target (#pragma
// GCC target), outside any namespace. The multiply-add rounding of e4m3_avx2.hpp, 16 lanes wide.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "formats/nvfp4.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu::e4m3_avx512 {

// A block scale s >= 0 (not NaN) clamped to [2^-9, 448] (nvfp4_clamp_block_scale) and rounded to
// E4M3, ties to the even code: t = s + C with C = b · 2^20, b = max(2^floor(log2 s), 2^-6), in one
// multiply-add (C exact in it). Its code is t − C + 8 log2 b + 48 in the bits, its value t − C
// (exact); in [2^-9, 448] nothing saturates.
struct block_scale {
  __m512i code;
  __m512 value;
};
MIXQ_ALWAYS_INLINE block_scale round_block_scale(__m512 s) {
  const __m512 c = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(kNvfp4MinBlockScale)), _mm512_set1_ps(448.0f));
  const __m512i b = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(c), _mm512_set1_epi32(0x7f800000)),
                                     _mm512_set1_epi32(0x3c800000));
  const __m512 t = _mm512_fmadd_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(0x1p20f), c);
  const __m512i k = _mm512_sub_epi32(_mm512_srli_epi32(b, 20), _mm512_set1_epi32((20 << 23) + 968));
  return {_mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(t), b), k),
          _mm512_fnmadd_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(0x1p20f), t)};
}

}  // namespace mixq::cpu::e4m3_avx512
