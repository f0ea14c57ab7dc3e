// The JSON that tells inference engines how a checkpoint is quantized (shared/reference/
// hf-export-format.md §2.2, §2.3, §4): ModelOpt's hf_quant_config.json and config.json
// "quantization_config" (quant_method "modelopt"; FP8 / NVFP4 / W4A16_NVFP4, or MIXED_PRECISION with
// a per-layer map), or the compressed-tensors quantization_config.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/format_traits.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

// Module -> format of every linear of the spec (bf16 for those kept), in spec order.
using layer_formats = std::vector<std::pair<std::string, format_id>>;

struct quant_configs {
  nlohmann::ordered_json hf_quant_config;      // hf_quant_config.json (ModelOpt layout only; null otherwise)
  nlohmann::ordered_json quantization_config;  // config.json["quantization_config"]
};

// `producer_version` goes into the producer record. Every BF16 linear (routers and lm_head included)
// is listed in exclude_modules / ignore, so single-format loaders never allocate a quantized
// parameter for a BF16 weight.
quant_configs make_quant_configs(const layer_formats& layers, kv_cache_format kv, export_layout layout,
                                 const std::string& producer_version);

}  // namespace mixq
