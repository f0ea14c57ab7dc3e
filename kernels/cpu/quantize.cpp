#include "kernels/cpu/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "kernels/cpu/e2m1_bits.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu {
namespace {

void require_shape(const source_matrix& w, format_id format) {
  if (auto why = format_cannot_hold(format, w.rows, w.cols))
    throw format_error(fmt::format("tensor '{}': {}", w.name, *why));
}

void require_output(std::span<float> out, int64_t n, std::string_view what) {
  if (int64_t(out.size()) != n) throw format_error(fmt::format("{}: output holds {} values, need {}", what, out.size(), n));
}

// The exhaustive E4M3 scale sweep, pruned without changing its answer: a candidate whose error on
// the block's largest element alone already exceeds the best full error cannot win (the block
// error is a sum of non-negative terms, and rounding keeps a float sum >= each of its terms).
// The per-candidate bounds are computed for all 126 codes at once (one vector loop); the full
// error is computed only for candidates that survive. Seeded with the max-rule scale; ties go to
// the smallest code, as in the reference's ascending scan.
struct sweep_table {
  float step[128] = {};  // step[k-1] = E4M3 code k × weight_scale_2, k = 1..126
  explicit sweep_table(float ws2) {
    for (int k = 1; k <= 0x7e; ++k) step[k - 1] = e4m3_decode_table()[k] * ws2;
  }
};

// nvfp4_block_sq_error with its tree spelled as 8-, 4-, 2- and 1-wide steps (same sums, same
// order), which the vectorizer keeps in registers.
inline float block_error(const float* x, float step) {
  float t[kNvfp4Block], h8[8], h4[4];
  for (int i = 0; i < kNvfp4Block; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    const float d = e2m1_round_magnitude(a / step) * step;
    t[i] = (a - d) * (a - d);
  }
  for (int i = 0; i < 8; ++i) h8[i] = t[i] + t[i + 8];
  for (int i = 0; i < 4; ++i) h4[i] = h8[i] + h8[i + 4];
  return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

MIXQ_CLONES uint8_t fp8_sweep_pruned(const float* x, float block_amax, float global_amax, float normalizer, const sweep_table& t) {
  float bound[128];
  for (int k = 0; k < 0x7e; ++k) {
    const float d = e2m1_round_magnitude(block_amax / t.step[k]) * t.step[k];
    bound[k] = (block_amax - d) * (block_amax - d);
  }
  uint8_t best_bits = e4m3_encode(nvfp4_block_scale_f32(block_amax, global_amax, normalizer));  // any seed is exact
  float best = block_error(x, t.step[best_bits - 1]);
  for (int k = 1; k <= 0x7e; ++k) {
    if (bound[k - 1] > best) continue;
    const float err = block_error(x, t.step[k - 1]);
    if (err < best || (err == best && k < best_bits)) best = err, best_bits = uint8_t(k);
  }
  return best_bits;
}

// Relative cost per value of each NVFP4 selector (for deciding whether threads pay off).
int64_t job_cost(nvfp4_selector s) {
  switch (s) {
    case nvfp4_selector::max: return 1;
    case nvfp4_selector::four_over_six: return 3;
    default: return 40;
  }
}

constexpr int64_t kChunkBlocks = 256;  // 4096 values per work item: fits L1 with its codes

// max |x| of a 16-block (max is exact, so any reduction order gives the reference's value).
inline float amax16(const float* x) {
  float m = 0.0f;
#pragma omp simd reduction(max : m)
  for (int i = 0; i < kNvfp4Block; ++i) m = std::max(m, x[i] < 0.0f ? -x[i] : x[i]);
  return m;
}

struct chunk_job {
  float global_amax, normalizer, ws2;
  nvfp4_selector selector;
  std::span<const float> multipliers;
  const sweep_table* sweep;
};

// Codes (nvfp4_code, lane-wise) of the values x[0, m), each divided by its block's step spelled
// out per element, so the loop runs at full vector width; with kErrors also each value's squared
// error term exactly as nvfp4_block_sq_error forms it.
template <bool kErrors>
inline void quantize_flat(const float* x, const float* step_of, int64_t m, uint8_t* codes, float* terms) {
  for (int64_t i = 0; i < m; ++i) {
    const float ax = x[i] < 0.0f ? -x[i] : x[i];
    const float a = ax / step_of[i];
    const uint32_t c = e2m1_code_by_bits(a);
    codes[i] = static_cast<uint8_t>((x[i] < 0.0f ? 8u : 0u) | c);
    if constexpr (kErrors) {
      const float d = e2m1_magnitude_of(c) * step_of[i];
      terms[i] = (ax - d) * (ax - d);
    }
  }
}

// Per-block sums of terms (in place), in nvfp4_block_sq_error's tree order; result at terms[16b].
inline void block_sums(float* terms, int64_t n) {
  for (int64_t b = 0; b < n; ++b) {
    float* t = terms + b * kNvfp4Block;
    float h8[8], h4[4];
    for (int i = 0; i < 8; ++i) h8[i] = t[i] + t[i + 8];
    for (int i = 0; i < 4; ++i) h4[i] = h8[i] + h8[i + 4];
    t[0] = (h4[0] + h4[2]) + (h4[1] + h4[3]);
  }
}

// The max rule, one 16-block per vector (GCC vector extensions: one zmm with AVX-512, two ymm with
// AVX2, four xmm otherwise): block max, scale, codes by the bits of |x| / step, and packing, all in
// registers. Same arithmetic as nvfp4_encode_block with the max-rule scale.
typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));
typedef uint8_t v16b __attribute__((vector_size(16)));

inline float hmax16(v16f m) {
  v16f o = __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  m = m > o ? m : o;
  o = __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  m = m > o ? m : o;
  o = __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  m = m > o ? m : o;
  o = __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  m = m > o ? m : o;
  return m[0];
}

// In three passes, so that no pass waits on another's latency: block maxima, then all scales (a
// flat loop over blocks, vectorized), then codes and packing.
inline void encode_blocks_max(const float* x, int64_t n, float ws2, uint8_t* scales, uint8_t* packed) {
  float bmax[kChunkBlocks], step[kChunkBlocks];
  for (int64_t b = 0; b < n; ++b) {
    v16u bits;
    std::memcpy(&bits, x + b * kNvfp4Block, sizeof bits);
    bmax[b] = hmax16((v16f)(bits & 0x7fffffffu));
  }
  int64_t b0 = 0;
  for (; b0 + 16 <= n; b0 += 16) {  // nvfp4_max_block_scale_f32, e4m3_encode, e4m3_decode, lane-wise
    v16f a;
    std::memcpy(&a, bmax + b0, sizeof a);
    v16f sc = a / (6.0f * ws2);
    sc = sc == 0.0f ? 1.0f : sc;
    sc = sc < kNvfp4MinBlockScale ? kNvfp4MinBlockScale : sc;
    sc = sc > 448.0f ? 448.0f : sc;
    const v16u u = (v16u)sc;  // positive and finite here
    const v16u subnormal = (v16u)(sc * 512.0f + 8388608.0f) - 0x4b000000u;
    const v16u r = u + 0x7ffffu + ((u >> 20) & 1u);
    const v16u normal = ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)) & 0x7fu;
    v16u code = u < 0x3c800000u ? subnormal : normal;
    code = u >= 0x43e00000u ? 0x7eu : code;
    const v16u e = code >> 3, m = code & 7u;
    const v16f value = e == 0u ? __builtin_convertvector(m, v16f) * 0x1p-9f : (v16f)(((e + 120u) << 23) | (m << 20));
    const v16f st = value * ws2;
    std::memcpy(step + b0, &st, sizeof st);
    const auto code_bytes = __builtin_convertvector(code, v16b);
    std::memcpy(scales + b0, &code_bytes, sizeof code_bytes);
  }
  for (int64_t b = b0; b < n; ++b) {
    scales[b] = e4m3_encode(nvfp4_max_block_scale_f32(bmax[b], ws2));
    step[b] = e4m3_decode(scales[b]) * ws2;
  }
  for (int64_t b = 0; b < n; ++b) {
    v16u bits;
    std::memcpy(&bits, x + b * kNvfp4Block, sizeof bits);
    const v16f q = (v16f)(bits & 0x7fffffffu) / step[b];
    // e2m1_code_by_bits, lane-wise: RNE(2q) below 1, one mantissa bit above, saturate at 7.
    const v16u small = (v16u)(q * 2.0f + 8388608.0f) - 0x4b000000u;
    const v16u u = (v16u)q;
    const v16u large = ((u + 0x1fffffu + ((u >> 22) & 1u)) >> 22) - 252u;
    v16u code = q < 1.0f ? small : large;
    code = code < 7u ? code : 7u;
    code |= (v16u)((v16f)bits < 0.0f) & 8u;  // sign bit for x < 0 (not for -0), as nvfp4_code
    const v8u even = __builtin_shufflevector(code, code, 0, 2, 4, 6, 8, 10, 12, 14);
    const v8u odd = __builtin_shufflevector(code, code, 1, 3, 5, 7, 9, 11, 13, 15);
    const v8b bytes = __builtin_convertvector(even | (odd << 4), v8b);
    std::memcpy(packed + b * (kNvfp4Block / 2), &bytes, sizeof bytes);
  }
}

// Blocks x[0 .. n·16), n <= kChunkBlocks: scale bits to scales[], codes to packed[]; per-block
// squared errors to errors[] when it is not null. Written in phases over the whole chunk (block
// maxima, scale choice, codes, packing) so that each phase is a loop the vectorizer handles.
MIXQ_CLONES void encode_chunk(const float* x, int64_t n, const chunk_job& job, uint8_t* scales, uint8_t* packed,
                              float* errors) {
  static constexpr float kFourOverSix[2] = {1.0f, 1.5f};
  const float* e4m3 = e4m3_decode_table();
  const int64_t m = n * kNvfp4Block;
  float bmax[kChunkBlocks], best[kChunkBlocks];
  alignas(64) float step_of[kChunkBlocks * kNvfp4Block];
  alignas(64) float terms[kChunkBlocks * kNvfp4Block];
  alignas(64) uint8_t codes[kChunkBlocks * kNvfp4Block];
  alignas(64) uint8_t trial[kChunkBlocks * kNvfp4Block];
  auto spell_steps = [&](const uint8_t* bits) {
    for (int64_t b = 0; b < n; ++b) {
      const float s = e4m3[bits[b]] * job.ws2;
      for (int i = 0; i < kNvfp4Block; ++i) step_of[b * kNvfp4Block + i] = s;
    }
  };

  if (job.selector == nvfp4_selector::max && !errors) return encode_blocks_max(x, n, job.ws2, scales, packed);

  for (int64_t b = 0; b < n; ++b) bmax[b] = amax16(x + b * kNvfp4Block);
  for (int64_t b = 0; b < n; ++b) scales[b] = e4m3_encode(nvfp4_max_block_scale_f32(bmax[b], job.ws2));

  if (job.selector == nvfp4_selector::four_over_six || job.selector == nvfp4_selector::mse_multiplier) {
    // Each candidate multiplier is one pass over the chunk; a block keeps a candidate's scale and
    // codes only when its error is strictly lower (the first candidate wins ties).
    const std::span<const float> cands =
        job.selector == nvfp4_selector::four_over_six ? std::span<const float>(kFourOverSix) : job.multipliers;
    uint8_t cand_bits[kChunkBlocks];
    for (int64_t b = 0; b < n; ++b) best[b] = INFINITY;
    for (size_t ci = 0; ci < cands.size(); ++ci) {
      const float c = cands[ci];
      for (int64_t b = 0; b < n; ++b)
        cand_bits[b] = e4m3_encode(nvfp4_block_scale_f32(bmax[b] * c, job.global_amax, job.normalizer));
      spell_steps(cand_bits);
      quantize_flat<true>(x, step_of, m, trial, terms);
      block_sums(terms, n);
      for (int64_t b = 0; b < n; ++b) {
        if (!(terms[b * kNvfp4Block] < best[b]) && ci > 0) continue;  // the first is taken even if inf
        best[b] = terms[b * kNvfp4Block];
        scales[b] = cand_bits[b];
        std::memcpy(codes + b * kNvfp4Block, trial + b * kNvfp4Block, kNvfp4Block);
      }
    }
    if (errors)
      for (int64_t b = 0; b < n; ++b) errors[b] = best[b];
  } else {
    if (job.selector != nvfp4_selector::max)
      for (int64_t b = 0; b < n; ++b)
        scales[b] = fp8_sweep_pruned(x + b * kNvfp4Block, bmax[b], job.global_amax, job.normalizer, *job.sweep);
    spell_steps(scales);
    if (errors) {
      quantize_flat<true>(x, step_of, m, codes, terms);
      block_sums(terms, n);
      for (int64_t b = 0; b < n; ++b) errors[b] = terms[b * kNvfp4Block];
    } else {
      quantize_flat<false>(x, step_of, m, codes, nullptr);
    }
  }

  // Two codes per byte, even element low: little-endian u16 (even | odd << 8) -> even | odd << 4.
  for (int64_t j = 0; j < m / 2; ++j) {
    uint16_t pair;
    std::memcpy(&pair, codes + 2 * j, 2);
    packed[j] = static_cast<uint8_t>((pair & 0x0f) | ((pair >> 4) & 0xf0));
  }
}

// Source values [i, i + n) widened to fp32 (BF16 / F16 / F32), vectorized per target.
MIXQ_CLONES void widen(const source_matrix& w, int64_t i, int n, float* dst, bool zero_nonfinite) {
  load_f32(w, i, n, dst, zero_nonfinite);
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
  const sweep_table sweep(q.global_scale);
  const chunk_job job{global_amax, normalizer, q.global_scale, options.selector,
                      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers, &sweep};
  const int64_t chunks = (blocks + kChunkBlocks - 1) / kChunkBlocks;
#pragma omp parallel if (worth_threads(w.size() * job_cost(options.selector)))
  {
    std::vector<float> x(size_t(kChunkBlocks * kNvfp4Block));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b0 = c * kChunkBlocks, n = std::min(kChunkBlocks, blocks - b0);
      widen(w, b0 * kNvfp4Block, int(n * kNvfp4Block), x.data(), zero_nonfinite);
      encode_chunk(x.data(), n, job, q.block_scales.data() + b0, q.packed.data() + b0 * (kNvfp4Block / 2),
                   block_errors ? block_errors->data() + b0 : nullptr);
    }
  }
  return q;
}

double sum_in_order(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += x;
  return s;
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
MIXQ_CLONES float fp8_row_amax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i] < 0.0f ? -x[i] : x[i]);
  return m;
}

MIXQ_CLONES void fp8_row_errors(const float* x, int64_t n, float amax, std::span<const float> multipliers, double* err) {
  for (size_t c = 0; c < multipliers.size(); ++c) err[c] = fp8_row_sq_error(x, n, fp8_scale_for_amax(amax * multipliers[c]));
}

MIXQ_CLONES void fp8_row_codes(const float* x, int64_t n, float scale, uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp8_code(x[i], scale);
}

fp8_weight fp8_quantize(const source_matrix& w, const fp8_options& options) {
  if (w.rows <= 0 || w.cols <= 0) throw format_error(fmt::format("tensor '{}': empty shape", w.name));
  const source_scan scan = scan_source(w);
  const bool zero = apply_nonfinite_policy(w, scan, options.nonfinite);
  const std::span<const float> multipliers =
      options.selector == fp8_selector::mse
          ? (options.multipliers.empty() ? default_mse_multipliers() : options.multipliers)
          : std::span<const float>();
  const bool per_tensor = options.granularity == fp8_granularity::per_tensor;
  const size_t n_cand = multipliers.size();
  const float tensor_amax = options.amax > 0.0f ? options.amax : scan.amax;

  fp8_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.codes.resize(size_t(w.size()));
  q.scales.assign(per_tensor ? 1 : size_t(w.rows), fp8_scale_for_amax(tensor_amax));
  // Per-row squared error of every candidate scale (MSE only): rows in parallel, each read once.
  std::vector<double> row_err(size_t(w.rows) * n_cand);

  // Per-channel scales are decided row by row; a per-tensor MSE scale needs every row's errors first.
  const bool codes_in_first_pass = !(per_tensor && n_cand > 0);
#pragma omp parallel if (worth_threads(w.size() * int64_t(1 + n_cand)))
  {
    std::vector<float> x(size_t(w.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) {
      widen(w, r * w.cols, int(w.cols), x.data(), zero);
      const float amax = per_tensor ? tensor_amax : fp8_row_amax(x.data(), w.cols);
      double* err = row_err.data() + size_t(r) * n_cand;
      if (n_cand > 0) fp8_row_errors(x.data(), w.cols, amax, multipliers, err);
      if (!per_tensor) {
        size_t best = 0;
        for (size_t c = 1; c < n_cand; ++c)
          if (err[c] < err[best]) best = c;
        q.scales[size_t(r)] = fp8_scale_for_amax(n_cand > 0 ? amax * multipliers[best] : amax);
      }
      if (codes_in_first_pass) fp8_row_codes(x.data(), w.cols, q.scale_of_row(r), q.codes.data() + r * w.cols);
    }
  }
  if (codes_in_first_pass) return q;

  double best = INFINITY;
  for (size_t c = 0; c < n_cand; ++c) {
    double total = 0.0;  // rows in order, as fp8_sq_error sums them
    for (int64_t r = 0; r < w.rows; ++r) total += row_err[size_t(r) * n_cand + c];
    if (total < best) best = total, q.scales[0] = fp8_scale_for_amax(tensor_amax * multipliers[c]);
  }
#pragma omp parallel if (worth_threads(w.size()))
  {
    std::vector<float> x(size_t(w.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) {
      widen(w, r * w.cols, int(w.cols), x.data(), zero);
      fp8_row_codes(x.data(), w.cols, q.scales[0], q.codes.data() + r * w.cols);
    }
  }
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

mx_weight mx_quantize(const source_matrix& w, format_id format, nonfinite_policy nonfinite) {
  if (format != format_id::mxfp4 && format != format_id::mxfp8)
    throw format_error(fmt::format("mx_quantize: {} is not an MX format", traits_of(format).name));
  require_shape(w, format);
  const bool zero = apply_nonfinite_policy(w, scan_source(w), nonfinite);
  mx_weight q;
  q.format = format;
  q.rows = w.rows;
  q.cols = w.cols;
  const int64_t blocks = w.size() / kMxBlock;
  q.scales.resize(size_t(blocks));
  std::vector<uint8_t> codes(size_t(w.size()));
#pragma omp parallel for schedule(static) if (worth_threads(w.size()))
  for (int64_t b = 0; b < blocks; ++b) {
    float x[kMxBlock];
    load_f32(w, b * kMxBlock, kMxBlock, x, zero);
    q.scales[size_t(b)] = mx_quantize_block(x, format, codes.data() + b * kMxBlock);
  }
  mx_store_elements(q, codes);
  return q;
}

nf4_weight nf4_quantize(const source_matrix& w, nonfinite_policy nonfinite) {
  require_shape(w, format_id::nf4);
  const bool zero = apply_nonfinite_policy(w, scan_source(w), nonfinite);
  nf4_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  const int64_t blocks = w.size() / kNf4Block;
  q.packed.resize(size_t(w.size() / 2));
  q.scales.resize(size_t(blocks));
#pragma omp parallel for schedule(static) if (worth_threads(w.size()))
  for (int64_t b = 0; b < blocks; ++b) {
    float x[kNf4Block];
    load_f32(w, b * kNf4Block, kNf4Block, x, zero);
    q.scales[size_t(b)] = nf4_quantize_block(x, q.packed.data() + b * (kNf4Block / 2));
  }
  return q;
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
    case format_id::fp8_per_channel: {
      fp8_options o;
      o.granularity = spec.format == format_id::fp8_per_tensor ? fp8_granularity::per_tensor : fp8_granularity::per_channel;
      o.selector = spec.fp8;
      o.nonfinite = spec.nonfinite;
      cpu::fp8_dequantize(cpu::fp8_quantize(w, o), out);
      return;
    }
    case format_id::nvfp4:
    case format_id::nvfp4_w4a16: {
      nvfp4_options o;
      o.selector = spec.nvfp4;
      o.nonfinite = spec.nonfinite;
      cpu::nvfp4_dequantize(cpu::nvfp4_quantize(w, o), out);
      return;
    }
    case format_id::mxfp4:
    case format_id::mxfp8: mixq::mx_dequantize(cpu::mx_quantize(w, spec.format, spec.nonfinite), out); return;
    case format_id::nf4: mixq::nf4_dequantize(cpu::nf4_quantize(w, spec.nonfinite), out); return;
    case format_id::count: break;
  }
  throw format_error("fake_quant_weight: unknown format");
}

}  // namespace mixq::cpu
