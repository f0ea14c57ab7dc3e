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
