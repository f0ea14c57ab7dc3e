// NVFP4 on the CPU: after the global amax pass, one pass over the weight in groups of 16 blocks
// (one vector of block maxima, one of scales), reading BF16 / F32 in place. Bit for bit the
// scalar reference's result (formats/nvfp4.cpp); tests/kernels and tests/golden check it.
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
// weight scale near the float range's ends) take the scalar reference.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include <optional>

#include <fmt/format.h>
#include <omp.h>

#include "formats/minifloat.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

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
  alignas(64) float step[128] = {}, recip[128] = {}, step_sq[128] = {};
  bool usable = false;  // the window search's conditions on the float range hold (else: reference)
  explicit code_tables(float ws2) {
    for (int k = 1; k <= 0x7e; ++k) {
      step[k] = e4m3_decode_table()[k] * ws2;
      recip[k] = 1.0f / step[k];
      step_sq[k] = step[k] * step[k];
    }
    // Steps in [2^-49, 2^49]: squares and errors (|w| < 32 steps) stay normal and finite, halving
    // and doubling a step are exact.
    usable = ws2 >= 0x1p-40f && ws2 <= 0x1p40f;
  }
};

struct nvfp4_job {
  float global_amax, normalizer, ws2;
  float g;  // the global amax as the block scale formula uses it (1 for an all-zero weight)
  nvfp4_selector selector;
  std::span<const float> multipliers;
  const code_tables* tables;
  bool want_errors;
};

// ---- per-group building blocks ----------------------------------------------------------------

template <simd_level L>
MIXQ_ALWAYS_INLINE v16u e2m1_codes(v16f q) {
  if constexpr (L == simd_level::avx512) return lanes::e2m1_codes_by_key(q);
  else return lanes::e2m1_codes(q);
}

template <simd_level L>
MIXQ_ALWAYS_INLINE v16f e2m1_nearest(v16f q) {
  if constexpr (L == simd_level::avx512) return lanes::e2m1_nearest_by_key(q);
  else return lanes::e2m1_nearest_by_compare(q);
}

// The reference's squared error of one block (|w| in ax) under step: nvfp4_block_sq_error.
template <simd_level L>
MIXQ_ALWAYS_INLINE float block_error(v16f ax, float step) {
  const v16u codes = e2m1_codes<L>(ax / step);
  const v16f d = lanes::e2m1_magnitudes(codes) * step;
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
    const v16u codes = e2m1_codes<L>(ax / step[j]);
    lanes::store_packed(codes | lanes::sign_bits(bits[j]), packed + j * (kNvfp4Block / 2));
    if (errors) {
      const v16f d = lanes::e2m1_magnitudes(codes) * step[j];
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
  for (int j = 0; j < kGroup; ++j) {
    const v16f ax = lanes::abs_of(bits[j]);
    const v16u sign = lanes::sign_bits(bits[j]);
    const v16u c1 = e2m1_codes<L>(ax / step1[j]), c2 = e2m1_codes<L>(ax / step2[j]);
    const v16f d1 = lanes::e2m1_magnitudes(c1) * step1[j], d2 = lanes::e2m1_magnitudes(c2) * step2[j];
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
struct window_estimate {
  v16f hi, lo;  // A + δ, A - δ
};

template <simd_level L>
MIXQ_ALWAYS_INLINE window_estimate estimate_window(v16f ax, int lo, const code_tables& t) {
  v16f recip, step_sq;
  std::memcpy(&recip, t.recip + lo, sizeof recip);
  std::memcpy(&step_sq, t.step_sq + lo, sizeof step_sq);
  float a[kNvfp4Block];
  std::memcpy(a, &ax, sizeof a);
  v16f acc[4] = {};
  for (int i = 0; i < kNvfp4Block; ++i) {
    const v16f q = a[i] * recip;
    const v16f e = q - e2m1_nearest<L>(q);
    acc[i & 3] += e * e;
  }
  const v16f est = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * step_sq;
  const v16f delta = step_sq * 0x1p-13f + est * 0x1p-15f;
  return {est + delta, est - delta};
}

// One block's scale code among the candidate codes (bit k-lo of in_window for window codes; for
// codes above the window, bit 8 + (k-lo)%8 of above_bases marks the window code it doubles), or -1
// when the window search cannot decide and the reference must.
template <simd_level L>
MIXQ_ALWAYS_INLINE int search_block(v16f ax, float amax, int lo, uint32_t in_window, uint32_t above_bases,
                                    const code_tables& t) {
  const window_estimate w = estimate_window<L>(ax, lo, t);
  const v16u lane_bit = {1u << 0, 1u << 1, 1u << 2, 1u << 3, 1u << 4, 1u << 5, 1u << 6, 1u << 7,
                         1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};
  const v16u candidate = (v16u)((lane_bit & in_window) != 0u);
  // >= the least error of any candidate (the window holds one)
  const float bound = lanes::min16((v16f)(((v16u)w.hi & candidate) | ((v16u)lanes::broadcast(INFINITY) & ~candidate)));
  if (!(bound < INFINITY)) return -1;
  if (lo > 1) {  // every code below lo clips amax: its error's amax term grows as the step shrinks
    const float e = amax - 6.0f * t.step[lo - 1];
    if (!(e * e > bound)) return -1;
  }
  // Lanes whose error may be the least (a NaN estimate, inf - inf, counts as close).
  const uint32_t close = lanes::reduce16_bits(~(v16u)(w.lo > bound) & lane_bit);
  uint32_t contenders = close & in_window;
  // A code above the window whose doubled-from window code is not a candidate itself is beaten
  // only by a window code; the window code must then be out of the running.
  if (above_bases & ~in_window & close) return -1;
  if (std::popcount(contenders) == 1) return lo + std::countr_zero(contenders);
  int best_k = -1;
  float best = 0.0f;
  for (; contenders; contenders &= contenders - 1) {
    const int k = lo + std::countr_zero(contenders);
    const float err = block_error<L>(ax, t.step[k]);
    if (best_k < 0 || err < best) best = err, best_k = k;
  }
  return best_k;
}

// Whether a block with this max-rule scale (before its E4M3 rounding and clamp) meets the window
// search's conditions: code k0 >= 9 (so the window's codes lo = k0-7 .. k0+8 keep |w|/step < 32
// and its top octave is above the subnormal codes) and no clamp at 448.
MIXQ_ALWAYS_INLINE bool window_applies(float max_rule_scale) {
  return max_rule_scale > 0x1.1p-6f && max_rule_scale <= 448.0f;  // RNE: 0x1.1p-6 itself rounds to code 8
}

template <simd_level L>
MIXQ_ALWAYS_INLINE v16u search_group(const v16u* bits, v16f bmax, const nvfp4_job& job) {
  const code_tables& t = *job.tables;
  const v16f max_rule = bmax / (6.0f * job.ws2);  // nvfp4_max_block_scale_f32 before its clamp
  const v16u k0 = lanes::e4m3_encode(lanes::clamp_block_scale(max_rule == 0.0f ? 1.0f : max_rule));
  const bool multipliers = job.selector == nvfp4_selector::mse_multiplier;

  // Multipliers: every candidate's code per block (the reference's order), its window bit and
  // the window codes that codes above the window double. Requires codes non-decreasing along the
  // list, so that its first least error is the least code's.
  v16u in_window = v16u{} + 0xffffu, above_bases = {}, ordered = v16u{} + 1u;
  v16u lo_v = k0 - 7u;
  lo_v = lo_v > 111u ? 111u : lo_v;  // (k0 < 9 leaves the window search anyway)
  if (multipliers) {
    in_window = v16u{};
    v16u prev = {};
    for (float c : job.multipliers) {
      const v16u code = lanes::e4m3_encode(lanes::static_block_scale(bmax * c, job.g, job.normalizer));
      ordered &= (v16u)(code >= prev);
      prev = code;
      const v16u d = code - lo_v;  // wraps for codes below the window
      in_window |= (v16u)(d < 16u) & (1u << (d & 15u));
      above_bases |= (v16u)((d >= 16u) & (d < 0x80u)) & (1u << (8u + (d & 7u)));
    }
  }

  alignas(64) float amax[kGroup], rule[kGroup];
  alignas(64) uint32_t lo[kGroup], window[kGroup], above[kGroup], in_order[kGroup], chosen[kGroup];
  std::memcpy(amax, &bmax, sizeof amax);
  std::memcpy(rule, &max_rule, sizeof rule);
  std::memcpy(lo, &lo_v, sizeof lo);
  std::memcpy(window, &in_window, sizeof window);
  std::memcpy(above, &above_bases, sizeof above);
  std::memcpy(in_order, &ordered, sizeof in_order);
  for (int j = 0; j < kGroup; ++j) {
    const v16f ax = lanes::abs_of(bits[j]);
    int k = -1;
    if (t.usable && window_applies(rule[j]) && in_order[j])
      k = search_block<L>(ax, amax[j], int(lo[j]), window[j], above[j], t);
    if (k < 0) {
      float x[kNvfp4Block];
      std::memcpy(x, &ax, sizeof x);
      k = nvfp4_choose_block_scale(x, amax[j], job.global_amax, job.normalizer, job.selector, job.multipliers);
    }
    chosen[j] = uint32_t(k);
  }
  v16u out;
  std::memcpy(&out, chosen, sizeof out);
  return out;
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
  const v16f bmax = lanes::reduce16x16(ax, lanes::max_op{});
  switch (job.selector) {
    case nvfp4_selector::max:
      return encode_group<L>(bits, lanes::e4m3_encode(lanes::max_block_scale(bmax, job.ws2)), job.ws2, scales, packed,
                             errors);
    case nvfp4_selector::four_over_six: return four_over_six_group<L>(bits, bmax, job, scales, packed, errors);
    case nvfp4_selector::mse_multiplier:
    case nvfp4_selector::mse_fp8_sweep:
    case nvfp4_selector::mse_four_over_six:
      return encode_group<L>(bits, search_group<L>(bits, bmax, job), job.ws2, scales, packed, errors);
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

// Blocks [b0, b0 + n) of w; scales, packed and errors point at block b0's outputs. Whole groups
// read BF16 / F32 in place; F16, zeroed non-finite values and the last partial group go through
// an F32 copy (zero-padded to a whole group; padding blocks' outputs are dropped).
template <simd_level L>
MIXQ_ALWAYS_INLINE void quantize_blocks_impl(const source_matrix& w, bool zero_nonfinite, int64_t b0, int64_t n,
                                             const nvfp4_job& job, uint8_t* scales, uint8_t* packed, float* errors) {
  constexpr int half = kNvfp4Block / 2;
  const int64_t whole = n / kGroup;
  const bool in_place = !zero_nonfinite && w.dtype != source_dtype::f16;
  alignas(64) float buf[kGroupValues];
  for (int64_t gi = 0; gi < whole; ++gi) {
    const int64_t b = b0 + gi * kGroup, i0 = b * kNvfp4Block, o = gi * kGroup;
    float* err = errors ? errors + o : nullptr;
    if (in_place && w.dtype == source_dtype::bf16)
      quantize_group<L>(bf16_values{static_cast<const uint16_t*>(w.data)}, i0, job, scales + o, packed + o * half, err);
    else if (in_place)
      quantize_group<L>(f32_values{static_cast<const float*>(w.data)}, i0, job, scales + o, packed + o * half, err);
    else {
      load_f32(w, i0, kGroupValues, buf, zero_nonfinite);
      quantize_group<L>(f32_values{buf}, 0, job, scales + o, packed + o * half, err);
    }
  }
  if (const int64_t rest = n - whole * kGroup; rest > 0) {
    const int64_t o = whole * kGroup;
    std::fill(std::begin(buf), std::end(buf), 0.0f);
    load_f32(w, (b0 + o) * kNvfp4Block, int(rest * kNvfp4Block), buf, zero_nonfinite);
    uint8_t s[kGroup], p[kGroup * half];
    float e[kGroup];
    quantize_group<L>(f32_values{buf}, 0, job, s, p, e);
    std::copy_n(s, rest, scales + o);
    std::copy_n(p, rest * half, packed + o * half);
    if (errors) std::copy_n(e, rest, errors + o);
  }
}

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

// Quantizes every block of w with one normalizer; per-block squared errors go to block_errors
// when it is not null (summed afterwards in block order, as the reference does).
nvfp4_weight nvfp4_with_normalizer(const source_matrix& w, bool zero_nonfinite, float global_amax, float normalizer,
                                   const nvfp4_options& options, std::vector<float>* block_errors) {
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
  const nvfp4_job job{global_amax,
                      normalizer,
                      q.global_scale,
                      global_amax > 0.0f ? global_amax : 1.0f,
                      options.selector,
                      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers,
                      tables ? &*tables : nullptr,
                      block_errors != nullptr};
  // Each thread takes a contiguous share, as the amax pass before did, and walks it backwards: the
  // share's end, read last by that pass, may still be in cache.
  const int64_t items = (blocks + kChunkGroups * kGroup - 1) / (kChunkGroups * kGroup);
#pragma omp parallel if (worth_threads(w.size() * job_cost(options.selector)))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t first = items * t / nt, last = items * (t + 1) / nt;
    for (int64_t c = last - 1; c >= first; --c) {
      const int64_t b0 = c * kChunkGroups * kGroup, n = std::min(kChunkGroups * kGroup, blocks - b0);
      quantize_blocks(w, zero_nonfinite, b0, n, job, q.block_scales.data() + b0,
                      q.packed.data() + b0 * (kNvfp4Block / 2), block_errors ? block_errors->data() + b0 : nullptr);
    }
  }
  return q;
}

double sum_in_order(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += x;
  return s;
}

void require_shape(const source_matrix& w, format_id format) {
  if (auto why = format_cannot_hold(format, w.rows, w.cols))
    throw format_error(fmt::format("tensor '{}': {}", w.name, *why));
}

}  // namespace

nvfp4_weight nvfp4_quantize(const source_matrix& w, const nvfp4_options& options) {
  require_shape(w, format_id::nvfp4);
  const source_scan scan = scan_source(w);
  const bool zero = apply_nonfinite_policy(w, scan, options.nonfinite);
  const float global_amax = options.global_amax > 0.0f ? options.global_amax : scan.amax;
  switch (options.selector) {
    case nvfp4_selector::four_over_six:
      return nvfp4_with_normalizer(w, zero, global_amax, kNvfp4FourOverSixNormalizer, options, nullptr);
    case nvfp4_selector::mse_four_over_six: {
      std::vector<float> errors, narrow_errors;
      nvfp4_weight standard = nvfp4_with_normalizer(w, zero, global_amax, kNvfp4Normalizer, options, &errors);
      nvfp4_weight narrow =
          nvfp4_with_normalizer(w, zero, global_amax, kNvfp4FourOverSixNormalizer, options, &narrow_errors);
      return sum_in_order(narrow_errors) < sum_in_order(errors) ? narrow : standard;
    }
    default: return nvfp4_with_normalizer(w, zero, global_amax, kNvfp4Normalizer, options, nullptr);
  }
}

}  // namespace mixq::cpu
