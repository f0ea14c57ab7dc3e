// NVFP4 on the CPU: after the global amax pass, one pass over the weight in groups of 16 blocks
// (one vector of block maxima, one of scales), reading BF16 / F32 in place. Bit for bit the
// scalar reference's result (formats/nvfp4.cpp); tests/kernels and tests/golden check it, for
// every instruction set the kernels are built for. With AVX-512 the groups hold two blocks per
// register pair (their even and their odd elements; see namespace avx512) and the amax pass
// records every block's max.
//
// The MSE searches (the 126-code FP8 sweep, the multiplier list) are exact without evaluating
// every candidate exactly; per block:
//  1. the squared error of the 16 codes k0-7 .. k0+8 around the max-rule code k0 is estimated at
//     once (a lane per candidate, no divisions: q ≈ |w| · (1/step)), each estimate A_k within a
//     proven δ_k of the reference's float error E_k (estimate_window);
//  2. candidates below the window lose: there the block's largest value is clipped (|w|/step > 6),
//     its own term of the error grows as the step shrinks and already exceeds min(A + δ) ≥ min E;
//  3. candidates above it lose: for a step s with every |w|/s <= 6, E(2s) >= E(s) holds exactly
//     in float arithmetic (each value's E2M1 level under 2s is a level under s at least as far
//     from it, and every rounding in the error is monotone), and step(k+8) = 2·step(k) (k >= 8),
//     so each such candidate has a smaller one in the window's top octave that is at least as good;
//  4. of the window's candidates only those with A_k - δ_k <= min(A + δ) can be the minimum: when
//     that is one candidate it is the answer, else those few are evaluated exactly, in ascending
//     order (ties go to the smallest code, as in the reference's scan).
// Blocks outside the conditions these need (an all-zero or tiny block, errors that overflow, a
// weight scale near the float range's ends) take the scalar reference. The AVX2 and AVX-512 forms
// narrow the windows to the 12 codes k0-3 .. k0+8 (the same top octave; see estimate_narrow_pair),
// the AVX-512 one with a lane per block (search_codes).
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <omp.h>

#include "formats/minifloat.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cpu/rounding_gamma.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

#if MIXQ_HAVE_SIMD_TARGETS
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#include "kernels/cpu/e2m1_avx2.hpp"
#include "kernels/cpu/e4m3_avx2.hpp"
#pragma GCC pop_options
MIXQ_BEGIN_AVX512_REGION
#include "kernels/cpu/e4m3_avx512.hpp"
MIXQ_END_AVX512_REGION
#endif

namespace mixq::cpu {
namespace {

using lanes::v16f;
using lanes::v16u;

constexpr int kGroup = 16;                          // blocks per group
constexpr int kGroupValues = kGroup * kNvfp4Block;  // 256
constexpr int64_t kChunkGroups = 16;                // groups per work item (64 KiB of F32)

// Per-code constants of one weight scale: step[k] = E4M3 value k × weight_scale_2 (the reference's
// dequantization step), its reciprocal and square. Index 0 is unused; windows load 16 from k >= 1.
struct code_tables {
  alignas(64) float step[128] = {}, recip[128] = {}, step_sq[128] = {}, step_sq_margin[128] = {};  // margin: 2^-13 s²
  // The entries of codes 8 + i % 8 one octave down (code c's are these scaled by 2^(c / 8)): the
  // AVX-512 narrow windows' per-lane tables.
  alignas(64) float octave_step[16] = {}, octave_recip[16] = {}, octave_step_sq[16] = {};
  bool usable = false;  // the window search's conditions on the float range hold (else: reference)
  explicit code_tables(float ws2) {
    for (int k = 1; k <= 0x7e; ++k) {
      step[k] = e4m3_decode_table()[k] * ws2;
      recip[k] = 1.0f / step[k];
      step_sq[k] = step[k] * step[k];
      step_sq_margin[k] = step_sq[k] * 0x1p-13f;  // (exact: a power of two)
    }
    // Steps in [2^-49, 2^49]: squares and errors (|w| < 32 steps) stay normal and finite, halving
    // and doubling a step are exact.
    usable = ws2 >= 0x1p-40f && ws2 <= 0x1p40f;
    for (int i = 0; i < 16; ++i) {  // (exact in the usable range)
      octave_step[i] = step[8 + i % 8] * 0.5f;
      octave_recip[i] = recip[8 + i % 8] * 2.0f;
      octave_step_sq[i] = step_sq[8 + i % 8] * 0.25f;
    }
  }
};

// A multiplier list's candidate codes for every block max with at most `mantissa_bits` mantissa
// bits (7: a BF16 value, 10: an F16 one), by those bits: relative to k0, a block's codes depend on
// its max's mantissa alone (every rounding in k0's and each multiplier's scale scales by 2^j with
// the max, and so every code moves by 8j) as long as the codes are normal and unclamped, which the
// users check (lo >= 9: codes at or above the window are normal, and with ws2 in [2^-40, 2^40]
// every float in the chain is too; codes at 126, where the scale clamps at 448, are handled there,
// and a row whose last code lies 48 or more above the window's start is refused, which also keeps
// the table's own codes below the clamp). Built with the reference's scale chain, exactly, at an
// exponent where the codes from k0 − 15 to k0 + 48 are normal and unclamped. Per mantissa: bit e
// for each code k0 − 15 + e, e in [0, 64) (two words), and the last (largest) code's e + 1 (0
// below k0 − 15, 255 for 254 and beyond).
struct multiplier_codes {
  static constexpr int kMaxMantissaBits = 10;
  static constexpr size_t kMaxRows = size_t(1) << kMaxMantissaBits;
  alignas(64) uint32_t low[kMaxRows], high[kMaxRows], last[kMaxRows];
  // The setup's bits where the window starts at k0 − 7 (multiplier_candidates_by_mantissa with
  // shift 0 and no code at 126): the window's candidates (bits 0-15), their above_bases >> 8 (bits
  // 16-23) and last (bits 24-31); and the candidates above the window (search_setup::above).
  alignas(64) uint32_t window_at_k0[kMaxRows], above_at_k0[kMaxRows];
  uint32_t shift = 0, row_mask = 0;  // a max's row: (its float bits >> shift) & row_mask
  uint32_t below_rows = 0;           // the float bits below the row's: zero in a max the table holds
  static std::optional<multiplier_codes> build(std::span<const float> multipliers, float ws2, float global_amax,
                                               float normalizer, int mantissa_bits) {
    if (!(ws2 >= 0x1p-40f && ws2 <= 0x1p40f) || mantissa_bits > kMaxMantissaBits) return std::nullopt;
    multiplier_codes t;
    t.shift = uint32_t(23 - mantissa_bits);
    t.row_mask = (1u << mantissa_bits) - 1u;
    t.below_rows = (1u << t.shift) - 1u;
    const int e0 = std::ilogb(6.0f * ws2) - 3;  // max rule in (2^-4, 2^-2): k0 in [24, 40]
    for (uint32_t m = 0; m <= t.row_mask; ++m) {
      const float bmax = std::ldexp(1.0f + std::ldexp(float(m), -mantissa_bits), e0);
      const int base = int(e4m3_encode(nvfp4_max_block_scale_f32(bmax, ws2))) - 15;
      if (base < 9 || base > 25) return std::nullopt;  // (cannot happen: the exponent is chosen so)
      uint64_t bits = 0;
      int last = -1;
      for (float c : multipliers) {
        const int e = int(e4m3_encode(nvfp4_block_scale_f32(bmax * c, global_amax, normalizer))) - base;
        if (e >= 0 && e < 64) bits |= uint64_t(1) << e;
        last = std::clamp(e, -1, 254);
      }
      t.low[m] = uint32_t(bits), t.high[m] = uint32_t(bits >> 32), t.last[m] = uint32_t(last + 1);
      const uint32_t above = uint32_t(bits >> 24);  // codes k0 + 9 .. k0 + 40
      const uint32_t bases = (above | above >> 8 | above >> 16 | above >> 24) & 0xffu;
      t.window_at_k0[m] = uint32_t(bits >> 8 & 0xffffu) | bases << 16 | t.last[m] << 24;
      t.above_at_k0[m] = above;
    }
    return t;
  }
};

// Over BF16, every term of a window's errors from one table. A BF16 magnitude a = (1 + m/128) · 2^E
// and a normal code k's step s_k both divided by 2^E leave a / s_k, its E2M1 level and the rounding
// of each product, difference and square as they are (every one normal: the users keep steps in
// [2^-46, 2^49] and a / s_k below 32), so the reference's term (a − level · s_k)² is 4^E times that
// of a' = 1 + m/128 under s_k / 2^E = RN((1 + (k mod 8)/8) · ws2) · 2^((k − 8E) div 8 − 7): a function
// of m and c = k − 8E alone. Row m holds those terms for c from c_min, the least c whose a' / s can
// be below 32 (a window's is below 24: the max rule's step is at least bmax / 6.375, and the
// lowest window code's at least 1/3.75 of that, at the top where lo = k0 − 15), to 15 or more past c_min + z, the first from which every a' / s is below 1/4 (level
// 0: the term is a'², for every later c too). A value's 16 window terms (codes lo .. lo + 15) are
// the row's 16 from lo − 8E − c_min, clamped to [0, z] (beyond z: all a'²).
struct term_table {
  int c_min = 0, z = 0, row = 0;
  std::vector<float> steps;  // s_k / 2^E for c = c_min .. c_min + row − 1
  std::vector<float> storage;  // 128 rows of `row` from the first 64-byte boundary (rows start on
                               // one: where a window's 64 bytes cross a line does not move between runs)
  float* terms() { return storage.data() + first; }
  const float* terms() const { return storage.data() + first; }
  size_t first = 0;
  // The table's extent and steps; its terms are filled where it is used (avx2::fill_terms).
  static std::optional<term_table> extent(float ws2) {
    if (!(ws2 >= 0x1p-40f && ws2 <= 0x1p40f)) return std::nullopt;
    const auto step = [ws2](int c) { return std::ldexp((1.0f + float(c & 7) / 8.0f) * ws2, (c >> 3) - 7); };
    term_table t;
    t.c_min = -400;  // (below every c_min: ws2 >= 2^-40)
    while (!(step(t.c_min) > 1.0f / 32.0f)) ++t.c_min;
    while (!(step(t.c_min + t.z) >= 8.0f)) ++t.z;
    t.row = (t.z + 16 + 15) / 16 * 16;  // (whole 64-byte lines)
    for (int i = 0; i < t.row; ++i) t.steps.push_back(step(t.c_min + i));
    t.storage.resize(size_t(128 * t.row + 16));
    t.first = (64 - reinterpret_cast<uintptr_t>(t.storage.data()) % 64) % 64 / sizeof(float);
    return t;
  }
};

struct nvfp4_job {
  float global_amax, normalizer, ws2;
  float g;  // the global amax as the block scale formula uses it (1 for an all-zero weight)
  nvfp4_selector selector;
  std::span<const float> multipliers;
  std::span<const float> multiplier_factors;  // mse_multiplier: scale / bmax per multiplier, rounded once
  const code_tables* tables;
  bool amax_bounds_weight;      // global_amax >= max |w|
  const float* block_maxima;    // each block's max |w| when the amax pass found them, else null
  const multiplier_codes* codes_by_mantissa;  // mse_multiplier over BF16 / F16 with an ascending list, else null
  const term_table* terms;                     // the searches over BF16 (AVX2), else null
};

// ---- per-group building blocks ----------------------------------------------------------------

template <simd_level L>
MIXQ_ALWAYS_INLINE v16u e2m1_codes(v16f q) {
  if constexpr (L == simd_level::avx512) return lanes::e2m1_codes_by_key(q);
  else return lanes::e2m1_codes(q);
}

template <simd_level L>
MIXQ_ALWAYS_INLINE v16f e2m1_magnitudes(v16u codes) {
  if constexpr (L == simd_level::avx512) return lanes::e2m1_magnitudes(codes);
  else return lanes::e2m1_magnitudes_by_bits(codes);
}

template <simd_level L>
MIXQ_ALWAYS_INLINE v16f e2m1_nearest(v16f q) {
  if constexpr (L == simd_level::avx512) return lanes::e2m1_nearest_by_key(q);
  else return lanes::e2m1_nearest_by_rounding(q);
}

// x / s and x * s, lane by lane. Without AVX-512, GCC splats s into a 64-byte vector by 16 stores
// to the stack and a load that cannot forward from them (a stall per block): halves of 32 bytes
// take it in one broadcast.
template <simd_level L, class Op>
MIXQ_ALWAYS_INLINE v16f by_scalar(v16f x, float s, Op op) {
  if constexpr (L == simd_level::avx512) {
    return op(x, s);
  } else {
    typedef float v8f __attribute__((vector_size(32)));
    v8f lo, hi;  // (copied half by half: measured faster here than lane shuffles)
    std::memcpy(&lo, &x, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
    lo = op(lo, s);
    hi = op(hi, s);
    std::memcpy(&x, &lo, sizeof lo);
    std::memcpy(reinterpret_cast<char*>(&x) + sizeof lo, &hi, sizeof hi);
    return x;
  }
}
template <simd_level L>
MIXQ_ALWAYS_INLINE v16f divided(v16f x, float s) {
  return by_scalar<L>(x, s, [](auto v, float d) { return v / d; });
}
template <simd_level L>
MIXQ_ALWAYS_INLINE v16f times(v16f x, float s) {
  return by_scalar<L>(x, s, [](auto v, float m) { return v * m; });
}

// The reference's squared error of one block (|w| in ax) under step: nvfp4_block_sq_error.
template <simd_level L>
MIXQ_ALWAYS_INLINE float block_error(v16f ax, float step) {
  const v16u codes = e2m1_codes<L>(divided<L>(ax, step));
  const v16f d = times<L>(e2m1_magnitudes<L>(codes), step);
  return lanes::sum16((ax - d) * (ax - d));
}

// Codes of 16 blocks under chosen scale codes: scale bytes, packed nibbles, and (when errors is
// not null) each block's squared error.
template <simd_level L>
MIXQ_ALWAYS_INLINE void encode_group(const v16u* bits, v16u scale_codes, float ws2, uint8_t* scales, uint8_t* packed,
                                     float* errors) {
  lanes::store_bytes(scale_codes, scales);
  const v16f step_v = lanes::e4m3_decode(scale_codes) * ws2;
  float step[kGroup];
  std::memcpy(step, &step_v, sizeof step);
  v16f sq[kGroup];
  for (int j = 0; j < kGroup; ++j) {
    const v16f ax = lanes::abs_of(bits[j]);
    const v16u codes = e2m1_codes<L>(divided<L>(ax, step[j]));
    const uint64_t p = lanes::packed_codes(codes | lanes::sign_bits(bits[j]));
    std::memcpy(packed + j * (kNvfp4Block / 2), &p, sizeof p);
    if (errors) {
      const v16f d = times<L>(e2m1_magnitudes<L>(codes), step[j]);
      sq[j] = (ax - d) * (ax - d);
    }
  }
  if (errors) {
    const v16f e = lanes::reduce16x16(sq, lanes::sum_op{});
    std::memcpy(errors, &e, sizeof e);
  }
}

// Four-over-six: both candidates (block max -> 6 and -> 4) in registers, the first kept unless the
// second's error is strictly lower.
template <simd_level L>
MIXQ_ALWAYS_INLINE void four_over_six_group(const v16u* bits, v16f bmax, const nvfp4_job& job, uint8_t* scales,
                                            uint8_t* packed, float* errors) {
  const v16u code1 = lanes::e4m3_encode(lanes::static_block_scale(bmax, job.g, job.normalizer));
  const v16u code2 = lanes::e4m3_encode(lanes::static_block_scale(bmax * 1.5f, job.g, job.normalizer));
  const v16f step1_v = lanes::e4m3_decode(code1) * job.ws2, step2_v = lanes::e4m3_decode(code2) * job.ws2;
  float step1[kGroup], step2[kGroup];
  std::memcpy(step1, &step1_v, sizeof step1);
  std::memcpy(step2, &step2_v, sizeof step2);
  v16f sq1[kGroup], sq2[kGroup];
  alignas(64) uint64_t packed1[kGroup], packed2[kGroup];
#pragma GCC unroll 16  // (constant indices: a stored sq[j] went through 16-byte pieces and GPRs)
  for (int j = 0; j < kGroup; ++j) {
    const v16f ax = lanes::abs_of(bits[j]);
    const v16u sign = lanes::sign_bits(bits[j]);
    const v16u c1 = e2m1_codes<L>(divided<L>(ax, step1[j])), c2 = e2m1_codes<L>(divided<L>(ax, step2[j]));
    const v16f d1 = times<L>(e2m1_magnitudes<L>(c1), step1[j]), d2 = times<L>(e2m1_magnitudes<L>(c2), step2[j]);
    sq1[j] = (ax - d1) * (ax - d1);
    sq2[j] = (ax - d2) * (ax - d2);
    packed1[j] = lanes::packed_codes(c1 | sign);
    packed2[j] = lanes::packed_codes(c2 | sign);
  }
  const v16f err1 = lanes::reduce16x16(sq1, lanes::sum_op{}), err2 = lanes::reduce16x16(sq2, lanes::sum_op{});
  const v16u second = (v16u)(err2 < err1);
  lanes::store_bytes((code2 & second) | (code1 & ~second), scales);
  for (int j = 0; j < kGroup; ++j) {
    const uint64_t p = second[j] ? packed2[j] : packed1[j];
    std::memcpy(packed + j * (kNvfp4Block / 2), &p, sizeof p);
  }
  if (errors) {
    const v16f e = (v16f)(((v16u)err2 & second) | ((v16u)err1 & ~second));
    std::memcpy(errors, &e, sizeof e);
  }
}

// ---- the MSE searches ---------------------------------------------------------------------------

// The error estimates of the 16 codes lo .. lo+15 for one block, in lanes, and their bound δ.
//
// Why |A_k - E_k| <= δ_k = 2^-13·s² + 2^-15·A_k, with s = step, u = 2^-24, every |w|/s < 32, and
// S the exact sum of squared distances (in units of s² where that reads better):
//  - the reference rounds q = fl(|w|/s); the estimate rounds q' = fl(|w|·fl(1/s)), both within
//    2.01u·|w|/s of |w|/s, and takes the nearest level (either way at a tie). The codes differ only
//    where |w|/s is within 2.01u·5 of a midpoint t <= 5 between levels g <= 2 apart, and there the
//    two squared distances differ by <= 2·g·2.01u·5 = 40.2u: <= 643u for 16 values;
//  - the reference rounds level·s (by <= 6u·s), |w| - d, the square and 15 sums; the estimate
//    q' (by < 65u), q' - level, the square, 15 sums and the product with s². Per value that is
//    <= 142u·s·|e| + 13u·e² in all, and Σ|e| <= 4·sqrt(S): <= 568u·s·sqrt(S) + 13u·S
//    <= 284u·s² + 297u·S.
// In all <= 927u·s² + 297u·S; δ allows about twice that.
template <simd_level L>
MIXQ_ALWAYS_INLINE void estimate_window(const float* a, uint32_t lo, const code_tables& t, v16f* above_error,
                                        v16f* below_error) {
  v16f recip, step_sq;
  std::memcpy(&recip, t.recip + lo, sizeof recip);
  std::memcpy(&step_sq, t.step_sq + lo, sizeof step_sq);
  v16f acc[4] = {};
#pragma GCC unroll 16  // (constant indices keep acc in registers: a stack copy stalls on every value)
  for (int i = 0; i < kNvfp4Block; ++i) {
    const v16f q = a[i] * recip;
    const v16f e = q - e2m1_nearest<L>(q);
    acc[i & 3] += e * e;
  }
  const v16f est = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * step_sq;
  const v16f delta = step_sq * 0x1p-13f + est * 0x1p-15f;
  *above_error = est + delta;
  *below_error = est - delta;
}

// Whether a block with this max-rule scale (before its E4M3 rounding and clamp) meets the window
// search's conditions: code k0 >= 9 (so the window's codes lo = k0-7 .. k0+8 keep |w|/step < 32
// and its top octave is above the subnormal codes) and no clamp at 448.
MIXQ_ALWAYS_INLINE v16u window_applies(v16f max_rule_scale) {
  const v16u u = (v16u)max_rule_scale;  // (as bits: not NaN, not negative)
  return lanes::above(u, std::bit_cast<uint32_t>(0x1.1p-6f)) & lanes::below(u, std::bit_cast<uint32_t>(448.0f) + 1u);  // 0x1.1p-6 rounds to code 8
}


// The window search of 16 blocks, in three steps: setup_search (each block's window and candidate
// codes), the estimates of every eligible block's window (estimate_window; the AVX2 and AVX-512
// forms their own), and search_decide, which takes each step for all 16 blocks at once (the
// reductions as transposes) and leaves per block what is left: usually a single candidate. (The
// AVX-512 form's search_codes takes the same steps with a lane per block.)
struct search_setup {
  v16u lo, in_window, above_bases, eligible;
  v16u k0;  // the max-rule code (lo = k0 − 7 but at the top, where the window stops at 126)
  // Where above_known: every candidate above the window, bit j for the code lo + 16 + j.
  v16u above, above_known;
};

// settle_block's above_codes where the candidates above the window are not listed.
constexpr uint64_t kAboveUnknown = uint64_t(1) << 32;
MIXQ_ALWAYS_INLINE uint64_t above_codes_of(uint32_t above, uint32_t known) { return known ? above : kAboveUnknown; }

MIXQ_ALWAYS_INLINE void add_candidate(search_setup& s, v16u code) {
  const v16u d = code - s.lo;  // wraps for codes below the window
  const v16u one = v16u{} + 1u;
  s.in_window |= lanes::below_unsigned(d, 16u) & (one << (d & 15u));
  s.above_bases |= lanes::below_unsigned(d - 16u, 0x70u) & (one << (8u + (d & 7u)));
}

// A multiplier list's candidate codes, exactly: each multiplier's scale in the reference's four
// roundings. Blocks whose codes do not ascend along the list leave the window search.
MIXQ_ALWAYS_INLINE void exact_multiplier_candidates(search_setup& s, v16f bmax, const nvfp4_job& job) {
  s.in_window = s.above_bases = v16u{};
  v16u ordered = v16u{} - 1u, prev = {};
  for (float c : job.multipliers) {
    const v16u code = lanes::e4m3_encode(lanes::static_block_scale(bmax * c, job.g, job.normalizer));
    ordered &= ~lanes::below(code, prev);
    prev = code;
    add_candidate(s, code);
  }
  s.eligible &= ordered;
}

// The same from one product per multiplier: each multiplier's scale is bmax·c/6·normalizer/(g/6)
// in four roundings; bmax·K_c (K_c its constant factor, rounded once) is within 6.1u of it, i.e.
// 12.2 units in the last place, so both round to the same E4M3 code unless within 16 units of a
// rounding boundary between codes, or below the normal codes (2^-6). False when an eligible block
// has such a code: the caller then takes the exact candidates. (An ascending list only: its codes
// ascend, so its first least error is its least code's.)
MIXQ_ALWAYS_INLINE bool fast_multiplier_candidates(search_setup& s, v16f bmax, const nvfp4_job& job) {
  s.in_window = v16u{};
  v16u near = {};
  for (float k : job.multiplier_factors) {
    const v16u u = (v16u)(bmax * k);
    const v16u code = ((u + 0x80000u) >> 20) - 960u;  // RNE but at the (excluded) ties
    near |= lanes::below((u - 0x80000u + 16u) & 0xfffffu, 32u) | lanes::below(u, 0x3c810000u);
    add_candidate(s, lanes::select(lanes::below_unsigned(code, 126u), code, v16u{} + 126u));  // >= 448 clamps to 448 (126)
  }
  return lanes::reduce16_bits(near & s.eligible) == 0;
}

// 1 << n, and 0 for 32 <= n < 2^31 (as AVX2 / AVX-512 variable shifts give it; C++ leaves it
// undefined).
MIXQ_ALWAYS_INLINE v16u bit_or_zero(v16u n) { return lanes::below(n, 32u) & (v16u{} + 1u) << (n & 31u); }

// From the candidates above the window (bit j: the code lo + 16 + j, j < 32), the window codes they
// double (lo + 8 + j % 8) as search_setup::above_bases bits.
MIXQ_ALWAYS_INLINE v16u window_bases_of(v16u above) {
  return ((above | above >> 8 | above >> 16 | above >> 24) & 0xffu) << 8;
}

// The candidates from job.codes_by_mantissa: false where a block needs more (a max with more
// mantissa bits than the table's, lo < 9, or a code 48 or more above lo).
// (lookup(table, index): table[index[j]] in lane j; the AVX-512 form passes gathers)
template <class Lookup>
MIXQ_ALWAYS_INLINE bool multiplier_candidates_by_mantissa(search_setup& s, v16f bmax, const nvfp4_job& job,
                                                          Lookup lookup) {
  const multiplier_codes& t = *job.codes_by_mantissa;
  const v16u bits = (v16u)bmax;
  const v16u m = (bits >> t.shift) & t.row_mask;
  const v16u low = lookup(t.low, m), high = lookup(t.high, m), table_last = lookup(t.last, m);
  // The table's e counts from k0 − 15, the window's d from lo: k0 − 7 but where the window stops
  // at 126 (lo = 111): d = e − 8 + shift. (Lanes that are not eligible compute garbage, unused.)
  const v16u shift = s.k0 - 7u - s.lo;                     // 0..8 where eligible
  const v16u first = (8u - shift) & 31u;                   // e of d = 0
  const v16u last = table_last - 9u + shift;               // d of the last code (signed: -9 .. 263)
  // (compares as masks: GCC lowers vector compares lane by lane without AVX-512; last is in [-9, 263])
  const v16u beyond = lanes::above(bits & t.below_rows, 0u) | lanes::below(s.lo, 9u) | ~lanes::below(last, 48u);
  if (lanes::reduce16_bits(beyond & s.eligible) != 0) return false;
  // d in [0, 16) and [16, 48)
  v16u in = (low >> first) & 0xffffu;
  v16u above = (low >> ((first + 16u) & 31u)) | (high << ((16u - first) & 31u));
  // Codes at or past 126 (d >= 126 − lo) all take 126: clear their bits, set 126's.
  const v16u top = 126u - s.lo;
  const v16u clamps = ~lanes::below(last, top);
  const v16u in_window = clamps & lanes::below(top, 16u);
  const v16u top_bit = bit_or_zero(top);
  in = lanes::select(in_window, (in & (top_bit - 1u)) | top_bit, in);
  above &= ~in_window;
  const v16u above_bit = bit_or_zero(top - 16u);  // (< 32 where it clamps: last < 48)
  above = lanes::select(clamps & ~in_window, (above & (above_bit - 1u)) | above_bit, above);
  s.in_window = in;
  s.above_bases = window_bases_of(above);
  s.above = above;
  s.above_known = v16u{} - 1u;
  return true;
}

// Each block's window and candidates, but for a multiplier list's (see the callers), from its
// max-rule scale before the clamp (nvfp4_max_block_scale_f32's) and that scale's code k0.
MIXQ_ALWAYS_INLINE search_setup window_setup_at(v16f max_rule, v16u k0, const nvfp4_job& job) {
  const code_tables& t = *job.tables;
  search_setup s;
  s.k0 = k0;
  s.lo = k0 - 7u;
  s.lo = lanes::select(lanes::below_unsigned(s.lo, 112u), s.lo, v16u{} + 111u);  // (blocks with k0 < 9 leave the window search)
  // Candidates: the sweep's are every code; a multiplier list's, each block's codes in the list's
  // order (the reference's), as window bits, and for codes above the window the window codes they
  // double.
  s.in_window = v16u{} + 0xffffu;
  s.above_bases = s.above = s.above_known = v16u{};
  s.eligible = window_applies(max_rule) & (v16u{} - uint32_t(t.usable));
  return s;
}
MIXQ_ALWAYS_INLINE search_setup window_setup(v16f bmax, const nvfp4_job& job) {
  const v16f max_rule = bmax / (6.0f * job.ws2);
  return window_setup_at(max_rule, lanes::e4m3_encode(lanes::clamp_block_scale(lanes::one_if_zero(max_rule))), job);
}

// multiplier_candidates_by_mantissa where every eligible block's window starts at k0 − 7, its max
// is one the table holds, and its list's codes stop below 126 and within 48 of lo (the common case): two
// lookups of its precomputed bits. False (s untouched) where a block needs more.
template <class Lookup>
MIXQ_ALWAYS_INLINE bool multiplier_candidates_at_k0(search_setup& s, v16f bmax, const nvfp4_job& job, Lookup lookup) {
  const multiplier_codes& t = *job.codes_by_mantissa;
  const v16u bits = (v16u)bmax;
  const v16u m = (bits >> t.shift) & t.row_mask;
  const v16u window = lookup(t.window_at_k0, m);
  const v16u last = (window >> 24) - 9u;  // d of the last code (wraps below the window)
  // (compares as masks, lanes::below's: GCC lowers vector compares lane by lane without AVX-512;
  // where last < 48 it and 126 − lo are below 2^31)
  const v16u fits = lanes::below_unsigned(s.lo ^ (s.k0 - 7u), 1u) & ~lanes::below(s.lo, 9u) &
                    lanes::below_unsigned(bits & t.below_rows, 1u) & lanes::below_unsigned(last, 48u) &
                    lanes::below(last, 126u - s.lo);
  if (lanes::reduce16_bits(~fits & s.eligible) != 0) return false;
  s.in_window = window & 0xffffu;
  s.above_bases = ((window >> 16) & 0xffu) << 8;
  s.above = lookup(t.above_at_k0, m);
  s.above_known = v16u{} - 1u;
  return true;
}

// A multiplier list's candidates over the window setup's (every code a candidate, the sweep's).
MIXQ_ALWAYS_INLINE void multiplier_candidates(search_setup& s, v16f bmax, const nvfp4_job& job) {
  const auto lookup = [](const uint32_t* table, v16u index) {
    v16u out;
    for (int j = 0; j < kGroup; ++j) out[j] = table[index[j]];
    return out;
  };
  if (!(job.codes_by_mantissa && (multiplier_candidates_at_k0(s, bmax, job, lookup) ||
                                  multiplier_candidates_by_mantissa(s, bmax, job, lookup))) &&
      (job.multiplier_factors.empty() || !fast_multiplier_candidates(s, bmax, job)))
    exact_multiplier_candidates(s, bmax, job);
}

MIXQ_ALWAYS_INLINE search_setup setup_search(v16f bmax, const nvfp4_job& job) {
  search_setup s = window_setup(bmax, job);
  if (job.selector == nvfp4_selector::mse_multiplier) multiplier_candidates(s, bmax, job);
  return s;
}

// Four-over-six's fast forms decide a block from estimates of its two errors in the quotient's
// units, step² · Σ (q − m)², which the divisions for the codes give at half the terms of the
// reference's sums: (q − m)² of an even and an odd element in one multiply-add. Where two estimates
// lie within this bound of each other the reference's sums decide. Per element, (q − m)·step and
// the reference's |w| − m·step both lie within η = 2ε·M of the exact r = |w| − m·step (ε = 2^-24,
// M = max(bmax, 6·step2) >= either candidate's |w| and 6·step), so each square within 2|r|η + η²
// of r², and Σ|r| <= 16ρ with ρ = max(step2, bmax − 6·step1) (half the widest gap of a grid, or
// the first scale's clipping). The sums' roundings add at most 8ε and 5ε of the larger sum, and
// 2^-140 covers underflow (scaled by a step above ~2^9, the ηρ term does): per candidate δ <=
// η(16η + 32ρ) + 2^-20·larger + 2^-140. The bound is 4δ, twice the two candidates' together; an
// infinite one (an estimate overflowed) decides nothing. V: 8 or 16 lanes of float.
template <class V>
MIXQ_ALWAYS_INLINE V four_over_six_bound(V larger, V step1, V step2, V bmax) {
  const V m = bmax > 6.0f * step2 ? bmax : 6.0f * step2, clip = bmax - 6.0f * step1;
  const V eta = m * 0x1p-23f, rho = step2 > clip ? step2 : clip;
  return (64.0f * eta + 128.0f * rho) * eta + 0x1p-18f * larger + 0x1p-138f;
}

#if MIXQ_HAVE_SIMD_TARGETS
namespace avx2 {
float block_sq_error(const float* magnitudes, float step);
}
namespace avx512 {
float block_sq_error(const float* magnitudes, float step);
}
#endif

// One block's code where the window search left more than one candidate (decided: the window
// holds the least error; contenders: the window codes that may have it, as bits from lo;
// unsettled: window codes that may have it without being candidates, whose multiplier codes above
// the window join), or could not run (not decided: the reference's search). width: the window's
// codes, lo .. lo + width − 1, the top 8 its top octave.
template <simd_level L>
__attribute__((noinline)) uint32_t settle_block(const float* values, float amax, uint32_t lo, uint32_t contenders,
                                    uint32_t unsettled, bool decided, const nvfp4_job& job, uint32_t width = 16,
                                    uint64_t above_codes = kAboveUnknown) {
  if (!decided)
    return nvfp4_choose_block_scale(values, amax, job.global_amax, job.normalizer, job.selector, job.multipliers);
  const code_tables& t = *job.tables;
  v16f ax;  // the contenders' exact errors, in ascending code order
  std::memcpy(&ax, values, sizeof ax);
  int best_k = -1;
  float best = 0.0f;
  const auto consider = [&](int k) {
#if MIXQ_HAVE_SIMD_TARGETS
    // (this function is compiled for the baseline: the AVX2 and AVX-512 forms' errors come from
    // code compiled for them)
    const float err = L == simd_level::avx2     ? avx2::block_sq_error(values, t.step[k])
                      : L == simd_level::avx512 ? avx512::block_sq_error(values, t.step[k])
                                                : block_error<L>(ax, t.step[k]);
#else
    const float err = block_error<L>(ax, t.step[k]);
#endif
    if (best_k < 0 || err < best) best = err, best_k = k;
  };
  for (uint32_t c = contenders; c; c &= c - 1) consider(int(lo) + std::countr_zero(c));
  if (unsettled && above_codes != kAboveUnknown) {  // the setup's codes above the window (bit j: lo + 16 + j)
    for (uint64_t a = above_codes; a; a &= a - 1) {
      const uint32_t j = uint32_t(std::countr_zero(a));
      if (unsettled >> (width - 8 + j % 8) & 1) consider(int(lo + width + j));
    }
  } else if (unsettled) {  // multiplier codes above the window (the list ascends with its codes)
    uint32_t listed[128];  // distinct codes above the window, at most 126 - 16 of them
    int n_above = 0;
    for (size_t m = job.multipliers.size(); m-- > 0;) {
      const uint32_t k = e4m3_encode(nvfp4_block_scale_f32(amax * job.multipliers[m], job.global_amax, job.normalizer));
      if (k < lo + width) break;
      if ((unsettled >> (width - 8 + (k - lo - (width - 8)) % 8) & 1) && (n_above == 0 || listed[n_above - 1] != k))
        listed[n_above++] = k;
    }
    while (n_above > 0) consider(int(listed[--n_above]));
  }
  return uint32_t(best_k);
}

// values: each block's magnitudes (element order, in memory); above / below: A + δ and A - δ of
// the eligible blocks' windows.
template <simd_level L>
MIXQ_ALWAYS_INLINE v16u search_decide(const float (*values)[kNvfp4Block], v16f bmax, const search_setup& s,
                                      v16f* above, const v16f* below, const nvfp4_job& job) {
  const code_tables& t = *job.tables;
  alignas(64) uint32_t lo[kGroup], window[kGroup], ok[kGroup];
  std::memcpy(lo, &s.lo, sizeof lo);
  std::memcpy(window, &s.in_window, sizeof window);
  std::memcpy(ok, &s.eligible, sizeof ok);
  const v16f inf = lanes::broadcast(INFINITY);
  for (int j = 0; j < kGroup; ++j) {
    const v16u candidate = (v16u)((lanes::kLaneBit & window[j]) != 0u) & (v16u{} + ok[j]);  // ok: 0 or ~0
    above[j] = (v16f)(((v16u)above[j] & candidate) | ((v16u)inf & ~candidate));
  }
  // >= the least error of each block's candidates (the window holds one)
  const v16f bound = lanes::reduce16x16(above, lanes::min_op{});
  alignas(64) float bound_of[kGroup];
  std::memcpy(bound_of, &bound, sizeof bound_of);
  v16f close_lanes[kGroup];  // lanes whose error may be the least (a NaN estimate, inf - inf, too)
  for (int j = 0; j < kGroup; ++j) close_lanes[j] = (v16f)(~(v16u)(below[j] > bound_of[j]) & lanes::kLaneBit);
  const v16u close = (v16u)lanes::reduce16x16(close_lanes, lanes::or_op{});
  // Every code below lo clips the block's max: the max's own error term grows as the step shrinks.
  alignas(64) float step_below[kGroup];
  for (int j = 0; j < kGroup; ++j) step_below[j] = t.step[lo[j] > 0 ? lo[j] - 1 : 0];  // lo >= 2 where eligible
  v16f step_below_v;
  std::memcpy(&step_below_v, step_below, sizeof step_below_v);
  const v16f clipped = bmax - 6.0f * step_below_v;
  const v16u decided = s.eligible & (v16u)(bound < INFINITY) & (v16u)(clipped * clipped > bound);
  const v16u contenders_v = close & s.in_window;
  // A code above the window loses to the window code it doubles; where that one is not a
  // candidate itself but may be the least, the codes above it join the exact evaluation.
  const v16u unsettled_v = s.above_bases & ~s.in_window & close;

  alignas(64) uint32_t contenders[kGroup], unsettled[kGroup], chosen[kGroup], listed[kGroup], known[kGroup];
  alignas(64) float amax[kGroup];
  std::memcpy(listed, &s.above, sizeof listed);
  std::memcpy(known, &s.above_known, sizeof known);
  std::memcpy(ok, &decided, sizeof ok);
  std::memcpy(contenders, &contenders_v, sizeof contenders);
  std::memcpy(unsettled, &unsettled_v, sizeof unsettled);
  std::memcpy(amax, &bmax, sizeof amax);
  for (int j = 0; j < kGroup; ++j) {
    const uint32_t c = contenders[j];
    chosen[j] = ok[j] && !unsettled[j] && std::popcount(c) == 1
                    ? lo[j] + uint32_t(std::countr_zero(c))
                    : settle_block<L>(values[j], amax[j], lo[j], c, unsettled[j], ok[j] != 0, job, 16,
                                      above_codes_of(listed[j], known[j]));
  }
  v16u out;
  std::memcpy(&out, chosen, sizeof out);
  return out;
}

// Blocks [b0, b0 + n) of w, group by group, for every form: whole groups read BF16 / F32 / F16
// in place where nothing is zeroed, else through an F32 copy; the last partial group zero-padded
// (its padding's outputs dropped). groups(src, known_max, count, scales, packed, errors) quantizes
// count whole groups from src (known_max: their blocks' maxima, or null).
template <class Groups>
MIXQ_ALWAYS_INLINE void quantize_by_groups(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n,
                                           const float* block_maxima, uint8_t* scales, uint8_t* packed,
                                           float* errors, const Groups& groups) {
  constexpr int half = kNvfp4Block / 2;
  const int64_t whole = n / kGroup, i0 = b0 * kNvfp4Block;
  const float* known_max = block_maxima ? block_maxima + b0 : nullptr;
  if (!zero_nonfinite && w.dtype == source_dtype::bf16)
    groups(static_cast<const uint16_t*>(w.data) + i0, known_max, whole, scales, packed, errors);
  else if (!zero_nonfinite && w.dtype == source_dtype::f32)
    groups(static_cast<const float*>(w.data) + i0, known_max, whole, scales, packed, errors);
  else if (!zero_nonfinite)
    groups(static_cast<const f16_bits*>(w.data) + i0, known_max, whole, scales, packed, errors);
  alignas(64) float buf[kGroupValues];
  for (int64_t g = 0; g < whole && zero_nonfinite; ++g) {
    load_f32(w, i0 + g * kGroupValues, kGroupValues, buf, zero_nonfinite);
    groups(static_cast<const float*>(buf), nullptr, 1, scales + g * kGroup, packed + g * kGroup * half,
           errors ? errors + g * kGroup : nullptr);
  }
  if (const int64_t rest = n - whole * kGroup; rest > 0) {
    const int64_t o = whole * kGroup;
    std::fill(std::begin(buf), std::end(buf), 0.0f);
    load_f32(w, (b0 + o) * kNvfp4Block, int(rest * kNvfp4Block), buf, zero_nonfinite);
    uint8_t s[kGroup], p[kGroup * half];
    float e[kGroup];
    groups(static_cast<const float*>(buf), nullptr, 1, s, p, errors ? e : nullptr);
    std::copy_n(s, rest, scales + o);
    std::copy_n(p, rest * half, packed + o * half);
    if (errors) std::copy_n(e, rest, errors + o);
  }
}

// ---- AVX2: a block per register pair -------------------------------------------------------------
//
// Every selector in 8-lane registers (the generic lanes split every 16-lane step in two, pass values
// through the stack and compare lane by lane). A block's 32 bytes of BF16 split as float bits into its even
// elements (one register) and its odd elements (another), as the AVX-512 form does for two blocks:
// a byte per element pair (even code | odd code << 4) comes straight out, and the reference's error
// tree (i+8, i+4, i+2, i+1) maps onto the halves: i+8, i+4, i+2 within the even or the odd
// elements, i+1 adds the two. Eight blocks' reductions are one transpose.
#if MIXQ_HAVE_SIMD_TARGETS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {

using e2m1_avx2::e2m1_code_of_level, e2m1_avx2::e2m1_codes, e2m1_avx2::e2m1_levels, e2m1_avx2::e2m1_rounded, e2m1_avx2::u32;

struct block {
  __m256i even, odd;
};

// 16 floats' bits in element order: the shuffles leave elements 0, 2, 8, 10, 4, 6, 12, 14 (and the
// odd ones alike), which a swap of the middle 64-bit quarters puts in order.
MIXQ_ALWAYS_INLINE block block_of(__m256 a, __m256 b) {
  const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  return {_mm256_permute4x64_epi64(_mm256_castps_si256(even), 0xd8),
          _mm256_permute4x64_epi64(_mm256_castps_si256(odd), 0xd8)};
}
MIXQ_ALWAYS_INLINE block load_block(const float* p) { return block_of(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
// F16 widened exactly (every F16 value is a float) by the hardware conversion.
MIXQ_ALWAYS_INLINE block load_block(const f16_bits* p) {
  return block_of(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                  _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8))));
}
MIXQ_ALWAYS_INLINE __m256 magnitude(__m256i bits) {
  return _mm256_castsi256_ps(_mm256_and_si256(bits, u32(0x7fffffffu)));
}

struct max_op {
  MIXQ_ALWAYS_INLINE __m256 operator()(__m256 a, __m256 b) const { return _mm256_max_ps(a, b); }
};
struct sum_op {
  MIXQ_ALWAYS_INLINE __m256 operator()(__m256 a, __m256 b) const { return _mm256_add_ps(a, b); }
};

// Lane b of the result: v[b]'s 8 lanes combined by op in the reference's tree order (lane j with
// j+4, then j+2, then j+1), for 8 vectors at once, in the lane order 0, 2, 4, 6, 1, 3, 5, 7
// (in_block_order puts them back).
template <class Op>
MIXQ_ALWAYS_INLINE __m256 reduce8x8_unordered(const __m256* v, Op op) {
  __m256 t1[4], t2[2];
  for (int p = 0; p < 4; ++p) {  // lanes 0-3: v[2p]'s j + j+4; 4-7: v[2p+1]'s
    const __m256 a = v[2 * p], b = v[2 * p + 1];
    t1[p] = op(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  for (int q = 0; q < 2; ++q) {  // lanes 0-1: v[4q]'s j + j+2; 2-3: v[4q+2]'s; 4-5: v[4q+1]'s; 6-7: v[4q+3]'s
    const __m256d x = _mm256_castps_pd(t1[2 * q]), y = _mm256_castps_pd(t1[2 * q + 1]);
    t2[q] = op(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
  }
  const __m256 a = t2[0], b = t2[1];
  return op(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
MIXQ_ALWAYS_INLINE __m256 in_block_order(__m256 r) {
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
// The squared errors of 8 blocks from their even and odd terms, in the reference's order.
MIXQ_ALWAYS_INLINE __m256 block_errors(const __m256* te, const __m256* to) {
  return in_block_order(_mm256_add_ps(reduce8x8_unordered(te, sum_op{}), reduce8x8_unordered(to, sum_op{})));
}

// nibble (the sign bit of a low or high nibble) where x < 0, -0 excepted.
MIXQ_ALWAYS_INLINE __m256i sign_nibbles(__m256i bits, __m256 magnitude, uint32_t nibble) {
  const __m256i nonzero = _mm256_cmpgt_epi32(_mm256_castps_si256(magnitude), _mm256_setzero_si256());
  return _mm256_and_si256(_mm256_and_si256(_mm256_srai_epi32(bits, 31), nonzero), u32(nibble));
}

// One block under one step: its 8 code bytes (a lane each) and, when kErrors, its squared error
// terms (even and odd elements).
template <bool kErrors>
MIXQ_ALWAYS_INLINE __m256i encode_block(__m256 ae, __m256 ao, __m256i signs, __m256 step, __m256* te,
                                        __m256* to) {
  const __m256 qe = _mm256_div_ps(ae, step), qo = _mm256_div_ps(ao, step);
  __m256i ce, co;
  if constexpr (kErrors) {
    const __m256 le = e2m1_levels(qe), lo = e2m1_levels(qo);
    ce = e2m1_code_of_level(le), co = e2m1_code_of_level(lo);
    const __m256 ee = _mm256_sub_ps(ae, _mm256_mul_ps(le, step));
    const __m256 eo = _mm256_sub_ps(ao, _mm256_mul_ps(lo, step));
    *te = _mm256_mul_ps(ee, ee);
    *to = _mm256_mul_ps(eo, eo);
  } else {
    ce = e2m1_codes(qe), co = e2m1_codes(qo);
  }
  return _mm256_or_si256(_mm256_or_si256(ce, _mm256_slli_epi32(co, 4)), signs);
}

// Four blocks' code bytes (a lane each) as their 32 packed bytes, in block order.
MIXQ_ALWAYS_INLINE __m256i packed4(const __m256i* b) {
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(b[0], b[1]), _mm256_packus_epi32(b[2], b[3]));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// 8 blocks' scale codes and steps from their scales before the clamp (nvfp4_clamp_block_scale, its
// e4m3_encode, and that value times ws2): code and value from e4m3_avx2::round_block_scale, the
// step from the value itself.
MIXQ_ALWAYS_INLINE void block_scales(__m256 s, float ws2, __m256i* codes, __m256* steps) {
  const e4m3_avx2::block_scale r = e4m3_avx2::round_block_scale(s);
  *codes = r.code;
  *steps = _mm256_mul_ps(r.value, _mm256_set1_ps(ws2));
}
// The values of 8 E4M3 codes (0 to 0x7e): code · 2^-9 below 8, else exponent and mantissa bits.
MIXQ_ALWAYS_INLINE __m256 e4m3_values(__m256i code) {
  const __m256 subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(code), _mm256_set1_ps(0x1p-9f));
  const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(code, 20), u32(120u << 23));
  return _mm256_blendv_ps(_mm256_castsi256_ps(normal), subnormal, _mm256_castsi256_ps(_mm256_cmpgt_epi32(u32(8), code)));
}
// An all-zero block's substitute 1.
MIXQ_ALWAYS_INLINE __m256 one_if_zero(__m256 x) {
  return _mm256_blendv_ps(x, _mm256_set1_ps(1.0f), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
}
// nvfp4_max_block_scale_f32 before its clamp.
MIXQ_ALWAYS_INLINE __m256 max_rule_scale(__m256 bmax, float ws2) {
  return one_if_zero(_mm256_div_ps(bmax, _mm256_set1_ps(6.0f * ws2)));
}
// nvfp4_block_scale_f32 of bmax · k before its clamp (g: nvfp4_scale_amax).
MIXQ_ALWAYS_INLINE __m256 static_scale(__m256 bmax, float k, float g, float normalizer) {
  const __m256 t = one_if_zero(_mm256_div_ps(_mm256_mul_ps(bmax, _mm256_set1_ps(k)), _mm256_set1_ps(6.0f)));
  return _mm256_div_ps(_mm256_mul_ps(t, _mm256_set1_ps(normalizer)), _mm256_set1_ps(g / 6.0f));
}
// 16 codes (a lane each, in two registers) as 16 bytes in order.
MIXQ_ALWAYS_INLINE void store_codes(const __m256i* c, uint8_t* dst) {
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(c[0], c[1]), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1)));
}

// window_setup in 8-lane halves (the generic lanes' E4M3 encode keeps 16-lane temporaries on the
// stack under AVX2): k0 from block_scales, the same rounding.
MIXQ_ALWAYS_INLINE search_setup window_setup(const __m256* bmax_half, const nvfp4_job& job) {
  __m256i k0[2], lo[2], eligible[2];
  const __m256i usable = _mm256_set1_epi32(job.tables->usable ? -1 : 0);
  for (int h = 0; h < 2; ++h) {
    const __m256 rule = _mm256_div_ps(bmax_half[h], _mm256_set1_ps(6.0f * job.ws2));  // (as the generic form)
    __m256 steps;
    block_scales(one_if_zero(rule), job.ws2, &k0[h], &steps);
    lo[h] = _mm256_min_epu32(_mm256_sub_epi32(k0[h], u32(7)), u32(111));  // (k0 < 7 wraps to the top too)
    const __m256i bits = _mm256_castps_si256(rule);  // window_applies, as signed compares (rule >= 0)
    const __m256i applies =
        _mm256_and_si256(_mm256_cmpgt_epi32(bits, u32(std::bit_cast<uint32_t>(0x1.1p-6f))),
                         _mm256_cmpgt_epi32(u32(std::bit_cast<uint32_t>(448.0f) + 1u), bits));
    eligible[h] = _mm256_and_si256(applies, usable);
  }
  search_setup s;
  std::memcpy(&s.k0, k0, sizeof k0);
  std::memcpy(&s.lo, lo, sizeof lo);
  std::memcpy(&s.eligible, eligible, sizeof eligible);
  s.in_window = v16u{} + 0xffffu;
  s.above_bases = s.above = s.above_known = v16u{};
  return s;
}

// Eight blocks (a half group) from src: magnitudes, sign nibbles, and the block maxima in block order.
template <class T>
MIXQ_ALWAYS_INLINE void load_half(const T* src, __m256* ae, __m256* ao, __m256i* signs, __m256* bmax) {
  __m256 m[8];
  for (int j = 0; j < 8; ++j) {
    const block x = load_block(src + j * kNvfp4Block);
    ae[j] = magnitude(x.even);
    ao[j] = magnitude(x.odd);
    signs[j] = _mm256_or_si256(sign_nibbles(x.even, ae[j], 0x8), sign_nibbles(x.odd, ao[j], 0x80));
    m[j] = _mm256_max_ps(ae[j], ao[j]);
  }
  *bmax = in_block_order(reduce8x8_unordered(m, max_op{}));
}

// The same for BF16, from the raw pairs (even element in the low 16 bits): one mask clears both
// signs, one 16-bit compare (x − 1 < −1: negative, −0 excepted) finds both sign bits, and one
// multiply-add of the pair makes them the nibbles' sign bits.
MIXQ_ALWAYS_INLINE void load_half(const uint16_t* src, __m256* ae, __m256* ao, __m256i* signs, __m256* bmax) {
  __m256 m[8];
  for (int j = 0; j < 8; ++j) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j * kNvfp4Block));
    const __m256i magnitudes = _mm256_and_si256(w, u32(0x7fff7fffu));
    ae[j] = _mm256_castsi256_ps(_mm256_slli_epi32(magnitudes, 16));
    ao[j] = _mm256_castsi256_ps(_mm256_and_si256(magnitudes, u32(0xffff0000u)));
    const __m256i negative = _mm256_cmpgt_epi16(_mm256_set1_epi16(-1), _mm256_sub_epi16(w, _mm256_set1_epi16(1)));
    signs[j] = _mm256_madd_epi16(negative, u32(0xff80fff8u));  // −1 · −8 + −1 · −128
    m[j] = _mm256_max_ps(ae[j], ao[j]);
  }
  *bmax = in_block_order(reduce8x8_unordered(m, max_op{}));
}

// The packed codes of 8 blocks under their steps, and (kErrors) their squared errors.
template <bool kErrors>
MIXQ_ALWAYS_INLINE void encode_half(const __m256* ae, const __m256* ao, const __m256i* signs, const float* step,
                                    uint8_t* packed, float* errors) {
  __m256i bytes[8];
  __m256 te[8], to[8];
  for (int j = 0; j < 8; ++j)
    bytes[j] = encode_block<kErrors>(ae[j], ao[j], signs[j], _mm256_broadcast_ss(step + j), &te[j], &to[j]);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed), packed4(bytes));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + 32), packed4(bytes + 4));
  if constexpr (kErrors) _mm256_storeu_ps(errors, block_errors(te, to));
}

// The reference's error terms (nvfp4_sq_error_term) of 8 magnitudes under step: (a − level · step)²
// with level the E2M1 rounding of a / step (into *level when asked), each operation rounded as there.
MIXQ_ALWAYS_INLINE __m256 sq_error_terms(__m256 a, __m256 step, __m256* level = nullptr) {
  const __m256 l = e2m1_levels(_mm256_div_ps(a, step));
  if (level) *level = l;
  const __m256 d = _mm256_sub_ps(a, _mm256_mul_ps(l, step));
  return _mm256_mul_ps(d, d);
}

// The codes of the levels kept (second: the blocks whose second candidate is kept) and the kept
// scale codes.
MIXQ_ALWAYS_INLINE void store_kept(const __m256 (*level)[8][2], const __m256i* signs, const uint32_t* code1,
                                   const uint32_t* code2, __m256 second, uint8_t* scales, uint8_t* packed) {
  const int second_bits = _mm256_movemask_ps(second);
  __m256i bytes[8];
  for (int j = 0; j < 8; ++j) {
    const __m256* kept = level[(second_bits >> j) & 1][j];
    bytes[j] = _mm256_or_si256(_mm256_or_si256(e2m1_code_of_level(kept[0]), _mm256_slli_epi32(e2m1_code_of_level(kept[1]), 4)),
                               signs[j]);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed), packed4(bytes));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + 32), packed4(bytes + 4));
  const __m256i codes = _mm256_blendv_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(code1)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(code2)),
                                           _mm256_castps_si256(second));
  const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(scales), _mm_packus_epi16(c16, c16));
}

// Four-over-six for 8 blocks: both candidates' levels and errors, the first kept unless the
// second's error is strictly lower, then the codes of the levels kept.
MIXQ_ALWAYS_INLINE void four_over_six_half(const __m256* ae, const __m256* ao, const __m256i* signs,
                                           const float* step1, const float* step2, const uint32_t* code1,
                                           const uint32_t* code2, uint8_t* scales, uint8_t* packed, float* errors) {
  __m256 level[2][8][2];  // [candidate][block][even, odd]
  __m256 te[2][8], to[2][8];
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 2; ++c) {
      const __m256 step = _mm256_broadcast_ss((c == 0 ? step1 : step2) + j);
      te[c][j] = sq_error_terms(ae[j], step, &level[c][j][0]);
      to[c][j] = sq_error_terms(ao[j], step, &level[c][j][1]);
    }
  const __m256 err1 = block_errors(te[0], to[0]), err2 = block_errors(te[1], to[1]);
  const __m256 second = _mm256_cmp_ps(err2, err1, _CMP_LT_OQ);
  store_kept(level, signs, code1, code2, second, scales, packed);
  if (errors) _mm256_storeu_ps(errors, _mm256_blendv_ps(err1, err2, second));
}

// four_over_six_half deciding from estimates (four_over_six_bound): false, with nothing written,
// where a block's two estimates lie within the bound of each other. Blocks whose two scale codes
// agree keep the first, as the reference's strict comparison of equal sums does.
MIXQ_ALWAYS_INLINE bool four_over_six_half_estimating(const __m256* ae, const __m256* ao, const __m256i* signs,
                                                      const float* step1, const float* step2, const uint32_t* code1,
                                                      const uint32_t* code2, __m256 bmax, uint8_t* scales,
                                                      uint8_t* packed) {
  __m256 level[2][8][2];  // [candidate][block][even, odd]
  __m256 sq[2][8];
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 2; ++c) {
      const __m256 step = _mm256_broadcast_ss((c == 0 ? step1 : step2) + j);
      const __m256 qe = _mm256_div_ps(ae[j], step), qo = _mm256_div_ps(ao[j], step);
      level[c][j][0] = e2m1_levels(qe), level[c][j][1] = e2m1_levels(qo);
      const __m256 de = _mm256_sub_ps(qe, level[c][j][0]), dor = _mm256_sub_ps(qo, level[c][j][1]);
      sq[c][j] = _mm256_fmadd_ps(de, de, _mm256_mul_ps(dor, dor));
    }
  const __m256 s1 = _mm256_load_ps(step1), s2 = _mm256_load_ps(step2);
  const __m256 e1 = _mm256_mul_ps(_mm256_mul_ps(in_block_order(reduce8x8_unordered(sq[0], sum_op{})), s1), s1);
  const __m256 e2 = _mm256_mul_ps(_mm256_mul_ps(in_block_order(reduce8x8_unordered(sq[1], sum_op{})), s2), s2);
  const __m256 bound = four_over_six_bound(_mm256_max_ps(e1, e2), s1, s2, bmax);
  const __m256i same = _mm256_cmpeq_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(code1)),
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(code2)));
  const __m256 finite = _mm256_cmp_ps(bound, _mm256_set1_ps(INFINITY), _CMP_LT_OQ);  // (else an error overflowed)
  const __m256 second = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_sub_ps(e1, e2), bound, _CMP_GT_OQ));
  const __m256 first = _mm256_or_ps(_mm256_and_ps(finite, _mm256_cmp_ps(_mm256_sub_ps(e2, e1), bound, _CMP_GE_OQ)),
                                    _mm256_castsi256_ps(same));
  if (_mm256_movemask_ps(_mm256_or_ps(second, first)) != 0xff) return false;
  store_kept(level, signs, code1, code2, second, scales, packed);
  return true;
}

// A window's bounds from its 16 estimates A: A ± δ, δ = 2^-15 A + the codes' margins.
MIXQ_ALWAYS_INLINE void window_bounds(const __m256* est, const float* margin, v16f* above_error, v16f* below_error) {
  __m256 above[2], below[2];
  for (int h = 0; h < 2; ++h) {
    const __m256 delta = _mm256_fmadd_ps(est[h], _mm256_set1_ps(0x1p-15f), _mm256_loadu_ps(margin + 8 * h));
    above[h] = _mm256_add_ps(est[h], delta);
    below[h] = _mm256_sub_ps(est[h], delta);
  }
  std::memcpy(above_error, above, sizeof above);
  std::memcpy(below_error, below, sizeof below);
}

// estimate_window with multiply-adds into two accumulators per 8 candidates, each value's nearest
// level by e2m1_levels (exact): at most 8 roundings of a partial sum per term, within the 15 sums
// the bound counts. kUpperUnclipped: the window's upper 8 codes are all above the max rule's k0
// (lo = k0 − 7; the max rule is at most the midpoint to k0 + 1, so step ≥ bmax / 6 · 1.03), every
// |w| / step there is below 6 and the levels need no saturation.
template <bool kUpperUnclipped>
MIXQ_ALWAYS_INLINE void estimate_window(const float* a, uint32_t lo, const code_tables& t, v16f* above_error,
                                        v16f* below_error) {
  const __m256 recip[2] = {_mm256_loadu_ps(t.recip + lo), _mm256_loadu_ps(t.recip + lo + 8)};
  __m256 acc[2][2];
#pragma GCC unroll 16  // (constant indices keep acc in registers)
  for (int i = 0; i < kNvfp4Block; ++i) {
    const __m256 x = _mm256_broadcast_ss(a + i);
    for (int h = 0; h < 2; ++h) {
      const __m256 q = _mm256_mul_ps(x, recip[h]);
      const __m256 d = _mm256_sub_ps(q, h == 1 && kUpperUnclipped ? e2m1_rounded(q) : e2m1_levels(q));
      acc[h][i & 1] = i < 2 ? _mm256_mul_ps(d, d) : _mm256_fmadd_ps(d, d, acc[h][i & 1]);
    }
  }
  __m256 est[2];
  for (int h = 0; h < 2; ++h)
    est[h] = _mm256_mul_ps(_mm256_add_ps(acc[h][0], acc[h][1]), _mm256_loadu_ps(t.step_sq + lo + 8 * h));
  window_bounds(est, t.step_sq_margin + lo, above_error, below_error);
}

// The window at the top of the codes (lo = 111), out of line: rare, and one inlined copy of the
// estimates keeps the common loop's registers.
__attribute__((noinline)) void estimate_top_window(const float* a, uint32_t lo, const code_tables& t, v16f* above_error,
                                                   v16f* below_error) {
  estimate_window<false>(a, lo, t, above_error, below_error);
}

// The narrow window: 12 codes lo = k0 − 3 .. k0 + 8 where k0 <= 118. Its top octave is the
// 16-code window's (so the codes above still lose to it, or join as they do there), and below it
// the block max clips from k0 − 4 on (|w| / step at least 7.7): where that bound does not settle a
// block, the 16-code window does. The sweep's least error lies within k0 − 2 .. k0 + 7 in
// practice, and the multiplier list's codes near 1 fall there. Two blocks' windows take
// three registers: each one's lower 8 codes, and the upper 4 of both (above k0: no saturation).
MIXQ_ALWAYS_INLINE void estimate_narrow_pair(const float* a, const float* b, uint32_t lo_a, uint32_t lo_b,
                                             const code_tables& t, v16f* above_error, v16f* below_error) {
  const auto pair = [&](const float* table) {  // codes lo + 8 .. lo + 11 of both
    return _mm256_set_m128(_mm_loadu_ps(table + lo_b + 8), _mm_loadu_ps(table + lo_a + 8));
  };
  const __m256 recip[3] = {_mm256_loadu_ps(t.recip + lo_a), _mm256_loadu_ps(t.recip + lo_b), pair(t.recip)};
  __m256 acc[3];  // (one chain each, 15 roundings of the sum as the bound counts: three chains
                  // are enough to overlap, and more would spill)
#pragma GCC unroll 16  // (constant indices keep acc in registers)
  for (int i = 0; i < kNvfp4Block; ++i) {
    const __m256 xa = _mm256_broadcast_ss(a + i), xb = _mm256_broadcast_ss(b + i);
    const __m256 x[3] = {xa, xb, _mm256_blend_ps(xa, xb, 0xf0)};
    for (int r = 0; r < 3; ++r) {
      const __m256 q = _mm256_mul_ps(x[r], recip[r]);
      const __m256 d = _mm256_sub_ps(q, r == 2 ? e2m1_rounded(q) : e2m1_levels(q));
      acc[r] = i == 0 ? _mm256_mul_ps(d, d) : _mm256_fmadd_ps(d, d, acc[r]);
    }
  }
  const __m256 step_sq[3] = {_mm256_loadu_ps(t.step_sq + lo_a), _mm256_loadu_ps(t.step_sq + lo_b),
                             pair(t.step_sq)};
  const __m256 margin[3] = {_mm256_loadu_ps(t.step_sq_margin + lo_a), _mm256_loadu_ps(t.step_sq_margin + lo_b),
                            pair(t.step_sq_margin)};
  __m256 above[3], below[3];
  for (int r = 0; r < 3; ++r) {
    const __m256 est = _mm256_mul_ps(acc[r], step_sq[r]);
    const __m256 delta = _mm256_fmadd_ps(est, _mm256_set1_ps(0x1p-15f), margin[r]);
    above[r] = _mm256_add_ps(est, delta);
    below[r] = _mm256_sub_ps(est, delta);
  }
  // In the 16-lane layout: codes lo .. lo + 11, then +inf (never candidates).
  const __m256 inf = _mm256_set1_ps(INFINITY);
  const __m256 upper[2][2] = {{_mm256_permute2f128_ps(above[2], inf, 0x20), _mm256_permute2f128_ps(above[2], inf, 0x21)},
                              {_mm256_permute2f128_ps(below[2], inf, 0x20), _mm256_permute2f128_ps(below[2], inf, 0x21)}};
  const __m256 out_above[2][2] = {{above[0], upper[0][0]}, {above[1], upper[0][1]}};
  const __m256 out_below[2][2] = {{below[0], upper[1][0]}, {below[1], upper[1][1]}};
  std::memcpy(&above_error[0], out_above[0], sizeof out_above[0]);
  std::memcpy(&above_error[1], out_above[1], sizeof out_above[1]);
  std::memcpy(&below_error[0], out_below[0], sizeof out_below[0]);
  std::memcpy(&below_error[1], out_below[1], sizeof out_below[1]);
}

// nvfp4_block_sq_error of 16 magnitudes: the same roundings, summed in the same tree.
float block_sq_error(const float* magnitudes, float step) {
  const __m256 s = _mm256_set1_ps(step);
  __m256 t[2];
  for (int h = 0; h < 2; ++h) t[h] = sq_error_terms(_mm256_loadu_ps(magnitudes + 8 * h), s);
  const __m256 eight = _mm256_add_ps(t[0], t[1]);  // t[i] + t[i + 8]
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
  return _mm_cvtss_f32(v);
}

// The term table's terms: nvfp4_sq_error_term(1 + m/128, step) for every row m and step, 8 at a
// time (sq_error_terms). False where a term from z on is not a'² (cannot happen: a' / step is
// below 1/4 there).
bool fill_terms(term_table& t) {
  for (int m = 0; m < 128; ++m) {
    const float a = 1.0f + float(m) / 128.0f;
    const __m256 av = _mm256_set1_ps(a);
    float* row = t.terms() + m * t.row;
    for (int i = 0; i < t.row; i += 8) _mm256_storeu_ps(row + i, sq_error_terms(av, _mm256_loadu_ps(t.steps.data() + i)));
    for (int i = t.z; i < t.row; ++i)
      if (row[i] != a * a) return false;
  }
  return true;
}

// Where each of a block's values reads its terms, and its 4^E (0 below 2^-63).
MIXQ_ALWAYS_INLINE void term_positions(const float* a, uint32_t lo, const term_table& tt, int32_t* offset,
                                       float* power) {
  const __m256i base = _mm256_set1_epi32(int(lo) + 8 * 127 - tt.c_min);
  for (int h = 0; h < 2; ++h) {
    const __m256i bits = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + 8 * h));
    const __m256i e = _mm256_srli_epi32(bits, 23);  // biased exponent (a >= 0)
    const __m256i m = _mm256_and_si256(_mm256_srli_epi32(bits, 16), u32(0x7f));
    const __m256i start = _mm256_min_epi32(_mm256_max_epi32(_mm256_sub_epi32(base, _mm256_slli_epi32(e, 3)),
                                                            _mm256_setzero_si256()),
                                           _mm256_set1_epi32(tt.z));
    _mm256_store_si256(reinterpret_cast<__m256i*>(offset + 8 * h),
                       _mm256_add_epi32(_mm256_mullo_epi32(m, _mm256_set1_epi32(tt.row)), start));
    const __m256i four_to_e = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_add_epi32(e, e), u32(127)), 23);
    _mm256_store_si256(reinterpret_cast<__m256i*>(power + 8 * h),
                       _mm256_and_si256(four_to_e, _mm256_cmpgt_epi32(e, _mm256_set1_epi32(63))));
  }
}

// Lane k of each 128-bit half of v in all four of its lanes: an immediate per k, so that builds
// that do not unroll the callers' loops (-O0, -O1) still compile.
MIXQ_ALWAYS_INLINE __m256 lane_in_halves(__m256 v, int k) {
  switch (k) {
    case 0: return _mm256_permute_ps(v, 0x00);
    case 1: return _mm256_permute_ps(v, 0x55);
    case 2: return _mm256_permute_ps(v, 0xaa);
    default: return _mm256_permute_ps(v, 0xff);
  }
}

// estimate_window from the term table (BF16): each value's 16 terms read at once, scaled by 4^E
// (exact), summed by multiply-adds into four accumulators per 8 codes (3 roundings of a partial
// sum per term, then 2). The terms are the reference's own, bit for bit, but where one is subnormal
// (its rounding then does not scale: within 2^-149) or a value is below 2^-63 (4^E subnormal: taken
// as 0; with steps from 2^-46 its level is 0 and its term below 2^-126): the estimate is within
// (γ_5 + γ_4) S + 2^-121 of the reference's tree sum, well inside δ.
MIXQ_ALWAYS_INLINE void estimate_by_terms(const int32_t* offset, const float* power, uint32_t lo, const term_table& tt,
                                          const code_tables& t, v16f* above_error, v16f* below_error) {
  const float* terms = tt.terms();
  const __m256 pw[2] = {_mm256_load_ps(power), _mm256_load_ps(power + 8)};
  const __m256 dup[4] = {_mm256_permute2f128_ps(pw[0], pw[0], 0x00), _mm256_permute2f128_ps(pw[0], pw[0], 0x11),
                         _mm256_permute2f128_ps(pw[1], pw[1], 0x00), _mm256_permute2f128_ps(pw[1], pw[1], 0x11)};
  __m256 acc[2][4];
#pragma GCC unroll 16
  for (int i = 0; i < kNvfp4Block; ++i) {
    const float* r = terms + offset[i];
    const __m256 p = lane_in_halves(dup[i >> 2], i & 3);
    for (int h = 0; h < 2; ++h) {
      const __m256 x = _mm256_loadu_ps(r + 8 * h);
      acc[h][i & 3] = i < 4 ? _mm256_mul_ps(x, p) : _mm256_fmadd_ps(x, p, acc[h][i & 3]);
    }
  }
  __m256 est[2];
  for (int h = 0; h < 2; ++h)
    est[h] = _mm256_add_ps(_mm256_add_ps(acc[h][0], acc[h][1]), _mm256_add_ps(acc[h][2], acc[h][3]));
  window_bounds(est, t.step_sq_margin + lo, above_error, below_error);
}

// One eligible block's code from the estimates of its window (codes lo .. lo + 15, the candidates
// among them as bits, A + δ in a, A − δ in b), with 8-lane compares (GCC lowers 16-lane compares
// lane by lane, through the stack, without AVX-512): the least A + δ of its candidates and the
// lanes whose A − δ is not above it (a NaN too) as bits, as the generic form takes each step.
// 0 where the bounds do not settle it (codes below the window may hold the least error).
// (A + δ is never NaN; a NaN among them would only leave a bound that still holds.)
MIXQ_ALWAYS_INLINE uint32_t decide_block(const float* values, float bmax, uint32_t lo, uint32_t window,
                                         uint32_t above_bases, uint64_t above_codes, const v16f& above,
                                         const v16f& below, const nvfp4_job& job, uint32_t width) {
  const __m256i lane_bit[2] = {_mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128),
                               _mm256_setr_epi32(256, 512, 1024, 2048, 4096, 8192, 16384, 32768)};
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 a[2], b[2];
  std::memcpy(a, &above, sizeof a);
  std::memcpy(b, &below, sizeof b);
  __m256 m = _mm256_min_ps(a[0], a[1]);  // every code a candidate (the lanes past the window hold +inf)
  if (window != (1u << width) - 1) {
    const __m256i w = _mm256_set1_epi32(int(window));
    m = inf;
    for (int h = 0; h < 2; ++h) {
      const __m256i candidate = _mm256_cmpeq_epi32(_mm256_and_si256(w, lane_bit[h]), lane_bit[h]);
      m = _mm256_min_ps(m, _mm256_blendv_ps(inf, a[h], _mm256_castsi256_ps(candidate)));
    }
  }
  m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 1));
  m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4e));
  m = _mm256_min_ps(m, _mm256_permute_ps(m, 0xb1));
  const float bound = _mm256_cvtss_f32(m);
  const __m256 bound_v = _mm256_set1_ps(bound);
  const uint32_t close = uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(b[0], bound_v, _CMP_NGT_UQ))) |
                         uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(b[1], bound_v, _CMP_NGT_UQ))) << 8;
  // Every code below lo clips the block's max: the max's own error term grows as the step shrinks.
  const float clipped = bmax - 6.0f * job.tables->step[lo - 1];  // (lo >= 2 where eligible)
  if (!(bound < INFINITY && clipped * clipped > bound)) return 0;
  const uint32_t contenders = close & window, unsettled = above_bases & ~window & close;
  return !unsettled && std::popcount(contenders) == 1
             ? lo + uint32_t(std::countr_zero(contenders))
             : settle_block<simd_level::avx2>(values, bmax, lo, contenders, unsettled, true, job, width, above_codes);
}

// A narrow window's block its bounds did not settle: the 16-code window (lo = k0 − 7 <= 111).
__attribute__((noinline)) uint32_t decide_by_full_window(const float* values, float bmax, uint32_t lo,
                                                         uint32_t window, uint32_t above_bases, uint64_t above_codes,
                                                         const nvfp4_job& job) {
  v16f above, below;
  estimate_window<true>(values, lo, *job.tables, &above, &below);
  const uint32_t code = decide_block(values, bmax, lo, window, above_bases, above_codes, above, below, job, 16);
  return code ? code : settle_block<simd_level::avx2>(values, bmax, lo, 0, 0, false, job);
}

// Each block's code from its window's estimates (narrow: bits of the blocks in narrow windows,
// whose lo, window and bases move up by 4 codes from the setup's).
MIXQ_ALWAYS_INLINE v16u search_decide(const float (*values)[kNvfp4Block], v16f bmax_v, const search_setup& s,
                                      const v16f* above, const v16f* below, uint32_t narrow, const nvfp4_job& job) {
  alignas(64) uint32_t lo[kGroup], window[kGroup], eligible[kGroup], above_bases[kGroup], chosen[kGroup];
  alignas(64) uint32_t above_codes[kGroup], known[kGroup];
  alignas(64) float bmax[kGroup];
  std::memcpy(lo, &s.lo, sizeof lo);
  std::memcpy(window, &s.in_window, sizeof window);
  std::memcpy(eligible, &s.eligible, sizeof eligible);
  std::memcpy(above_bases, &s.above_bases, sizeof above_bases);
  std::memcpy(above_codes, &s.above, sizeof above_codes);
  std::memcpy(known, &s.above_known, sizeof known);
  std::memcpy(bmax, &bmax_v, sizeof bmax);
  for (int j = 0; j < kGroup; ++j) {
    const bool in_narrow = narrow >> j & 1;
    const uint64_t listed = above_codes_of(above_codes[j], known[j]);
    const uint32_t code = !eligible[j] ? 0
                          : in_narrow  ? decide_block(values[j], bmax[j], lo[j] + 4, window[j] >> 4 & 0xfffu,
                                                      above_bases[j] >> 4, listed, above[j], below[j], job, 12)
                                       : decide_block(values[j], bmax[j], lo[j], window[j], above_bases[j], listed,
                                                      above[j], below[j], job, 16);
    chosen[j] = code        ? code
                : in_narrow ? decide_by_full_window(values[j], bmax[j], lo[j], window[j], above_bases[j], listed, job)
                            : settle_block<simd_level::avx2>(values[j], bmax[j], lo[j], 0, 0, false, job);
  }
  v16u out;
  std::memcpy(&out, chosen, sizeof out);
  return out;
}

// Each block's magnitudes in element order (from the even / odd halves), for the estimates.
MIXQ_ALWAYS_INLINE void store_values(__m256 ae, __m256 ao, float* out) {
  const __m256 lo = _mm256_unpacklo_ps(ae, ao), hi = _mm256_unpackhi_ps(ae, ao);  // elements 0-3 | 8-11, 4-7 | 12-15
  _mm256_store_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
  _mm256_store_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

enum class group_kind { max, max_with_errors, four_over_six, search, search_with_errors };
constexpr bool with_errors(group_kind k) { return k == group_kind::max_with_errors || k == group_kind::search_with_errors; }

// 16 blocks from src: the block maxima, the block scales in two 8-lane halves (for the searches
// the setup generic, the estimates and the decision here), then the codes in two halves.
template <group_kind K, class T>
MIXQ_ALWAYS_INLINE void quantize_group(const T* src, const nvfp4_job& job, uint8_t* scales, uint8_t* packed,
                                       float* errors) {
  __m256 ae[kGroup], ao[kGroup], bmax_half[2];
  __m256i signs[kGroup];
  for (int h = 0; h < 2; ++h) load_half(src + h * 8 * kNvfp4Block, ae + 8 * h, ao + 8 * h, signs + 8 * h, &bmax_half[h]);
  v16f bmax;
  std::memcpy(&bmax, bmax_half, sizeof bmax);
  alignas(32) float step1[kGroup], step2[kGroup];
  if constexpr (K == group_kind::four_over_six) {
    alignas(32) uint32_t code1[kGroup], code2[kGroup];
    for (int candidate = 0; candidate < 2; ++candidate)  // block max -> 6, -> 4
      for (int h = 0; h < 2; ++h) {
        __m256i c;
        __m256 steps;
        block_scales(static_scale(bmax_half[h], candidate ? 1.5f : 1.0f, job.g, job.normalizer), job.ws2, &c, &steps);
        _mm256_store_si256(reinterpret_cast<__m256i*>((candidate ? code2 : code1) + 8 * h), c);
        _mm256_store_ps((candidate ? step2 : step1) + 8 * h, steps);
      }
    for (int h = 0; h < 2; ++h)
      if (errors || !four_over_six_half_estimating(ae + 8 * h, ao + 8 * h, signs + 8 * h, step1 + 8 * h, step2 + 8 * h,
                                                   code1 + 8 * h, code2 + 8 * h, bmax_half[h], scales + 8 * h,
                                                   packed + 8 * h * (kNvfp4Block / 2)))
        four_over_six_half(ae + 8 * h, ao + 8 * h, signs + 8 * h, step1 + 8 * h, step2 + 8 * h, code1 + 8 * h,
                           code2 + 8 * h, scales + 8 * h, packed + 8 * h * (kNvfp4Block / 2), errors ? errors + 8 * h : nullptr);
    return;
  }
  __m256i codes[2];
  if constexpr (K == group_kind::max || K == group_kind::max_with_errors) {
    for (int h = 0; h < 2; ++h) {
      __m256 steps;
      block_scales(max_rule_scale(bmax_half[h], job.ws2), job.ws2, &codes[h], &steps);
      _mm256_store_ps(step1 + 8 * h, steps);
    }
  } else {
    search_setup setup = window_setup(bmax_half, job);
    if (job.selector == nvfp4_selector::mse_multiplier) multiplier_candidates(setup, bmax, job);
    alignas(32) float values[kGroup][kNvfp4Block];
    for (int j = 0; j < kGroup; ++j) store_values(ae[j], ao[j], values[j]);
    alignas(32) uint32_t eligible[kGroup], lo[kGroup];
    std::memcpy(eligible, &setup.eligible, sizeof eligible);
    std::memcpy(lo, &setup.lo, sizeof lo);
    alignas(32) uint32_t k0[kGroup];
    std::memcpy(k0, &setup.k0, sizeof k0);
    v16f above[kGroup], below[kGroup];
    uint32_t narrow = 0;  // pairs of blocks in narrow windows
    if (job.terms) {
      alignas(32) int32_t offset[kGroup][kNvfp4Block];
      alignas(32) float power[kGroup][kNvfp4Block];
      for (int j = 0; j < kGroup; ++j) term_positions(values[j], lo[j], *job.terms, offset[j], power[j]);
      for (int j = 0; j < kGroup; ++j) {
        if (!eligible[j]) continue;
        if (lo[j] >= 8) estimate_by_terms(offset[j], power[j], lo[j], *job.terms, *job.tables, &above[j], &below[j]);
        else estimate_window<true>(values[j], lo[j], *job.tables, &above[j], &below[j]);  // (k0 < 15: not the top)
      }
    }
    for (int j = 0; j < kGroup && !job.terms; j += 2) {
      if (eligible[j] && eligible[j + 1] && k0[j] <= 118 && k0[j + 1] <= 118) {
        narrow |= 3u << j;
        estimate_narrow_pair(values[j], values[j + 1], k0[j] - 3, k0[j + 1] - 3, *job.tables, &above[j], &below[j]);
        continue;
      }
      for (int i = j; i < j + 2; ++i) {
        if (!eligible[i]) continue;
        if (lo[i] + 7 == k0[i]) estimate_window<true>(values[i], lo[i], *job.tables, &above[i], &below[i]);
        else estimate_top_window(values[i], lo[i], *job.tables, &above[i], &below[i]);
      }
    }
    const v16u chosen = search_decide(values, bmax, setup, above, below, narrow, job);
    std::memcpy(codes, &chosen, sizeof codes);
    for (int h = 0; h < 2; ++h)
      _mm256_store_ps(step1 + 8 * h, _mm256_mul_ps(e4m3_values(codes[h]), _mm256_set1_ps(job.ws2)));
  }
  store_codes(codes, scales);
  for (int h = 0; h < 2; ++h)
    encode_half<with_errors(K)>(ae + 8 * h, ao + 8 * h, signs + 8 * h, step1 + 8 * h,
                                packed + 8 * h * (kNvfp4Block / 2), errors ? errors + 8 * h : nullptr);
}

template <group_kind K, class T>
__attribute__((noinline)) void quantize_groups(const T* src, int64_t count, const nvfp4_job& job, uint8_t* scales,
                                               uint8_t* packed, float* errors) {
  const nvfp4_job local = job;  // (its scalars stay in registers: the byte stores cannot alias a local)
  for (int64_t g = 0; g < count; ++g)
    quantize_group<K>(src + g * kGroupValues, local, scales + g * kGroup, packed + g * kGroup * (kNvfp4Block / 2),
                      errors ? errors + g * kGroup : nullptr);
}

template <class T>
void quantize_groups_of(const T* src, int64_t count, const nvfp4_job& job, uint8_t* scales, uint8_t* packed,
                        float* errors) {
  const auto run = [&](auto kind) {
    quantize_groups<decltype(kind)::value>(src, count, job, scales, packed, errors);
  };
  switch (job.selector) {
    case nvfp4_selector::max:
      if (errors) return run(std::integral_constant<group_kind, group_kind::max_with_errors>());
      return run(std::integral_constant<group_kind, group_kind::max>());
    case nvfp4_selector::four_over_six: return run(std::integral_constant<group_kind, group_kind::four_over_six>());
    default:
      if (errors) return run(std::integral_constant<group_kind, group_kind::search_with_errors>());
      return run(std::integral_constant<group_kind, group_kind::search>());
  }
}

void quantize_blocks(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n, const nvfp4_job& job,
                     uint8_t* scales, uint8_t* packed, float* errors) {
  quantize_by_groups(w, zero_nonfinite, b0, n, nullptr, scales, packed, errors,
                     [&](const auto* src, const float*, int64_t count, uint8_t* s, uint8_t* p, float* e) {
                       quantize_groups_of(src, count, job, s, p, e);
                     });
}

}  // namespace avx2
#pragma GCC pop_options
#endif

// The scale codes the MSE selector picks for 16 blocks (ax: their magnitudes, in element order).
template <simd_level L>
MIXQ_ALWAYS_INLINE v16u search_group(const v16f* ax, v16f bmax, const nvfp4_job& job) {
  const search_setup s = setup_search(bmax, job);
  alignas(64) float values[kGroup][kNvfp4Block];  // in memory: the estimates broadcast each value
  std::memcpy(values, ax, sizeof values);
  alignas(64) uint32_t eligible[kGroup], lo[kGroup];
  std::memcpy(eligible, &s.eligible, sizeof eligible);
  std::memcpy(lo, &s.lo, sizeof lo);
  v16f above[kGroup], below[kGroup];
  for (int j = 0; j < kGroup; ++j)
    if (eligible[j]) estimate_window<L>(values[j], lo[j], *job.tables, &above[j], &below[j]);
  return search_decide<L>(values, bmax, s, above, below, job);
}

// ---- groups, chunks, the tensor -----------------------------------------------------------------

// 16 blocks starting at value i0 of src (a functor returning 16 values' float bits).
template <simd_level L, class Source>
MIXQ_ALWAYS_INLINE void quantize_group(const Source& src, int64_t i0, const nvfp4_job& job, uint8_t* scales,
                                       uint8_t* packed, float* errors) {
  v16u bits[kGroup];
  v16f ax[kGroup];
  for (int j = 0; j < kGroup; ++j) {
    bits[j] = src(i0 + j * kNvfp4Block);
    ax[j] = lanes::abs_of(bits[j]);
  }
  const v16f bmax = lanes::reduce16x16(ax, lanes::magnitude_max_op{});
  switch (job.selector) {
    case nvfp4_selector::max:
      return encode_group<L>(bits, lanes::e4m3_encode(lanes::max_block_scale(bmax, job.ws2)), job.ws2, scales, packed,
                             errors);
    case nvfp4_selector::four_over_six: return four_over_six_group<L>(bits, bmax, job, scales, packed, errors);
    case nvfp4_selector::mse_multiplier:
    case nvfp4_selector::mse_fp8_sweep:
    case nvfp4_selector::mse_four_over_six:
      return encode_group<L>(bits, search_group<L>(ax, bmax, job), job.ws2, scales, packed, errors);
  }
}

struct bf16_values {
  const uint16_t* p;
  MIXQ_ALWAYS_INLINE v16u operator()(int64_t i) const { return lanes::widen_bf16(p + i); }
};
struct f32_values {
  const float* p;
  MIXQ_ALWAYS_INLINE v16u operator()(int64_t i) const { return lanes::load_bits(p + i); }
};


#if MIXQ_HAVE_SIMD_TARGETS
namespace avx512 {
void quantize_blocks(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n, const nvfp4_job& job,
                     uint8_t* scales, uint8_t* packed, float* errors);
}
#endif

// The generic lanes' form of quantize_blocks (F16 groups widened through a copy).
template <simd_level L>
void generic_quantize_blocks(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n, const nvfp4_job& job,
                             uint8_t* scales, uint8_t* packed, float* errors) {
  constexpr int half = kNvfp4Block / 2;
  quantize_by_groups(w, zero_nonfinite, b0, n, nullptr, scales, packed, errors,
                     [&](const auto* src, const float*, int64_t count, uint8_t* s, uint8_t* p, float* e) {
                       using T = std::remove_cv_t<std::remove_pointer_t<decltype(src)>>;
                       for (int64_t g = 0; g < count; ++g) {
                         const int64_t i0 = g * kGroupValues, o = g * kGroup;
                         float* err = e ? e + o : nullptr;
                         if constexpr (std::is_same_v<T, uint16_t>) {
                           quantize_group<L>(bf16_values{src}, i0, job, s + o, p + o * half, err);
                         } else if constexpr (std::is_same_v<T, float>) {
                           quantize_group<L>(f32_values{src}, i0, job, s + o, p + o * half, err);
                         } else {
                           alignas(64) float buf[kGroupValues];
                           for (int i = 0; i < kGroupValues; ++i) buf[i] = f16_decode_table()[src[i0 + i].bits];
                           quantize_group<L>(f32_values{buf}, 0, job, s + o, p + o * half, err);
                         }
                       }
                     });
}

// Blocks [b0, b0 + n) of w; scales, packed and errors point at block b0's outputs.
template <simd_level L>
MIXQ_ALWAYS_INLINE void quantize_blocks_impl(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n,
                                             const nvfp4_job& job, uint8_t* scales, uint8_t* packed, float* errors) {
#if MIXQ_HAVE_SIMD_TARGETS
  if constexpr (L == simd_level::avx512) return avx512::quantize_blocks(w, zero_nonfinite, b0, n, job, scales, packed, errors);
  else if constexpr (L == simd_level::avx2) return avx2::quantize_blocks(w, zero_nonfinite, b0, n, job, scales, packed, errors);
  else
#endif
    generic_quantize_blocks<L>(w, zero_nonfinite, b0, n, job, scales, packed, errors);
}

// ---- AVX-512: two blocks per register pair -------------------------------------------------------
//
// 64 bytes of BF16 (two blocks) split as float bits into their even elements (one register: block
// 2p's in lanes 0-7, block 2p+1's in 8-15) and odd elements (another): one shift or one and per
// 16 values, and a byte per element pair (even code | odd code << 4) comes straight out, two
// blocks' packed codes in one 16-byte store. The reference's error tree (i+8, i+4, i+2, i+1) maps
// onto the halves: i+8, i+4, i+2 stay within the even or the odd elements, i+1 adds the two.
#if MIXQ_HAVE_SIMD_TARGETS
MIXQ_BEGIN_AVX512_REGION
namespace avx512 {

struct pair {
  __m512i even, odd;
};

MIXQ_ALWAYS_INLINE __m512i u32(uint32_t x) { return _mm512_set1_epi32(int(x)); }
MIXQ_ALWAYS_INLINE __m512i vec(v16u v) { return (__m512i)v; }

MIXQ_ALWAYS_INLINE pair load_pair(const uint16_t* p) {
  const __m512i w = _mm512_loadu_si512(p);
  return {_mm512_slli_epi32(w, 16), _mm512_and_si512(w, u32(0xffff0000u))};
}
MIXQ_ALWAYS_INLINE pair pair_of(__m512i a, __m512i b) {  // 32 floats' bits in element order
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return {_mm512_permutex2var_epi32(a, even, b), _mm512_permutex2var_epi32(a, _mm512_add_epi32(even, u32(1)), b)};
}
MIXQ_ALWAYS_INLINE pair load_pair(const float* p) { return pair_of(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 16)); }
// F16 widened exactly (every F16 value is a float) by the hardware conversion.
MIXQ_ALWAYS_INLINE pair load_pair(const f16_bits* p) {
  return pair_of(_mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))),
                 _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)))));
}
MIXQ_ALWAYS_INLINE __m512 magnitude(__m512i bits) { return _mm512_castsi512_ps(_mm512_and_si512(bits, u32(0x7fffffffu))); }

// lanes::e2m1_codes_by_key's key, with its bit-22 step as a masked add. kBelow28: every q < 28,
// so keys need no upper clamp.
template <bool kBelow28>
MIXQ_ALWAYS_INLINE __m512i e2m1_key(__m512 q) {
  const __m512i u = _mm512_castps_si512(q);
  const __mmask16 ge = _mm512_test_epi32_mask(u, u32(0x400000u));
  __m512i k = _mm512_add_epi32(u, u32(0x1fffffu));
  k = _mm512_mask_add_epi32(k, ge, k, u32(1));
  k = _mm512_max_epu32(_mm512_srli_epi32(k, 21), u32(496));
  return kBelow28 ? k : _mm512_min_epu32(k, u32(527));
}
MIXQ_ALWAYS_INLINE __m512i lookup(__m512i key, v16u lo, v16u hi) { return _mm512_permutex2var_epi32(vec(lo), key, vec(hi)); }
MIXQ_ALWAYS_INLINE __m512 lookup(__m512i key, v16f lo, v16f hi) { return _mm512_permutex2var_ps((__m512)lo, key, (__m512)hi); }
// A pair's sign bits in its packed bytes: 0x8 where the even element is below 0, 0x80 where the odd
// one is (-0 excepted: bits above 0x80000000). The same for every step the pair is encoded under.
MIXQ_ALWAYS_INLINE __m512i sign_bits(const pair& x) {
  const __m512i even = _mm512_maskz_mov_epi32(_mm512_cmpgt_epu32_mask(x.even, u32(0x80000000u)), u32(0x8u));
  return _mm512_mask_or_epi32(even, _mm512_cmpgt_epu32_mask(x.odd, u32(0x80000000u)), even, u32(0x80u));
}
// Lanes 0-7: steps[2p], 8-15: steps[2p+1].
alignas(64) inline constexpr uint32_t kPairLanes[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};
MIXQ_ALWAYS_INLINE __m512 pair_steps(v16f steps, int p) {
  return _mm512_permutexvar_ps(_mm512_load_si512(kPairLanes[p]), (__m512)steps);
}

// Codes of a pair under its steps: the packed bytes in 16 lanes and, when errors, the squared
// error terms of the even and odd elements.
template <bool kErrors, bool kBelow28>
MIXQ_ALWAYS_INLINE void encode_pair(const pair& x, __m512i signs, __m512 step, __m128i* bytes, v16f* te, v16f* to) {
  const __m512 ae = magnitude(x.even), ao = magnitude(x.odd);
  const __m512i ke = e2m1_key<kBelow28>(_mm512_div_ps(ae, step)), ko = e2m1_key<kBelow28>(_mm512_div_ps(ao, step));
  const __m512i ce = lookup(ke, lanes::kE2M1CodeLo, lanes::kE2M1CodeHi);
  const __m512i co = lookup(ko, lanes::kE2M1HighCodeLo, lanes::kE2M1HighCodeHi);
  *bytes = _mm512_cvtepi32_epi8(_mm512_ternarylogic_epi32(ce, co, signs, 0xfe));  // (ce | co | signs)
  if constexpr (kErrors) {
    const __m512 de = _mm512_mul_ps(lookup(ke, lanes::kE2M1KeyMagLo, lanes::kE2M1KeyMagHi), step);
    const __m512 dor = _mm512_mul_ps(lookup(ko, lanes::kE2M1KeyMagLo, lanes::kE2M1KeyMagHi), step);
    const __m512 ee = _mm512_sub_ps(ae, de), eo = _mm512_sub_ps(ao, dor);
    *te = (v16f)_mm512_mul_ps(ee, ee);
    *to = (v16f)_mm512_mul_ps(eo, eo);
  }
}

// The 16 blocks' squared errors from their even and odd terms, in the reference's order.
MIXQ_ALWAYS_INLINE v16f block_errors(const v16f* te, const v16f* to) {
  return lanes::to_vector_order(lanes::reduce_halves_unordered(te, lanes::sum_op{}) +
                                lanes::reduce_halves_unordered(to, lanes::sum_op{}));
}

// Scale bytes, packed codes and (kErrors) squared errors of 16 blocks.
template <bool kErrors, bool kBelow28>
MIXQ_ALWAYS_INLINE void encode_group(const pair* x, v16u scale_codes, v16f step, uint8_t* scales, uint8_t* packed,
                                     float* errors) {
  lanes::store_bytes(scale_codes, scales);
  v16f te[kGroup / 2], to[kGroup / 2];
  for (int p = 0; p < kGroup / 2; ++p) {
    __m128i bytes;
    encode_pair<kErrors, kBelow28>(x[p], sign_bits(x[p]), pair_steps(step, p), &bytes, &te[p], &to[p]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + p * kNvfp4Block), bytes);
  }
  if constexpr (kErrors) {
    const v16f e = block_errors(te, to);
    std::memcpy(errors, &e, sizeof e);
  }
}

// 16 blocks' scale codes and steps from their scales before the clamp, as the AVX2 block_scales:
// code and value from one multiply-add rounding (e4m3_avx512.hpp), the step from the value itself.
MIXQ_ALWAYS_INLINE void block_scales(v16f s, float ws2, v16u* codes, v16f* steps) {
  const e4m3_avx512::block_scale r = e4m3_avx512::round_block_scale((__m512)s);
  *codes = (v16u)r.code;
  *steps = (v16f)_mm512_mul_ps(r.value, _mm512_set1_ps(ws2));
}

// Four-over-six's two candidates: scale codes and steps (block max -> 6, -> 4).
struct four_over_six_scales {
  v16u code1, code2;
  v16f step1, step2;
};
MIXQ_ALWAYS_INLINE four_over_six_scales four_over_six_candidates(v16f bmax, const nvfp4_job& job) {
  four_over_six_scales c;
  block_scales(lanes::unclamped_static_block_scale(bmax, job.g, job.normalizer), job.ws2, &c.code1, &c.step1);
  block_scales(lanes::unclamped_static_block_scale(bmax * 1.5f, job.g, job.normalizer), job.ws2, &c.code2, &c.step2);
  return c;
}

// Four-over-six's two scales by the reference's block errors, summed as it sums them.
template <bool kBelow28>
MIXQ_ALWAYS_INLINE void four_over_six_group_exact(const pair* x, v16f bmax, const nvfp4_job& job, uint8_t* scales,
                                                  uint8_t* packed, float* errors) {
  const auto [code1, code2, step1, step2] = four_over_six_candidates(bmax, job);
  v16f te1[kGroup / 2], to1[kGroup / 2], te2[kGroup / 2], to2[kGroup / 2];
  __m128i bytes1[kGroup / 2], bytes2[kGroup / 2];
  for (int p = 0; p < kGroup / 2; ++p) {
    const __m512i signs = sign_bits(x[p]);
    encode_pair<true, kBelow28>(x[p], signs, pair_steps(step1, p), &bytes1[p], &te1[p], &to1[p]);
    encode_pair<true, kBelow28>(x[p], signs, pair_steps(step2, p), &bytes2[p], &te2[p], &to2[p]);
  }
  const v16f err1 = block_errors(te1, to1), err2 = block_errors(te2, to2);
  const __mmask16 second = _mm512_cmp_ps_mask((__m512)err2, (__m512)err1, _CMP_LT_OQ);
  lanes::store_bytes((v16u)_mm512_mask_blend_epi32(second, vec(code1), vec(code2)), scales);
  for (int p = 0; p < kGroup / 2; ++p)  // bytes 0-7: block 2p, 8-15: block 2p+1
    _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + p * kNvfp4Block),
                     _mm_mask_blend_epi64(__mmask8((second >> (2 * p)) & 3u), bytes1[p], bytes2[p]));
  if (errors) {
    const v16f e = (v16f)_mm512_mask_blend_ps(second, (__m512)err1, (__m512)err2);
    std::memcpy(errors, &e, sizeof e);
  }
}

// A pair's codes under its steps and the sum of their squared distances to the grid in the
// quotient's units, (q_even − m_even)² + (q_odd − m_odd)², with one multiply-add.
template <bool kBelow28>
MIXQ_ALWAYS_INLINE void encode_pair_estimating(const pair& x, __m512i signs, __m512 step, __m128i* bytes, v16f* sq) {
  const __m512 qe = _mm512_div_ps(magnitude(x.even), step), qo = _mm512_div_ps(magnitude(x.odd), step);
  const __m512i ke = e2m1_key<kBelow28>(qe), ko = e2m1_key<kBelow28>(qo);
  const __m512i ce = lookup(ke, lanes::kE2M1CodeLo, lanes::kE2M1CodeHi);
  const __m512i co = lookup(ko, lanes::kE2M1HighCodeLo, lanes::kE2M1HighCodeHi);
  *bytes = _mm512_cvtepi32_epi8(_mm512_ternarylogic_epi32(ce, co, signs, 0xfe));  // (ce | co | signs)
  const __m512 de = _mm512_sub_ps(qe, lookup(ke, lanes::kE2M1KeyMagLo, lanes::kE2M1KeyMagHi));
  const __m512 dor = _mm512_sub_ps(qo, lookup(ko, lanes::kE2M1KeyMagLo, lanes::kE2M1KeyMagHi));
  *sq = (v16f)_mm512_fmadd_ps(de, de, _mm512_mul_ps(dor, dor));
}

// Four-over-six deciding each block from its estimates (four_over_six_bound). A group with a block
// whose estimates lie within the bound of each other, and every group whose errors are asked for,
// takes four_over_six_group_exact. Blocks whose two scale codes agree keep the first, as the
// reference's strict comparison of equal sums does.
template <bool kBelow28>
MIXQ_ALWAYS_INLINE void four_over_six_group(const pair* x, v16f bmax, const nvfp4_job& job, uint8_t* scales,
                                            uint8_t* packed, float* errors) {
  if (errors) return four_over_six_group_exact<kBelow28>(x, bmax, job, scales, packed, errors);
  const auto [code1, code2, step1, step2] = four_over_six_candidates(bmax, job);
  v16f sq1[kGroup / 2], sq2[kGroup / 2];
  __m128i bytes1[kGroup / 2], bytes2[kGroup / 2];
  for (int p = 0; p < kGroup / 2; ++p) {
    const __m512i signs = sign_bits(x[p]);
    encode_pair_estimating<kBelow28>(x[p], signs, pair_steps(step1, p), &bytes1[p], &sq1[p]);
    encode_pair_estimating<kBelow28>(x[p], signs, pair_steps(step2, p), &bytes2[p], &sq2[p]);
  }
  const __m512 s1 = (__m512)step1, s2 = (__m512)step2;
  const __m512 e1 = _mm512_mul_ps(_mm512_mul_ps((__m512)lanes::reduce_halves(sq1, lanes::sum_op{}), s1), s1);
  const __m512 e2 = _mm512_mul_ps(_mm512_mul_ps((__m512)lanes::reduce_halves(sq2, lanes::sum_op{}), s2), s2);
  const __m512 bound = four_over_six_bound(_mm512_max_ps(e1, e2), (__m512)step1, (__m512)step2, (__m512)bmax);
  const __mmask16 finite = _mm512_cmp_ps_mask(bound, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);  // (else an error overflowed)
  const __mmask16 second = _mm512_mask_cmp_ps_mask(finite, _mm512_sub_ps(e1, e2), bound, _CMP_GT_OQ);
  const __mmask16 first = _mm512_mask_cmp_ps_mask(finite, _mm512_sub_ps(e2, e1), bound, _CMP_GE_OQ) |
                          _mm512_cmpeq_epi32_mask(vec(code1), vec(code2));
  if (__mmask16(second | first) != 0xffff) return four_over_six_group_exact<kBelow28>(x, bmax, job, scales, packed, nullptr);
  lanes::store_bytes((v16u)_mm512_mask_blend_epi32(second, vec(code1), vec(code2)), scales);
  for (int p = 0; p < kGroup / 2; ++p)  // bytes 0-7: block 2p, 8-15: block 2p+1
    _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + p * kNvfp4Block),
                     _mm_mask_blend_epi64(__mmask8((second >> (2 * p)) & 3u), bytes1[p], bytes2[p]));
}

// The generic estimate_window with multiply-adds and the floor key's table in two registers (see
// its bound: the fused roundings are among those it counts).
MIXQ_ALWAYS_INLINE void estimate_window(const float* a, uint32_t lo, const code_tables& t, v16f* above_error,
                                        v16f* below_error) {
  const __m512 recip = _mm512_loadu_ps(t.recip + lo), step_sq = _mm512_loadu_ps(t.step_sq + lo);
  __m512 acc[2];
  for (int i = 0; i < kNvfp4Block; ++i) {
    const __m512 q = _mm512_mul_ps(_mm512_set1_ps(a[i]), recip);
    const __m512i k = _mm512_max_epu32(_mm512_srli_epi32(_mm512_castps_si512(q), 21), u32(496));
    const __m512 e = _mm512_sub_ps(q, lookup(k, lanes::kE2M1MagLo, lanes::kE2M1MagHi));
    acc[i & 1] = i < 2 ? _mm512_mul_ps(e, e) : _mm512_fmadd_ps(e, e, acc[i & 1]);
  }
  const __m512 est = _mm512_mul_ps(_mm512_add_ps(acc[0], acc[1]), step_sq);
  const __m512 delta = _mm512_fmadd_ps(est, _mm512_set1_ps(0x1p-15f), _mm512_loadu_ps(t.step_sq_margin + lo));
  *above_error = (v16f)_mm512_add_ps(est, delta);
  *below_error = (v16f)_mm512_sub_ps(est, delta);
}

// fast_multiplier_candidates in fewer instructions, and without leaving the fast path for a code
// near a rounding boundary: such lanes (a few percent of the groups) take that multiplier's code
// exactly, afterwards. The window bit of a code d = code − lo is 1 << d (a shift by 32 or more gives
// 0, and d wraps for codes below the window; bits 16-31 are dropped at the end), and its bit above
// the window 1 << (d − 16), for codes up to lo + 47 (the list's last, and so largest, code shows
// whether one is beyond). A code under the normal codes need not be exact where lo >= 9: like its
// approximation it is at most 8, below the window.
MIXQ_ALWAYS_INLINE bool fast_multiplier_candidates(search_setup& s, v16f bmax, const nvfp4_job& job) {
  const __m512 b = (__m512)bmax;
  const __m512i lo = _mm512_add_epi32(vec(s.lo), u32(960)), lo16 = _mm512_add_epi32(lo, u32(16));
  const __m512i one = u32(1);
  const __mmask16 eligible = _mm512_test_epi32_mask(vec(s.eligible), vec(s.eligible));
  __m512i in = _mm512_setzero_si512(), above = _mm512_setzero_si512(), code = _mm512_setzero_si512();
  uint32_t n_near = 0;
  uint8_t near_index[128];
  __mmask16 near_lanes[128];
  const size_t n = std::min<size_t>(job.multiplier_factors.size(), 128);
  for (size_t m = 0; m < n; ++m) {
    const __m512i u = _mm512_castps_si512(_mm512_mul_ps(b, _mm512_set1_ps(job.multiplier_factors[m])));
    const __mmask16 near = _mm512_mask_testn_epi32_mask(eligible, _mm512_add_epi32(u, u32(16u - 0x80000u)), u32(0xfffe0u));
    code = _mm512_min_epi32(_mm512_srli_epi32(_mm512_add_epi32(u, u32(0x80000u)), 20), u32(960 + 126));  // (+960)
    in = _mm512_mask_or_epi32(in, ~near, in, _mm512_sllv_epi32(one, _mm512_sub_epi32(code, lo)));
    above = _mm512_mask_or_epi32(above, ~near, above, _mm512_sllv_epi32(one, _mm512_sub_epi32(code, lo16)));
    if (near) near_index[n_near] = uint8_t(m), near_lanes[n_near++] = near;
  }
  const __mmask16 beyond = _mm512_cmplt_epu32_mask(vec(s.lo), u32(9)) |
                           _mm512_cmpge_epi32_mask(_mm512_sub_epi32(code, lo), u32(47)) |
                           __mmask16(n < job.multiplier_factors.size() ? 0xffffu : 0u);
  if ((beyond & eligible) != 0) return false;
  const __m512i exact_lo = vec(s.lo), exact_lo16 = _mm512_add_epi32(exact_lo, u32(16));
  for (uint32_t i = 0; i < n_near; ++i) {
    const v16u exact = lanes::e4m3_encode(lanes::static_block_scale(bmax * job.multipliers[near_index[i]], job.g, job.normalizer));
    in = _mm512_mask_or_epi32(in, near_lanes[i], in, _mm512_sllv_epi32(one, _mm512_sub_epi32(vec(exact), exact_lo)));
    above = _mm512_mask_or_epi32(above, near_lanes[i], above, _mm512_sllv_epi32(one, _mm512_sub_epi32(vec(exact), exact_lo16)));
  }
  s.in_window = (v16u)_mm512_and_si512(in, u32(0xffffu));
  s.above_bases = window_bases_of((v16u)above);
  return true;
}

MIXQ_ALWAYS_INLINE search_setup setup_search(v16f bmax, const nvfp4_job& job) {
  const v16f max_rule = bmax / (6.0f * job.ws2);
  const v16u k0 = (v16u)e4m3_avx512::round_block_scale((__m512)lanes::one_if_zero(max_rule)).code;
  search_setup s = window_setup_at(max_rule, k0, job);
  const auto gather = [](const uint32_t* table, v16u index) {
    return (v16u)_mm512_i32gather_epi32(vec(index), table, 4);
  };
  if (job.selector == nvfp4_selector::mse_multiplier &&
      !(job.codes_by_mantissa && (multiplier_candidates_at_k0(s, bmax, job, gather) ||
                                  multiplier_candidates_by_mantissa(s, bmax, job, gather))) &&
      (job.multiplier_factors.empty() || !avx512::fast_multiplier_candidates(s, bmax, job)))
    exact_multiplier_candidates(s, bmax, job);
  return s;
}

// nvfp4_block_sq_error of 16 magnitudes, as block_error (the reference's roundings and tree).
float block_sq_error(const float* magnitudes, float step) {
  v16f ax;
  std::memcpy(&ax, magnitudes, sizeof ax);
  return block_error<simd_level::avx512>(ax, step);
}

// One eligible block's code from the estimates of its 16-code window (lo .. lo + 15), as the AVX2
// form's decide_block takes it: where the narrow window below leaves a block undecided, and for
// the windows at the top of the codes.
__attribute__((noinline)) uint32_t decide_by_full_window(const float* values, float bmax, uint32_t lo, uint32_t window,
                                                         uint32_t above_bases, uint64_t above_codes,
                                                         const nvfp4_job& job) {
  v16f above, below;
  estimate_window(values, lo, *job.tables, &above, &below);
  const float bound = _mm512_reduce_min_ps(_mm512_mask_mov_ps(_mm512_set1_ps(INFINITY), __mmask16(window), (__m512)above));
  const uint32_t close = _mm512_cmp_ps_mask((__m512)below, _mm512_set1_ps(bound), _CMP_NGT_UQ);  // (NaN: close)
  // Every code below lo clips the block's max: the max's own error term grows as the step shrinks.
  const float clipped = bmax - 6.0f * job.tables->step[lo - 1];  // (lo >= 2 where eligible)
  if (!(bound < INFINITY && clipped * clipped > bound))
    return settle_block<simd_level::avx512>(values, bmax, lo, 0, 0, false, job);
  const uint32_t contenders = close & window, unsettled = above_bases & ~window & close;
  return !unsettled && std::popcount(contenders) == 1
             ? lo + uint32_t(std::countr_zero(contenders))
             : settle_block<simd_level::avx512>(values, bmax, lo, contenders, unsettled, true, job, 16, above_codes);
}

// The magnitudes of 16 blocks with a lane per block: v[i] lane j holds one of block j's values
// (each once; in no particular order), from the pairs' even and odd halves (m[2p], m[2p + 1]:
// lane l of either holds a value of block 2p + l / 8). Three steps, each swapping bit h of the
// vector index with bit h of the lane index (h = 8, 4, 2), the first also swapping the lane
// index's bits 3 and 0, so that the block's bit 0 (l / 8) ends as the lane's.
MIXQ_ALWAYS_INLINE void blocks_in_lanes(const pair* x, __m512* v) {
  alignas(64) static constexpr auto kIndex = [] {
    const auto swap03 = [](uint32_t l) { return (l & 6u) | (l >> 3 & 1u) | (l & 1u) << 3; };
    std::array<std::array<std::array<uint32_t, 16>, 2>, 3> t{};
    for (int s = 0; s < 3; ++s)
      for (uint32_t h = 8u >> s, l = 0; l < 16; ++l) {
        const auto in = [&](uint32_t lane) { return s == 0 ? swap03(lane) : lane; };
        t[s][0][l] = l & h ? 16 + in(l - h) : in(l);  // v[r] (r & h == 0): its lanes, v[r + h]'s below them
        t[s][1][l] = l & h ? 16 + in(l) : in(l + h);  // v[r + h]
      }
    return t;
  }();
  for (int p = 0; p < kGroup / 2; ++p) v[2 * p] = magnitude(x[p].even), v[2 * p + 1] = magnitude(x[p].odd);
#pragma GCC unroll 3  // (constant indices keep v in registers)
  for (int s = 0; s < 3; ++s) {
    const int h = 8 >> s;
    const __m512i first = _mm512_load_si512(kIndex[s][0].data()), second = _mm512_load_si512(kIndex[s][1].data());
#pragma GCC unroll 16
    for (int r = 0; r < kGroup; ++r) {
      if (r & h) continue;
      const __m512 a = v[r], b = v[r + h];
      v[r] = _mm512_permutex2var_ps(a, first, b);
      v[r + h] = _mm512_permutex2var_ps(a, second, b);
    }
  }
}

// Block j's magnitudes in element order (for the exact errors).
MIXQ_ALWAYS_INLINE void block_values(const pair* x, int j, float* out) {
  const __m512i order = _mm512_add_epi32(_mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
                                         u32(8u * uint32_t(j & 1)));
  _mm512_storeu_ps(out, _mm512_permutex2var_ps(magnitude(x[j / 2].even), order, magnitude(x[j / 2].odd)));
}

// E2M1 levels by the floor key (lanes::e2m1_nearest_by_key) for q in [1/16, 16): keys 492-523 in
// the slots of their low 5 bits, so that a key needs no clamp; in the second table, twice the
// level of q / 2 (key − 4), for the codes 8 above.
alignas(64) constexpr auto kNarrowLevels = [] {
  std::array<std::array<float, 32>, 2> t{};
  for (uint32_t p = 0; p < 32; ++p) {
    const uint32_t key = p < 12 ? 512 + p : 480 + p;
    t[0][p] = lanes::e2m1_magnitude_of_floor_key(key);
    t[1][p] = 2.0f * lanes::e2m1_magnitude_of_floor_key(key - 4);
  }
  return t;
}();

// code_tables' entries for normal codes c (8 <= c <= 126) in lanes: the entry of 8 + c % 8 (by
// c's low 4 bits: code_tables' octave arrays) scaled by 2^(c / 8 − 1), exactly, in the exponent bits.
struct octave_tables {
  __m512 step8, recip8, step_sq8;
  explicit octave_tables(const code_tables& t)
      : step8(_mm512_load_ps(t.octave_step)), recip8(_mm512_load_ps(t.octave_recip)),
        step_sq8(_mm512_load_ps(t.octave_step_sq)) {}
  static __m512i octave(__m512i code) { return _mm512_slli_epi32(_mm512_and_si512(code, u32(0xf8u)), 20); }  // (c / 8) << 23
  __m512 step(__m512i code) const { return scaled(step8, code, octave(code)); }
  __m512 recip(__m512i code) const {
    return _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_castps_si512(_mm512_permutexvar_ps(code, recip8)), octave(code)));
  }
  __m512 step_sq(__m512i code) const { return scaled(step_sq8, code, _mm512_slli_epi32(octave(code), 1)); }
  static __m512 scaled(__m512 table, __m512i code, __m512i exponent) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(_mm512_permutexvar_ps(code, table)), exponent));
  }
};

// v[0] op v[1] op ... op v[N − 1] as a tree (op associative and commutative; v is overwritten).
template <int N, class V, class Op>
MIXQ_ALWAYS_INLINE V reduce_tree(V* v, Op op) {
  for (int n = N; n > 1; n = (n + 1) / 2)
    for (int i = 0; i < n / 2; ++i) v[i] = op(v[i], v[n - 1 - i]);
  return v[0];
}

constexpr int kNarrowWidth = 12, kNarrowBase = 8;  // codes lo .. lo + 11, the first 8 with their own quotients

// The narrow windows' error bounds of 16 blocks (lo: each lane's k0 − 3), a lane per block: its
// estimates take 8 quotients and 12 lookups per value for 16 blocks where the 16-code windows, a
// lane per code, take 16 of each per block. A ± δ per code in above / below (A + δ: +inf where the
// code is not a candidate: window, bit d for code lo + d).
//  - A value with q = fl(|w| · fl(1/step)) <= 1/4 at the window's lowest code, where q is largest,
//    has level 0 at every code: its squared error is w², summed once per block (small). The others
//    keep q in [1/16, 8.8] at every code of the window (the max rule's step is at least bmax / 6.4,
//    the lowest code's at least 8/11 of that, the highest twice it), where the key table needs no
//    clamp; their terms are masked multiply-adds.
//  - Codes lo + d (d < 8) from q = x · recip; lo + 8 + d (d < 4) from the same q, as q / 2 is that
//    code's, exactly: its terms (q − 2 · level(q / 2))² are 4 times its own, exactly, and its step²
//    a quarter of code lo + 8 + d's.
//  - A = s² · Σ (q − level)² + small: a term takes at most 17 roundings (16 multiply-adds in one
//    chain, then A in one more), where estimate_window's analysis counts 13 of these: at most
//    4u·S more, and the same δ holds (<= 927u·s² + 301u·S).
MIXQ_ALWAYS_INLINE void narrow_bounds(const pair* pairs, __m512i lo, __m512i window, const octave_tables& o,
                                      __m512* above, __m512* below) {
  constexpr int kWidth = kNarrowWidth, kBase = kNarrowBase;
  __m512 x[kNvfp4Block];  // lane j: block j's values
  blocks_in_lanes(pairs, x);
  const auto code = [&](int d) { return _mm512_add_epi32(lo, u32(uint32_t(d))); };
  const __m512 levels_lo = _mm512_load_ps(kNarrowLevels[0].data()), levels_hi = _mm512_load_ps(kNarrowLevels[0].data() + 16);
  const __m512 twice_lo = _mm512_load_ps(kNarrowLevels[1].data()), twice_hi = _mm512_load_ps(kNarrowLevels[1].data() + 16);
  __m512 small = _mm512_setzero_ps();
  __mmask16 large[kNvfp4Block];
  const __m512 recip0 = o.recip(code(0));
  for (int i = 0; i < kNvfp4Block; ++i) {
    large[i] = _mm512_cmp_ps_mask(_mm512_mul_ps(x[i], recip0), _mm512_set1_ps(0.25f), _CMP_GT_OQ);
    small = _mm512_mask3_fmadd_ps(x[i], x[i], small, __mmask16(~large[i]));
  }
  const auto bounds = [&](int d, __m512 acc, __m512 sq) {  // (sq: a quarter of code lo + d's from d = 8 on)
    const __m512 est = _mm512_fmadd_ps(acc, sq, small);
    const __m512 margin = _mm512_set1_ps(d < kBase ? 0x1p-13f : 0x1p-11f);
    const __m512 delta = _mm512_fmadd_ps(sq, margin, _mm512_mul_ps(est, _mm512_set1_ps(0x1p-15f)));
    const __mmask16 candidate = _mm512_test_epi32_mask(window, u32(1u << d));
    above[d] = _mm512_mask_add_ps(_mm512_set1_ps(INFINITY), candidate, est, delta);
    below[d] = _mm512_sub_ps(est, delta);
  };
  // In passes over a few codes each: their accumulators and reciprocals in registers, the values
  // read from memory.
  const __m512* in_lanes = x;
  asm("" : "+r"(in_lanes));
  const auto estimate_codes = [&](auto first, auto count) {
    constexpr int d0 = decltype(first)::value, n = decltype(count)::value;
    __m512 recip[n], acc[2 * n];
    for (int d = 0; d < n; ++d) recip[d] = o.recip(code(d0 + d));
    for (int d = 0; d < 2 * n; ++d) acc[d] = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < kNvfp4Block; ++i)
#pragma GCC unroll 4
      for (int d = 0; d < n; ++d) {
        const __m512 q = _mm512_mul_ps(_mm512_load_ps(in_lanes + i), recip[d]);
        const __m512i key = _mm512_srli_epi32(_mm512_castps_si512(q), 21);
        const __m512 e = _mm512_sub_ps(q, _mm512_permutex2var_ps(levels_lo, key, levels_hi));
        acc[d] = _mm512_mask3_fmadd_ps(e, e, acc[d], large[i]);
        if (d0 + d < kWidth - kBase) {
          const __m512 e2 = _mm512_sub_ps(q, _mm512_permutex2var_ps(twice_lo, key, twice_hi));
          acc[n + d] = _mm512_mask3_fmadd_ps(e2, e2, acc[n + d], large[i]);
        }
      }
    for (int d = 0; d < n; ++d) {
      const __m512 sq = o.step_sq(code(d0 + d));
      bounds(d0 + d, acc[d], sq);
      if (d0 + d < kWidth - kBase) bounds(kBase + d0 + d, acc[n + d], sq);
    }
  };
  estimate_codes(std::integral_constant<int, 0>(), std::integral_constant<int, 2>());
  estimate_codes(std::integral_constant<int, 2>(), std::integral_constant<int, 2>());
  estimate_codes(std::integral_constant<int, 4>(), std::integral_constant<int, 4>());
}

// The scale codes of 16 blocks from their narrow windows (the AVX2 form's: the 12 codes
// k0 − 3 .. k0 + 8, see estimate_narrow_pair; their bounds from narrow_bounds). The decision is
// search_decide's, lane by lane; a block it leaves undecided (its clip bound, from k0 − 4, too
// weak; no candidate in the window; a window at the top of the codes or reaching below code 8)
// takes its 16-code window, and one left with several contenders their exact errors (settle_block).
MIXQ_ALWAYS_INLINE v16u search_codes(const pair* pairs, v16f bmax_v, const search_setup& s,
                                     const nvfp4_job& job) {
  constexpr int kWidth = kNarrowWidth;
  const __m512 bmax = (__m512)bmax_v;
  const __m512i lo = _mm512_add_epi32(vec(s.lo), u32(4));  // k0 − 3 where narrow
  const __mmask16 eligible = _mm512_test_epi32_mask(vec(s.eligible), vec(s.eligible));
  // (12 <= k0 <= 118: the window's codes normal, lo = k0 − 7 in the setup)
  const __mmask16 narrow = eligible & _mm512_cmple_epu32_mask(_mm512_sub_epi32(vec(s.k0), u32(12)), u32(118 - 12));
  // Each lane's code tables from their first normal octave (codes 8-15) by the octave: a normal
  // code 8 above another has exactly twice its step (code_tables' range keeps it so), and this
  // costs less than gathers.
  const octave_tables o(*job.tables);
  const __m512i window = _mm512_and_si512(_mm512_srli_epi32(vec(s.in_window), 4), u32(0xfffu));  // (narrow lo's bits)
  __m512 above[kWidth], below[kWidth];
  narrow_bounds(pairs, lo, window, o, above, below);
  // (as trees: these are chains of dependent steps where a group has little else to run)
  const __m512 bound = reduce_tree<kWidth>(above, [](__m512 a, __m512 b) { return _mm512_min_ps(a, b); });
  __m512i close_bits[kWidth];  // bit d: code lo + d may hold the least error (a NaN too)
  for (int d = 0; d < kWidth; ++d)
    close_bits[d] = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(below[d], bound, _CMP_NGT_UQ), u32(1u << d));
  const __m512i close = reduce_tree<kWidth>(close_bits, [](__m512i a, __m512i b) { return _mm512_or_si512(a, b); });
  // Every code below lo clips the block's max: the max's own error term grows as the step shrinks.
  const __m512 clipped = _mm512_fnmadd_ps(_mm512_set1_ps(6.0f), o.step(_mm512_sub_epi32(lo, u32(1))), bmax);
  const __mmask16 decided = narrow & _mm512_cmp_ps_mask(bound, _mm512_set1_ps(INFINITY), _CMP_LT_OQ) &
                            _mm512_cmp_ps_mask(_mm512_mul_ps(clipped, clipped), bound, _CMP_GT_OQ);
  const __m512i contenders = _mm512_and_si512(close, window);
  // A code above the window loses to the window code it doubles; where that one is not a
  // candidate itself but may be the least, the codes above it join the exact evaluation.
  const __m512i bases = _mm512_srli_epi32(vec(s.above_bases), 4);
  const __m512i unsettled = _mm512_andnot_si512(window, _mm512_and_si512(bases, close));
  const __mmask16 single =
      decided & _mm512_testn_epi32_mask(unsettled, unsettled) & _mm512_test_epi32_mask(contenders, contenders) &
      _mm512_testn_epi32_mask(contenders, _mm512_sub_epi32(contenders, u32(1)));
  const __m512i chosen_v = _mm512_add_epi32(lo, _mm512_sub_epi32(u32(31), _mm512_lzcnt_epi32(contenders)));
  if (single == 0xffff) return (v16u)chosen_v;
  alignas(64) uint32_t chosen[kGroup], lo_of[kGroup], contender_bits[kGroup], unsettled_bits[kGroup];
  alignas(64) uint32_t window16[kGroup], bases16[kGroup], listed[kGroup], known[kGroup];
  alignas(64) float amax[kGroup];
  _mm512_store_si512(chosen, chosen_v);
  _mm512_store_si512(lo_of, lo);
  _mm512_store_si512(contender_bits, contenders);
  _mm512_store_si512(unsettled_bits, unsettled);
  std::memcpy(window16, &s.in_window, sizeof window16);
  std::memcpy(bases16, &s.above_bases, sizeof bases16);
  std::memcpy(listed, &s.above, sizeof listed);
  std::memcpy(known, &s.above_known, sizeof known);
  _mm512_store_ps(amax, bmax);
  for (uint32_t rest = ~uint32_t(single) & 0xffffu; rest; rest &= rest - 1) {
    const int j = std::countr_zero(rest);
    alignas(64) float values[kNvfp4Block];
    block_values(pairs, j, values);
    const uint64_t above_codes = above_codes_of(listed[j], known[j]);  // (bit i: lo + 16 + i = narrow lo + 12 + i)
    chosen[j] = decided >> j & 1 ? settle_block<simd_level::avx512>(values, amax[j], lo_of[j], contender_bits[j],
                                                                    unsettled_bits[j], true, job, kWidth, above_codes)
                : eligible >> j & 1
                    ? decide_by_full_window(values, amax[j], lo_of[j] - 4, window16[j], bases16[j], above_codes, job)
                    : settle_block<simd_level::avx512>(values, amax[j], lo_of[j], 0, 0, false, job);
  }
  v16u out;
  std::memcpy(&out, chosen, sizeof out);
  return out;
}

// max and four_over_six with the global amax at least every |w| (as when it is the weight's own)
// keep every |w| / step below 9 (6.4 where the block scale is an E4M3 normal; its subnormal codes
// round it by up to 1.5x), inside the 28 the E2M1 key needs unclamped: their bounded kinds skip it.
enum class group_kind { max, max_bounded, four_over_six, four_over_six_bounded, search, search_with_errors };

// The 16 blocks' maxima: known_max's (from the amax pass), or from x where that is null.
MIXQ_ALWAYS_INLINE v16f group_maxima(const pair* x, const float* known_max) {
  v16f bmax;
  if (known_max) {
    std::memcpy(&bmax, known_max, sizeof bmax);
  } else {
    v16f m[kGroup / 2];
    for (int p = 0; p < kGroup / 2; ++p) m[p] = (v16f)_mm512_max_ps(magnitude(x[p].even), magnitude(x[p].odd));
    bmax = lanes::reduce_halves(m, lanes::max_op{});
  }
  return bmax;
}

// A group's 32 BF16 / F16 / F32 pairs of blocks.
template <class T>
MIXQ_ALWAYS_INLINE void load_group(const T* src, pair* x) {
  for (int p = 0; p < kGroup / 2; ++p) x[p] = load_pair(src + p * 2 * kNvfp4Block);
}

// max and four-over-six, a group at a time (the searches: quantize_groups). known_max: the 16
// blocks' maxima from the amax pass, or null.
template <group_kind K, class T>
MIXQ_ALWAYS_INLINE void quantize_group(const T* src, const float* known_max, const nvfp4_job& job, uint8_t* scales,
                                       uint8_t* packed, float* errors) {
  pair x[kGroup / 2];
  load_group(src, x);
  const v16f bmax = group_maxima(x, known_max);
  if constexpr (K == group_kind::max || K == group_kind::max_bounded) {
    v16u codes;
    v16f steps;
    block_scales(lanes::unclamped_max_block_scale(bmax, job.ws2), job.ws2, &codes, &steps);
    encode_group<false, K == group_kind::max_bounded>(x, codes, steps, scales, packed, nullptr);
  } else {
    static_assert(K == group_kind::four_over_six || K == group_kind::four_over_six_bounded);
    four_over_six_group<K == group_kind::four_over_six_bounded>(x, bmax, job, scales, packed, errors);
  }
}

// count groups of 16 blocks from src (one function per kind and source type: small loops whose
// constants stay in registers).
template <group_kind K, class T>
__attribute__((noinline)) void quantize_groups(const T* src, const float* known_max, int64_t count,
                                               const nvfp4_job& job, uint8_t* scales, uint8_t* packed, float* errors) {
  if constexpr (K == group_kind::search || K == group_kind::search_with_errors) {
    // The searches' codes for a run of groups first, then their encodings: a group's decision is a
    // chain of dependent steps, and the next group's estimates, not its own encoding, can run
    // beside it.
    constexpr int64_t kRun = 8;
    for (int64_t g0 = 0; g0 < count; g0 += kRun) {
      const int64_t n = std::min(kRun, count - g0);
      v16u codes[kRun];
      v16f bmax[kRun];
      search_setup setup[kRun];  // (each its own chain of dependent steps: together, they overlap)
      for (int64_t g = g0; g < g0 + n; ++g) {
        const T* group = src + g * kGroupValues;
        if (known_max) {
          std::memcpy(&bmax[g - g0], known_max + g * kGroup, sizeof(v16f));
        } else {
          pair x[kGroup / 2];
          load_group(group, x);
          bmax[g - g0] = group_maxima(x, nullptr);
        }
        setup[g - g0] = avx512::setup_search(bmax[g - g0], job);
      }
      for (int64_t g = g0; g < g0 + n; ++g) {
        const T* group = src + g * kGroupValues;
        // (the weight streams from memory slower than the prefetchers expect of a second pass)
        for (size_t b = 0; b < sizeof(T) * kGroupValues; b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(group + 2 * kGroupValues) + b, _MM_HINT_T0);
        pair x[kGroup / 2];
        load_group(group, x);
        codes[g - g0] = avx512::search_codes(x, bmax[g - g0], setup[g - g0], job);
      }
      for (int64_t g = g0; g < g0 + n; ++g) {
        pair x[kGroup / 2];
        load_group(src + g * kGroupValues, x);
        const v16f steps = lanes::e4m3_decode(codes[g - g0]) * job.ws2;
        encode_group<K == group_kind::search_with_errors, false>(x, codes[g - g0], steps, scales + g * kGroup,
                                                                 packed + g * kGroup * (kNvfp4Block / 2),
                                                                 errors ? errors + g * kGroup : nullptr);
      }
    }
  } else {
    for (int64_t g = 0; g < count; ++g)
      quantize_group<K>(src + g * kGroupValues, known_max ? known_max + g * kGroup : nullptr, job, scales + g * kGroup,
                        packed + g * kGroup * (kNvfp4Block / 2), errors ? errors + g * kGroup : nullptr);
  }
}

template <class T>
void quantize_groups_of(const T* src, const float* known_max, int64_t count, const nvfp4_job& job, uint8_t* scales,
                        uint8_t* packed, float* errors) {
  const auto run = [&](auto kind) {
    quantize_groups<decltype(kind)::value>(src, known_max, count, job, scales, packed, errors);
  };
  switch (job.selector) {
    case nvfp4_selector::max:
      if (job.amax_bounds_weight) return run(std::integral_constant<group_kind, group_kind::max_bounded>());
      return run(std::integral_constant<group_kind, group_kind::max>());
    case nvfp4_selector::four_over_six:
      if (job.amax_bounds_weight) return run(std::integral_constant<group_kind, group_kind::four_over_six_bounded>());
      return run(std::integral_constant<group_kind, group_kind::four_over_six>());
    default:
      if (errors) return run(std::integral_constant<group_kind, group_kind::search_with_errors>());
      return run(std::integral_constant<group_kind, group_kind::search>());
  }
}

void quantize_blocks(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n, const nvfp4_job& job,
                     uint8_t* scales, uint8_t* packed, float* errors) {
  quantize_by_groups(w, zero_nonfinite, b0, n, job.block_maxima, scales, packed, errors,
                     [&](const auto* src, const float* known_max, int64_t count, uint8_t* s, uint8_t* p, float* e) {
                       quantize_groups_of(src, known_max, count, job, s, p, e);
                     });
}

// The amax pass for BF16 / F16 / F32 read in place: besides the tensor's max |w|, every block's max
// (the groups' transposed reductions move here, where they hide under the memory traffic, out of
// the pass that computes codes). Magnitudes compare as integers. False when an inf or a NaN is
// found: the general scan then applies the non-finite policy.
MIXQ_ALWAYS_INLINE v16f pair_maxima(const uint16_t* p) {  // lanes 0-7: block 2p's pairs' maxima, 8-15: 2p+1's
  const __m512i m = _mm512_and_si512(_mm512_loadu_si512(p), u32(0x7fff7fffu));
  return (v16f)_mm512_slli_epi32(_mm512_max_epu16(m, _mm512_srli_epi32(m, 16)), 16);  // max in the upper half
}
template <class T>
MIXQ_ALWAYS_INLINE v16f pair_maxima(const T* p) {
  const pair x = load_pair(p);
  return (v16f)_mm512_max_epu32(_mm512_castps_si512(magnitude(x.even)), _mm512_castps_si512(magnitude(x.odd)));
}

template <class T>
bool block_maxima_of(const T* src, int64_t blocks, float* out, float* amax) {
  const int64_t groups = blocks / kGroup;
  uint32_t top = 0;
#pragma omp parallel reduction(max : top) if (worth_threads(blocks * kNvfp4Block))
  {
    __m512i running = _mm512_setzero_si512();
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      v16f m[kGroup / 2];
      for (int p = 0; p < kGroup / 2; ++p) m[p] = pair_maxima(src + g * kGroupValues + p * 2 * kNvfp4Block);
      const __m512i b = (__m512i)lanes::reduce_halves(m, lanes::bits_max_op{});
      _mm512_storeu_si512(out + g * kGroup, b);
      running = _mm512_max_epu32(running, b);
    }
    top = std::max(top, _mm512_reduce_max_epu32(running));
  }
  uint32_t bad = top >= 0x7f800000u;
  for (int64_t b = groups * kGroup; b < blocks; ++b) {
    uint32_t m = 0;
    for (int i = 0; i < kNvfp4Block; ++i) {
      const T v = src[b * kNvfp4Block + i];
      if constexpr (std::is_same_v<T, uint16_t>) m = std::max(m, (uint32_t(v) << 16) & 0x7fffffffu);
      else if constexpr (std::is_same_v<T, f16_bits>) m = std::max(m, std::bit_cast<uint32_t>(f16_decode_table()[v.bits]) & 0x7fffffffu);
      else m = std::max(m, std::bit_cast<uint32_t>(v) & 0x7fffffffu);
    }
    out[b] = std::bit_cast<float>(m);
    top = std::max(top, m);
    bad |= uint32_t(m >= 0x7f800000u);
  }
  *amax = std::bit_cast<float>(top);
  return bad == 0;
}

bool block_maxima(const source_matrix& w, float* out, float* amax) {
  const int64_t blocks = w.size() / kNvfp4Block;
  if (w.dtype == source_dtype::bf16) return block_maxima_of(static_cast<const uint16_t*>(w.data), blocks, out, amax);
  if (w.dtype == source_dtype::f32) return block_maxima_of(static_cast<const float*>(w.data), blocks, out, amax);
  return block_maxima_of(static_cast<const f16_bits*>(w.data), blocks, out, amax);
}

}  // namespace avx512
MIXQ_END_AVX512_REGION
#endif

MIXQ_SIMD_KERNEL(void, quantize_blocks, quantize_blocks_impl,
                 (const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n, const nvfp4_job& job,
                  uint8_t* scales, uint8_t* packed, float* errors),
                 (w, zero_nonfinite, b0, n, job, scales, packed, errors))

// Relative cost per value of each NVFP4 selector (for deciding whether threads pay off).
int64_t job_cost(nvfp4_selector s) {
  switch (s) {
    case nvfp4_selector::max: return 1;
    case nvfp4_selector::four_over_six: return 3;
    default: return 10;
  }
}

// Per-block squared errors, every one written (no fill first).
using block_error_vector = std::vector<float, default_init_allocator<float>>;

// Quantizes every block of w with one normalizer; per-block squared errors go to block_errors
// when it is not null (summed afterwards in block order, as the reference does).
nvfp4_weight nvfp4_with_normalizer(const source_matrix& w, bool zero_nonfinite, float global_amax, float weight_amax,
                                   const float* block_maxima, float normalizer, const nvfp4_options& options,
                                   block_error_vector* block_errors) {
  nvfp4_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.normalizer = normalizer;
  q.global_scale = nvfp4_global_scale(global_amax, normalizer);
  const int64_t blocks = w.size() / kNvfp4Block;
  q.packed.resize(size_t(w.size() / 2));
  q.block_scales.resize(size_t(blocks));
  if (block_errors) block_errors->resize(size_t(blocks));
  const bool searches = options.selector != nvfp4_selector::max && options.selector != nvfp4_selector::four_over_six;
  const std::optional<code_tables> tables = searches ? std::optional<code_tables>(q.global_scale) : std::nullopt;
  const std::span<const float> multipliers =
      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers;
  const float g = nvfp4_scale_amax(global_amax);
  // The approximate multiplier codes rely on an ascending list (codes then ascend with it).
  std::vector<float> factors;
  // (and a least multiplier that keeps bmax · c / 6 away from 0, which the reference replaces by 1:
  // a code that ignores bmax and breaks the ascent; eligible blocks' maxima exceed 2^-44)
  if (options.selector == nvfp4_selector::mse_multiplier && std::is_sorted(multipliers.begin(), multipliers.end()) &&
      multipliers.front() >= 0x1p-60f)
    for (float c : multipliers) factors.push_back(float(double(c) * double(normalizer) / (6.0 * double(g / 6.0f))));
  // Over BF16 / F16 (block maxima are BF16 / F16 values), a table by the max's mantissa replaces
  // the per-multiplier products where the weight is large enough to pay for its 128 (1024) × list
  // exact codes (~20 µs (~160 µs) for the default list; it saves ~50 ns per 16 blocks).
  std::optional<multiplier_codes> by_mantissa;
  if (!factors.empty() && w.dtype == source_dtype::bf16 && blocks >= kNvfp4MultiplierTableBlocks)
    by_mantissa = multiplier_codes::build(multipliers, q.global_scale, global_amax, normalizer, 7);
  if (!factors.empty() && w.dtype == source_dtype::f16 && blocks >= kNvfp4MultiplierTableBlocksF16)
    by_mantissa = multiplier_codes::build(multipliers, q.global_scale, global_amax, normalizer, 10);
  std::optional<term_table> terms;
#if MIXQ_HAVE_SIMD_TARGETS
  if (searches && w.dtype == source_dtype::bf16 && blocks >= kNvfp4TermTableBlocks &&
      active_simd_level() == simd_level::avx2) {
    terms = term_table::extent(q.global_scale);
    if (terms && !avx2::fill_terms(*terms)) terms.reset();
  }
#endif
  const nvfp4_job job{global_amax,
                      normalizer,
                      q.global_scale,
                      g,
                      options.selector,
                      multipliers,
                      factors,
                      tables ? &*tables : nullptr,
                      global_amax >= weight_amax,
                      block_maxima,
                      by_mantissa ? &*by_mantissa : nullptr,
                      terms ? &*terms : nullptr};
  // Each thread streams through a contiguous share (forward: the hardware prefetchers follow it).
  const int64_t items = (blocks + kChunkGroups * kGroup - 1) / (kChunkGroups * kGroup);
#pragma omp parallel if (worth_threads(w.size() * job_cost(options.selector)))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t first = items * t / nt, last = items * (t + 1) / nt;
    for (int64_t c = first; c < last; ++c) {
      const int64_t b0 = c * kChunkGroups * kGroup, n = std::min(kChunkGroups * kGroup, blocks - b0);
      quantize_blocks(w, zero_nonfinite, b0, n, job, q.block_scales.data() + b0,
                      q.packed.data() + b0 * (kNvfp4Block / 2), block_errors ? block_errors->data() + b0 : nullptr);
    }
  }
  return q;
}

// Whether b's total is less than a's, both summed in block order as the reference does. Those
// sums are latency-bound chains (3.4 ms for 2^20 blocks); sums of the same non-negative terms in
// any order (vectorized, over threads) are, like them, within γ_n of the exact ones, so a gap wider
// than both bounds decides, and only a closer one takes the in-order sums.
bool in_order_total_less(const block_error_vector& a, const block_error_vector& b) {
  double sa = 0.0, sb = 0.0;
  const int64_t n = int64_t(a.size());
#pragma omp parallel for simd reduction(+ : sa, sb) if (worth_threads(n * 8))
  for (int64_t i = 0; i < n; ++i) sa += double(a[i]), sb += double(b[i]);
  const double g = 2.0 * rounding_gamma(double(n) + 64.0);  // (twice: the fast sums' own rounding too)
  if (std::isfinite(sa) && std::isfinite(sb)) {
    if (sb * (1.0 + g) < sa * (1.0 - g)) return true;
    if (sb * (1.0 - g) > sa * (1.0 + g)) return false;
  }
  sa = 0.0, sb = 0.0;
  for (int64_t i = 0; i < n; ++i) sa += a[i], sb += b[i];
  return sb < sa;
}

void require_shape(const source_matrix& w, format_id format) {
  if (auto why = format_cannot_hold(format, w.rows, w.cols))
    throw format_error(fmt::format("tensor '{}': {}", w.name, *why));
}

// Each block's max from the amax pass (AVX-512, without an inf or a NaN), kept per
// calling thread between calls; null where the general scan ran.
struct amax_pass {
  source_scan scan;
  const float* block_maxima = nullptr;
};

amax_pass scan_for_nvfp4(const source_matrix& w) {
#if MIXQ_HAVE_SIMD_TARGETS
  if (active_simd_level() == simd_level::avx512) {
    thread_local std::unique_ptr<float[]> buffer;
    thread_local size_t capacity = 0;
    const size_t blocks = size_t(w.size() / kNvfp4Block);
    if (capacity < blocks) buffer.reset(new float[blocks]), capacity = blocks;
    float amax = 0.0f;
    if (avx512::block_maxima(w, buffer.get(), &amax)) return {source_scan{amax, 0, -1}, buffer.get()};
  }
#endif
  return {scan_source(w), nullptr};
}

}  // namespace

nvfp4_weight nvfp4_quantize(const source_matrix& w, const nvfp4_options& options) {
  require_shape(w, format_id::nvfp4);
  require_finite_static_amax(w.name, options.global_amax, "NVFP4");
  require_valid_multipliers(w.name, options.multipliers, "NVFP4");
  const amax_pass pass = scan_for_nvfp4(w);
  const source_scan& scan = pass.scan;
  const bool zero = apply_nonfinite_policy(w, scan, options.nonfinite);
  const float global_amax = options.global_amax > 0.0f ? options.global_amax : scan.amax;
  const auto with = [&](float normalizer, block_error_vector* errors) {
    return nvfp4_with_normalizer(w, zero, global_amax, scan.amax, pass.block_maxima, normalizer, options, errors);
  };
  switch (options.selector) {
    case nvfp4_selector::four_over_six: return with(kNvfp4FourOverSixNormalizer, nullptr);
    case nvfp4_selector::mse_four_over_six: {
      block_error_vector errors, narrow_errors;
      nvfp4_weight standard = with(kNvfp4Normalizer, &errors);
      nvfp4_weight narrow = with(kNvfp4FourOverSixNormalizer, &narrow_errors);
      if (in_order_total_less(errors, narrow_errors)) return narrow;
      return standard;
    }
    default: return with(kNvfp4Normalizer, nullptr);
  }
}

}  // namespace mixq::cpu
