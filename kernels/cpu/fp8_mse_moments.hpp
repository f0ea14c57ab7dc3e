// FP8 MSE scale search over F32 weights of any values, by bucketed moments.
//
// An F32 weight holds too many distinct magnitudes to count (fp8_mse_histogram counts BF16 / F16
// ones), but an element's FP8 error under a scale s is (|x| − V)², V the dequantized value of its
// code, and V is the same for every x between two of the code's rounding boundaries. So one pass
// counts, per bucket of magnitudes (2^12 buckets per binade), Σ1 and Σm (x = 2^E · m) exactly, in
// integers, and Σx² over the weight; a bucket that lies within one code under s then adds
// X²·Σm² − 2·X·V·Σm + V²·Σ1 exactly but for rounding (its X²·Σm², common to every candidate, is
// in Σx²), and one that a boundary crosses (at most one: a bucket is 2^-12 of a binade, FP8's steps 2^-3 or
// more of theirs) adds the lesser of its two codes' sums, off by at most its width times the step,
// per element. As in fp8_mse_histogram, binades that stay FP8-normal and unsaturated under every
// candidate share one table (their errors scale by 4^(e − e0)); magnitudes too small to leave code
// 0 under any candidate add x² to every candidate alike.
//
// Each candidate's estimate comes with a bound that covers those widths and every rounding; the
// candidates the bounds cannot separate are the contenders, for the caller to evaluate exactly.
// Bucket widths put the bound near 2^-14 of a typical error: one contender, almost always.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"

namespace mixq::cpu {

// The indices (ascending) of the multipliers whose exact squared error
// fp8_sq_error(w, fp8_scale_for_amax(amax · m)) may be the least over F32 weight w (inf / NaN, if
// any, count as zeros: the caller's policy has zeroed them; weight_max: its largest finite
// magnitude, which a static amax may undercut): the reference's choice is always among them. None when every
// candidate's scale is infinite; nullopt where the moments do not apply (scales so small that F32
// subnormals leave code 0, or so spread that too many binades would need their own tables): the
// caller then evaluates every candidate.
// estimates (for tests): each candidate's estimate and its bound (NaN for an infinite scale).
// counts_per_flush (for tests, smaller): the elements counted in integers between two additions into
// the moments' doubles, at most (and by default) 2^24 − 1, where a 24-bit count could overflow.
struct fp8_moment_estimate {
  double value, bound;  // |the reference's sum − value| <= bound
};
inline constexpr int64_t kFp8MomentCountsPerFlush = (int64_t(1) << 24) - 1;
std::optional<std::vector<size_t>> fp8_moment_contenders(const source_matrix& w, float weight_max, float amax,
                                                         std::span<const float> multipliers,
                                                         std::vector<fp8_moment_estimate>* estimates = nullptr,
                                                         int64_t counts_per_flush = kFp8MomentCountsPerFlush);

}  // namespace mixq::cpu
