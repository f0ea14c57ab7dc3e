// One entry point for "quantize this weight in format F with selector S and give me back what the
// runtime will compute with": used by the error tables, scoring and the fake-quant model.
#pragma once

#include <span>
#include <string>

#include "formats/format_traits.hpp"
#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "formats/weight_view.hpp"

namespace mixq {

struct weight_quant_spec {
  format_id format = format_id::nvfp4;
  nvfp4_selector nvfp4 = nvfp4_selector::max;  // NVFP4 formats
  fp8_selector fp8 = fp8_selector::max;        // FP8 formats
  nonfinite_policy nonfinite = nonfinite_policy::reject;
};

std::string describe(const weight_quant_spec& spec);  // "nvfp4/four_over_six", "fp8/max", "bf16"

// The quantizer options a spec implies (for FP8 / NVFP4 formats).
fp8_options fp8_options_for(const weight_quant_spec& spec);
nvfp4_options nvfp4_options_for(const weight_quant_spec& spec);

// Quantizes w under spec and writes the dequantized values (rows·cols) to out. BF16 rounds to BF16.
// Reference implementation: kernels/cpu has the fast one.
void fake_quant_weight(const weight_view& w, const weight_quant_spec& spec, std::span<float> out);

}  // namespace mixq
