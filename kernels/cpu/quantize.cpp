#include "kernels/cpu/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
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

// A block's E2M1 codes under step and their squared error (nvfp4_block_sq_error's sum).
struct block_trial {
  lanes::v16u codes;
  float error;
};
MIXQ_ALWAYS_INLINE block_trial try_step(lanes::v16f ax, float step) {
  using namespace lanes;
  const v16u codes = e2m1_codes(ax / step);
  const v16f d = e2m1_magnitudes(codes) * step;
  return {codes, sum16((ax - d) * (ax - d))};
}

MIXQ_CLONES uint8_t fp8_sweep_pruned(const float* x, float block_amax, float global_amax, float normalizer, const sweep_table& t) {
  float bound[128];
  for (int k = 0; k < 0x7e; ++k) {
    const float d = e2m1_round_magnitude(block_amax / t.step[k]) * t.step[k];
    bound[k] = (block_amax - d) * (block_amax - d);
  }
  const lanes::v16f ax = lanes::abs_of(lanes::load_bits(x));
  uint8_t best_bits = e4m3_encode(nvfp4_block_scale_f32(block_amax, global_amax, normalizer));  // any seed is exact
  float best = try_step(ax, t.step[best_bits - 1]).error;
  for (int k = 1; k <= 0x7e; ++k) {
    if (bound[k - 1] > best) continue;
    const float err = try_step(ax, t.step[k - 1]).error;
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

struct chunk_job {
  float global_amax, normalizer, ws2;
  nvfp4_selector selector;
  std::span<const float> multipliers;
  const sweep_table* sweep;
};

// Codes (and, when errors is not null, squared errors) of blocks whose scales are chosen, one
// 16-block per vector register.
MIXQ_ALWAYS_INLINE void encode_blocks_with_scales(const float* x, int64_t n, float ws2, const uint8_t* scales, uint8_t* packed,
                                      float* errors) {
  using namespace lanes;
  for (int64_t b = 0; b < n; ++b) {
    const v16u bits = load_bits(x + b * kNvfp4Block);
    const v16f ax = abs_of(bits);
    const float step = mixq::e4m3_decode(scales[b]) * ws2;
    const v16u codes = e2m1_codes(ax / step);
    store_packed(codes | sign_bits(bits), packed + b * (kNvfp4Block / 2));
    if (errors) {
      const v16f d = e2m1_magnitudes(codes) * step;
      errors[b] = sum16((ax - d) * (ax - d));
    }
  }
}

// The max rule: block maxima, then the scales of 16 blocks at a time (so no block waits on the
// latency of another's scale arithmetic).
MIXQ_ALWAYS_INLINE void encode_blocks_max(const float* x, int64_t n, float ws2, uint8_t* scales, uint8_t* packed, float* errors) {
  using namespace lanes;
  float bmax[kChunkBlocks];
  for (int64_t b = 0; b < n; ++b) bmax[b] = max16(abs_of(load_bits(x + b * kNvfp4Block)));
  int64_t b0 = 0;
  for (; b0 + 16 <= n; b0 += 16) store_bytes(lanes::e4m3_encode(max_block_scale((v16f)load_bits(bmax + b0), ws2)), scales + b0);
  for (int64_t b = b0; b < n; ++b) scales[b] = mixq::e4m3_encode(nvfp4_max_block_scale_f32(bmax[b], ws2));
  encode_blocks_with_scales(x, n, ws2, scales, packed, errors);
}

// Scales searched over multipliers of the block max (four-over-six's {1, 1.5}, or the MSE list):
// first every candidate's scale for all blocks (16 blocks at a time), then per block every
// candidate's codes and squared error in registers; the first strictly lower error wins (the first
// candidate is taken even if its error is inf), as in the reference.
// One candidate's scales for all blocks, 16 blocks at a time.
MIXQ_ALWAYS_INLINE void candidate_scales(const float* bmax, int64_t n, float multiplier, float g, float normalizer,
                                         float ws2, uint8_t* bits, float* step) {
  using namespace lanes;
  int64_t b0 = 0;
  for (; b0 + 16 <= n; b0 += 16) {
    const v16u code = lanes::e4m3_encode(static_block_scale((v16f)load_bits(bmax + b0) * multiplier, g, normalizer));
    const v16f st = lanes::e4m3_decode(code) * ws2;
    std::memcpy(step + b0, &st, sizeof st);
    store_bytes(code, bits + b0);
  }
  for (int64_t b = b0; b < n; ++b) {
    bits[b] = mixq::e4m3_encode(nvfp4_block_scale_f32(bmax[b] * multiplier, g, normalizer));
    step[b] = mixq::e4m3_decode(bits[b]) * ws2;
  }
}

MIXQ_ALWAYS_INLINE void encode_blocks_candidates(const float* x, int64_t n, float global_amax, float normalizer,
                                                 float ws2, std::span<const float> multipliers, uint8_t* scales,
                                                 uint8_t* packed, float* errors) {
  using namespace lanes;
  const float g = global_amax > 0.0f ? global_amax : 1.0f;
  alignas(64) float bmax[kChunkBlocks], best[kChunkBlocks];
  alignas(64) float step[2][kChunkBlocks];
  alignas(64) uint8_t bits[2][kChunkBlocks];
  for (int64_t b = 0; b < n; ++b) bmax[b] = max16(abs_of(load_bits(x + b * kNvfp4Block)));

  if (multipliers.size() == 2) {  // four-over-six: both trials in registers, chosen without a branch
    candidate_scales(bmax, n, multipliers[0], g, normalizer, ws2, bits[0], step[0]);
    candidate_scales(bmax, n, multipliers[1], g, normalizer, ws2, bits[1], step[1]);
    for (int64_t b = 0; b < n; ++b) {
      const v16u xb = load_bits(x + b * kNvfp4Block);
      const v16f ax = abs_of(xb);
      const block_trial first = try_step(ax, step[0][b]), second = try_step(ax, step[1][b]);
      const bool take_second = second.error < first.error;
      const v16u pick = v16u{} + (take_second ? ~0u : 0u);
      store_packed(((second.codes & pick) | (first.codes & ~pick)) | sign_bits(xb), packed + b * (kNvfp4Block / 2));
      scales[b] = take_second ? bits[1][b] : bits[0][b];
      best[b] = take_second ? second.error : first.error;
    }
  } else {
    for (size_t c = 0; c < multipliers.size(); ++c) {
      candidate_scales(bmax, n, multipliers[c], g, normalizer, ws2, bits[0], step[0]);
      for (int64_t b = 0; b < n; ++b) {
        const v16u xb = load_bits(x + b * kNvfp4Block);
        const block_trial t = try_step(abs_of(xb), step[0][b]);
        if (c > 0 && !(t.error < best[b])) continue;
        best[b] = t.error;
        scales[b] = bits[0][b];
        store_packed(t.codes | sign_bits(xb), packed + b * (kNvfp4Block / 2));
      }
    }
  }
  if (errors) std::memcpy(errors, best, size_t(n) * sizeof(float));
}

// Blocks x[0 .. n·16), n <= kChunkBlocks: scale bits to scales[], codes to packed[]; per-block
// squared errors to errors[] when it is not null.
MIXQ_CLONES void encode_chunk(const float* x, int64_t n, const chunk_job& job, uint8_t* scales, uint8_t* packed,
                              float* errors) {
  static constexpr float kFourOverSix[2] = {1.0f, 1.5f};
  switch (job.selector) {
    case nvfp4_selector::max: return encode_blocks_max(x, n, job.ws2, scales, packed, errors);
    case nvfp4_selector::four_over_six:
      return encode_blocks_candidates(x, n, job.global_amax, job.normalizer, job.ws2, kFourOverSix, scales, packed,
                                      errors);
    case nvfp4_selector::mse_multiplier:
      return encode_blocks_candidates(x, n, job.global_amax, job.normalizer, job.ws2, job.multipliers, scales, packed,
                                      errors);
    case nvfp4_selector::mse_fp8_sweep:
    case nvfp4_selector::mse_four_over_six:
      for (int64_t b = 0; b < n; ++b) {
        const float* xb = x + b * kNvfp4Block;
        scales[b] = fp8_sweep_pruned(xb, lanes::max16(lanes::abs_of(lanes::load_bits(xb))), job.global_amax,
                                     job.normalizer, *job.sweep);
      }
      return encode_blocks_with_scales(x, n, job.ws2, scales, packed, errors);
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
  for (size_t c = 0; c < multipliers.size(); ++c)
    err[c] = lanes::fp8_row_sq_error(x, n, fp8_scale_for_amax(amax * multipliers[c]));
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
    case format_id::fp8_per_channel: cpu::fp8_dequantize(cpu::fp8_quantize(w, fp8_options_for(spec)), out); return;
    case format_id::nvfp4:
    case format_id::nvfp4_w4a16: cpu::nvfp4_dequantize(cpu::nvfp4_quantize(w, nvfp4_options_for(spec)), out); return;
    case format_id::mxfp4:
    case format_id::mxfp8: mixq::mx_dequantize(cpu::mx_quantize(w, spec.format, spec.nonfinite), out); return;
    case format_id::nf4: mixq::nf4_dequantize(cpu::nf4_quantize(w, spec.nonfinite), out); return;
    case format_id::count: break;
  }
  throw format_error("fake_quant_weight: unknown format");
}

}  // namespace mixq::cpu
