#include "pipeline/inspect/checkpoint_inspection.hpp"

#include <fstream>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/inspect/inspection_checks.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/model/model_spec.hpp"

namespace mixq {

std::string_view stored_format_name(stored_format f) {
  switch (f) {
    case stored_format::bf16: return "bf16";
    case stored_format::f16: return "f16";
    case stored_format::f32: return "f32";
    case stored_format::fp8: return "fp8";
    case stored_format::fp8_per_channel: return "fp8_per_channel";
    case stored_format::nvfp4: return "nvfp4";
    case stored_format::nvfp4_w4a16: return "nvfp4_w4a16";
  }
  return "?";
}

double stored_format_bits(stored_format f) {
  switch (f) {
    case stored_format::f32: return 32;
    case stored_format::bf16:
    case stored_format::f16: return 16;
    case stored_format::fp8:
    case stored_format::fp8_per_channel: return 8;
    case stored_format::nvfp4:
    case stored_format::nvfp4_w4a16: return 4.5;
  }
  return 0;
}

std::map<std::string, int64_t> checkpoint_inspection::linears_by_format() const {
  std::map<std::string, int64_t> m;
  for (const auto& l : linears) ++m[std::string(stored_format_name(l.format))];
  return m;
}

namespace {

using json = nlohmann::json;
using inspection::tensor_map;
using inspection::tensor_ref;

std::optional<json> read_json(const std::filesystem::path& p, std::vector<std::string>& problems) {
  if (!std::filesystem::exists(p)) return std::nullopt;
  try {
    std::ifstream in(p);
    return json::parse(in);
  } catch (const std::exception& e) {
    problems.push_back(fmt::format("{}: not valid JSON ({})", p.string(), e.what()));
    return std::nullopt;
  }
}

// The modules whose weights are linears: config.json's model lists them; without a model mixq
// understands, every 2-D weight but the embedding tables.
std::vector<std::string> linear_modules(const std::optional<model_spec>& spec, const tensor_map& tensors) {
  std::vector<std::string> out;
  if (spec) {
    for (const auto& l : spec->linears) out.push_back(l.module);
    return out;
  }
  for (const auto& [name, t] : tensors) {
    if (name.find("embed") != std::string::npos) continue;
    if (name.ends_with(".weight_packed")) out.push_back(name.substr(0, name.size() - 14));
    else if (name.ends_with(".weight") && t.info->shape.size() == 2) out.push_back(name.substr(0, name.size() - 7));
  }
  return out;
}

}  // namespace

checkpoint_inspection inspect_checkpoint(const std::filesystem::path& dir, const inspect_options& options) {
  checkpoint_inspection r;
  r.dir = dir;
  if (options.tensor_parallel < 1)
    throw std::invalid_argument(fmt::format("tensor_parallel must be at least 1, is {}", options.tensor_parallel));
  r.tensor_parallel = options.tensor_parallel;
  const checkpoint c = checkpoint::open(dir);
  tensor_map by_name;
  for (const auto& e : c.tensors()) by_name.emplace(e.tensor->name, tensor_ref{e.shard, e.tensor});
  r.tensors = int64_t(by_name.size());
  r.files = int64_t(c.shards().size());
  for (const auto& s : c.shards()) r.file_bytes += std::filesystem::file_size(s.path());

  const auto config = read_json(dir / "config.json", r.problems);
  std::optional<model_spec> spec;
  if (config) {
    std::string arch = "?";
    if (config->contains("architectures") && (*config)["architectures"].is_array() && !(*config)["architectures"].empty())
      arch = (*config)["architectures"][0].get<std::string>();
    if (config->contains("model_type") && (*config)["model_type"].is_string())
      arch += " (" + (*config)["model_type"].get<std::string>() + ")";
    r.architecture = arch;
    try {
      spec = model_spec_from_config(*config, (dir / "config.json").string());
    } catch (const io_error& e) {
      if (names_supported_architecture(*config))  // a config the runtimes will refuse as well
        r.problems.push_back(fmt::format("config.json is not valid for its architecture: {}", e.what()));
      else
        r.notes.push_back(fmt::format("config.json not understood ({}); linears found by shape", e.what()));
    }
  } else {
    r.architecture = "?";
    r.notes.push_back("no config.json");
  }

  // Every tensor: parameters and bytes by dtype (a packed NVFP4 byte holds two weights).
  for (const auto& [name, t] : by_name) {
    r.bytes_by_dtype[std::string(dtype_name(t.info->type))] += int64_t(t.info->end - t.info->begin);
    if (is_quantization_tensor(name) && !name.ends_with(".weight_packed")) continue;
    const bool packed = name.ends_with(".weight_packed") ||
                        (t.info->type == dtype::u8 && name.ends_with(".weight") && by_name.count(name + "_scale"));
    r.parameters += t.info->numel() * (packed ? 2 : 1);
  }

  std::vector<std::string> missing;
  for (const auto& module : linear_modules(spec, by_name)) {
    if (auto l = inspection::read_stored_linear(module, by_name, r)) r.linears.push_back(*l);
    else if (!by_name.count(module + ".weight") && !by_name.count(module + ".weight_packed")) missing.push_back(module);
  }
  bool any_quantized = false;
  for (const auto& l : r.linears) any_quantized |= stored_format_bits(l.format) < 16;

  double bits = 0, weights = 0;
  for (const auto& l : r.linears) {
    bits += stored_format_bits(l.format) * double(l.rows * l.cols);
    weights += double(l.rows * l.cols);
  }
  r.effective_bits = weights > 0 ? bits / weights : 0;
  r.config_checked = spec.has_value();

  // An unquantized checkpoint must hold exactly the tensors its config.json describes.
  if (spec && !any_quantized) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> present;
    for (const auto& [name, t] : by_name) present.emplace_back(name, t.info->shape);
    for (auto& m : check_against_tensors(*spec, present)) r.problems.push_back(std::move(m));
    return r;
  }
  if (!any_quantized) return r;
  if (spec) r.notes.push_back("config.json understood; tensor-by-tensor shape check skipped for a quantized export");
  for (const auto& m : missing) r.problems.push_back(fmt::format("{}: config.json lists this linear but no weight is stored", m));

  inspection::check_fused_groups(by_name, r);
  inspection::check_moe_experts(r);
  inspection::check_tensor_parallel(r);

  const json config_qc = config ? config->value("quantization_config", json()) : json();
  const auto hf = read_json(dir / "hf_quant_config.json", r.problems);
  try {
    if (hf) inspection::check_modelopt_config(*hf, config_qc, r);
    else if (config_qc.is_object() && config_qc.value("quant_method", "") == "compressed-tensors")
      inspection::check_compressed_tensors_config(config_qc, r);
    else
      r.problems.push_back("quantized tensors but no hf_quant_config.json and no compressed-tensors "
                           "quantization_config in config.json: the runtimes will not load them");
  } catch (const json::exception& e) {
    r.problems.push_back(fmt::format("quantization config has an unexpected shape: {}", e.what()));
  }
  inspection::check_kv_scales(by_name, r);
  return r;
}

}  // namespace mixq
