#include "formats/weight_fake_quant.hpp"

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "formats/mx.hpp"
#include "formats/nf4.hpp"
#include "formats/tensor_amax.hpp"

namespace mixq {

std::string describe(const weight_quant_spec& spec) {
  const format_traits& t = traits_of(spec.format);
  switch (t.element) {
    case element_kind::e2m1:
      if (t.block_size == 16) return fmt::format("{}/{}", t.name, selector_name(spec.nvfp4));
      return std::string(t.name);
    case element_kind::e4m3:
      if (t.block_size == 0) return fmt::format("{}/{}", t.name, spec.fp8 == fp8_selector::max ? "max" : "mse");
      return std::string(t.name);
    default: return std::string(t.name);
  }
}

fp8_options fp8_options_for(const weight_quant_spec& spec) {
  fp8_options o;
  o.granularity = spec.format == format_id::fp8_per_channel ? fp8_granularity::per_channel : fp8_granularity::per_tensor;
  o.selector = spec.fp8;
  o.nonfinite = spec.nonfinite;
  return o;
}

nvfp4_options nvfp4_options_for(const weight_quant_spec& spec) {
  nvfp4_options o;
  o.selector = spec.nvfp4;
  o.nonfinite = spec.nonfinite;
  return o;
}

void fake_quant_weight(const weight_view& w, const weight_quant_spec& spec, std::span<float> out) {
  if (int64_t(out.size()) != w.size())
    throw format_error(fmt::format("tensor '{}': output holds {} values, need {}", w.name, out.size(), w.size()));
  switch (spec.format) {
    case format_id::bf16: {
      std::vector<float> cleaned;
      const weight_view v = finite_or_zeroed(w, spec.nonfinite, cleaned);
      for (int64_t i = 0; i < v.size(); ++i) out[size_t(i)] = bf16_decode(bf16_encode(v.data[i]));
      return;
    }
    case format_id::fp8_per_tensor:
    case format_id::fp8_per_channel: fp8_dequantize(fp8_quantize(w, fp8_options_for(spec)), out); return;
    case format_id::nvfp4:
    case format_id::nvfp4_w4a16: nvfp4_dequantize(nvfp4_quantize(w, nvfp4_options_for(spec)), out); return;
    case format_id::mxfp4:
    case format_id::mxfp8: mx_dequantize(mx_quantize(w, spec.format, spec.nonfinite), out); return;
    case format_id::nf4: nf4_dequantize(nf4_quantize(w, spec.nonfinite), out); return;
    case format_id::count: break;
  }
  throw format_error("fake_quant_weight: unknown format");
}

}  // namespace mixq
