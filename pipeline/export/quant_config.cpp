#include "pipeline/export/quant_config.hpp"

#include <set>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {
namespace {

using ojson = nlohmann::ordered_json;

// ModelOpt's per-layer record ("quantized_layers" values).
ojson modelopt_layer(format_id f) {
  ojson j = {{"quant_algo", std::string(traits_of(f).modelopt_algo)}};
  if (traits_of(f).block_size == 16) j["group_size"] = 16;
  return j;
}

// A config_groups entry in ModelOpt's flat form (convert_hf_quant_config_format).
ojson modelopt_group(format_id f, ojson targets) {
  const bool fp4 = traits_of(f).element == element_kind::e2m1;
  ojson side = {{"dynamic", false}, {"num_bits", fp4 ? 4 : 8}, {"type", "float"}};
  if (fp4) side["group_size"] = 16;
  ojson g = ojson::object();
  if (traits_of(f).quantizes_activations) g["input_activations"] = side;
  g["weights"] = side;
  g["targets"] = std::move(targets);
  return g;
}

ojson ct_args(format_id f, bool activations) {
  const bool fp4 = traits_of(f).element == element_kind::e2m1;
  ojson a = {{"num_bits", fp4 ? 4 : 8}, {"type", "float"}, {"strategy", fp4 ? "tensor_group" : "tensor"}};
  if (fp4) a["group_size"] = 16;
  a["symmetric"] = true;
  a["dynamic"] = activations && fp4 ? ojson("local") : ojson(false);
  return a;
}

std::string ct_format(format_id f) {
  return traits_of(f).element == element_kind::e2m1 ? "nvfp4-pack-quantized" : "float-quantized";
}

}  // namespace

quant_configs make_quant_configs(const layer_formats& layers, kv_cache_format kv, export_layout layout,
                                 const std::string& producer_version) {
  std::map<format_id, std::vector<std::string>> by_format;  // quantized formats -> modules (spec order)
  std::vector<std::string> excluded;
  for (const auto& [module, f] : layers) {
    if (f == format_id::bf16) {
      excluded.push_back(module);
      continue;
    }
    if (traits_of(f).modelopt_algo.empty() || f == format_id::fp8_per_channel)
      throw std::invalid_argument(fmt::format("{}: format {} has no HF export layout", module, traits_of(f).name));
    by_format[f].push_back(module);
  }
  const ojson producer = {{"name", "mixq"}, {"version", producer_version}};
  const ojson fp8_kv = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  quant_configs out;

  if (layout == export_layout::compressed_tensors) {
    ojson groups = ojson::object();
    int i = 0;
    for (const auto& [f, modules] : by_format) {
      ojson g = {{"targets", modules}, {"weights", ct_args(f, false)}};
      g["input_activations"] = traits_of(f).quantizes_activations ? ct_args(f, true) : ojson(nullptr);
      g["output_activations"] = nullptr;
      g["format"] = ct_format(f);
      groups[fmt::format("group_{}", i++)] = std::move(g);
    }
    ojson kv_scheme = nullptr;
    if (kv == kv_cache_format::fp8)
      kv_scheme = {{"num_bits", 8}, {"type", "float"}, {"strategy", "tensor"}, {"dynamic", false}, {"symmetric", true}};
    out.quantization_config = {
        {"quant_method", "compressed-tensors"},
        {"format", by_format.size() == 1 ? ct_format(by_format.begin()->first) : std::string("mixed-precision")},
        {"quantization_status", "compressed"},
        {"config_groups", std::move(groups)},
        {"ignore", excluded},
        {"kv_cache_scheme", std::move(kv_scheme)},
        {"producer", producer}};
    return out;
  }

  // ModelOpt: one algo when every quantized layer agrees, else MIXED_PRECISION with the per-layer map.
  const bool mixed = by_format.size() > 1;
  const std::string algo = by_format.empty() ? std::string("NONE")
                           : mixed           ? std::string("MIXED_PRECISION")
                                             : std::string(traits_of(by_format.begin()->first).modelopt_algo);
  ojson quantization = {{"quant_algo", algo}};
  if (!mixed && !by_format.empty() && traits_of(by_format.begin()->first).block_size == 16)
    quantization["group_size"] = 16;
  quantization["kv_cache_quant_algo"] = kv == kv_cache_format::fp8 ? ojson("FP8") : ojson(nullptr);
  quantization["exclude_modules"] = excluded;
  ojson quantized_layers = ojson::object();
  if (mixed)
    for (const auto& [module, f] : layers)
      if (f != format_id::bf16) quantized_layers[module] = modelopt_layer(f);
  if (mixed) quantization["quantized_layers"] = quantized_layers;
  out.hf_quant_config = {{"producer", producer}, {"quantization", quantization}};

  ojson groups = ojson::object();
  int i = 0;
  for (const auto& [f, modules] : by_format) {
    std::vector<std::string> sorted = modules;
    std::sort(sorted.begin(), sorted.end());
    groups[fmt::format("group_{}", i++)] = modelopt_group(f, mixed ? ojson(sorted) : ojson::array({"Linear"}));
  }
  ojson qc = {{"config_groups", std::move(groups)}, {"ignore", excluded}, {"quant_algo", algo}};
  if (quantization.contains("group_size")) qc["group_size"] = 16;
  qc["kv_cache_scheme"] = kv == kv_cache_format::fp8 ? fp8_kv : ojson(nullptr);
  qc["producer"] = producer;
  qc["quant_method"] = "modelopt";
  if (mixed) qc["quantized_layers"] = std::move(quantized_layers);
  out.quantization_config = std::move(qc);
  return out;
}

}  // namespace mixq
