#include "pipeline/inspect/checkpoint_inspection.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <regex>
#include <span>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "formats/minifloat.hpp"
#include "pipeline/io/checkpoint.hpp"
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

struct tensor_ref {
  const safetensors_file* file;
  const tensor_info* info;
  std::span<const std::byte> bytes() const { return file->bytes(*info); }
};

std::optional<float> scalar_f32(const tensor_ref& t) {
  if (t.info->type != dtype::f32 || t.info->numel() != 1) return std::nullopt;
  float v;
  std::memcpy(&v, t.bytes().data(), 4);
  return v;
}

// The runtimes fuse these projections into one GEMM, which then has one weight_scale_2 / input_scale.
std::string fusion_key(const std::string& module) {
  static const std::regex rules[] = {std::regex(R"(^(.*)\.(q_proj|k_proj|v_proj)$)"),
                                     std::regex(R"(^(.*)\.(gate_proj|up_proj)$)"),
                                     std::regex(R"(^(.*\.experts\.\d+)\.(w1|w3)$)")};
  static const char* suffixes[] = {"{q,k,v}_proj", "{gate,up}_proj", "{w1,w3}"};
  for (size_t i = 0; i < 3; ++i) {
    std::smatch m;
    if (std::regex_match(module, m, rules[i])) return m[1].str() + "." + suffixes[i];
  }
  return "";
}

// fnmatch-style: '*' matches any run, everything else literally (as ModelOpt's exclude patterns).
bool glob_match(std::string_view pattern, std::string_view name) {
  size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') star = p++, mark = n;
    else if (p < pattern.size() && pattern[p] == name[n]) ++p, ++n;
    else if (star != std::string_view::npos) p = star + 1, n = ++mark;
    else return false;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

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

void check_scale(const std::string& name, const std::map<std::string, tensor_ref>& by_name, bool required,
                 std::vector<std::string>& problems) {
  const auto it = by_name.find(name);
  if (it == by_name.end()) {
    if (required) problems.push_back(fmt::format("{} is missing", name));
    return;
  }
  if (it->second.info->type != dtype::f32) {
    problems.push_back(fmt::format("{} is {}, the runtimes expect F32", name, dtype_name(it->second.info->type)));
    return;
  }
  const auto bytes = it->second.bytes();
  for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    float v;
    std::memcpy(&v, bytes.data() + i, 4);
    if (!std::isfinite(v) || v <= 0.0f) {
      problems.push_back(fmt::format("{} holds {} at index {} (a scale must be finite and positive)", name, v, i / 4));
      return;
    }
  }
}

// E4M3 block scales: zero (the block dequantizes to 0 whatever its codes) or NaN are problems.
void check_block_scales(const tensor_ref& t, std::vector<std::string>& problems) {
  const auto bytes = t.bytes();
  int64_t zero = 0, nan = 0, first = -1;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const uint8_t b = std::to_integer<uint8_t>(bytes[i]);
    const bool is_zero = (b & 0x7f) == 0, is_nan = (b & 0x7f) == 0x7f;
    zero += is_zero, nan += is_nan;
    if ((is_zero || is_nan) && first < 0) first = int64_t(i);
  }
  if (zero + nan > 0)
    problems.push_back(fmt::format("{} has {} zero and {} NaN block scales (first at flat index {})", t.info->name, zero,
                                   nan, first));
}

}  // namespace

checkpoint_inspection inspect_checkpoint(const std::filesystem::path& dir) {
  checkpoint_inspection r;
  r.dir = dir;
  const checkpoint c = checkpoint::open(dir);
  std::map<std::string, tensor_ref> by_name;
  for (const auto& e : c.tensors()) by_name.emplace(e.tensor->name, tensor_ref{e.shard, e.tensor});
  r.tensors = int64_t(by_name.size());
  r.files = int64_t(c.shards().size());
  for (const auto& s : c.shards()) r.file_bytes += std::filesystem::file_size(s.path());

  if (auto config = read_json(dir / "config.json", r.problems)) {
    std::string arch = "?";
    if (config->contains("architectures") && (*config)["architectures"].is_array() && !(*config)["architectures"].empty())
      arch = (*config)["architectures"][0].get<std::string>();
    if (config->contains("model_type") && (*config)["model_type"].is_string())
      arch += " (" + (*config)["model_type"].get<std::string>() + ")";
    r.architecture = arch;
  } else {
    r.architecture = "?";
    r.notes.push_back("no config.json");
  }

  // Every tensor: parameters and bytes by dtype; every 2-D ".weight" is a linear (embeddings too).
  for (const auto& [name, t] : by_name) {
    r.bytes_by_dtype[std::string(dtype_name(t.info->type))] += int64_t(t.info->end - t.info->begin);
    const bool is_scale = name.ends_with(".weight_scale") || name.ends_with(".weight_scale_2") ||
                          name.ends_with(".input_scale") || name.ends_with("_scale");
    if (is_scale) continue;
    const bool packed = t.info->type == dtype::u8 && by_name.count(name + "_scale") && name.ends_with(".weight");
    r.parameters += t.info->numel() * (packed ? 2 : 1);
    if (!name.ends_with(".weight") || t.info->shape.size() != 2) continue;

    const std::string module = name.substr(0, name.size() - 7);
    linear_layer l{module, stored_format::bf16, t.info->shape[0], t.info->shape[1]};
    const auto scale = by_name.find(name + "_scale");
    switch (t.info->type) {
      case dtype::bf16: l.format = stored_format::bf16; break;
      case dtype::f16: l.format = stored_format::f16; break;
      case dtype::f32: l.format = stored_format::f32; break;
      case dtype::f8_e4m3: {
        if (scale == by_name.end()) {
          r.problems.push_back(fmt::format("{} is F8_E4M3 without {}_scale", name, name));
          continue;
        }
        l.format = scale->second.info->numel() == 1 ? stored_format::fp8 : stored_format::fp8_per_channel;
        if (scale->second.info->numel() != 1 && scale->second.info->numel() != l.rows)
          r.problems.push_back(fmt::format("{}_scale has {} values; FP8 needs 1 (per tensor) or {} (per channel)", name,
                                           scale->second.info->numel(), l.rows));
        check_scale(name + "_scale", by_name, true, r.problems);
        check_scale(module + ".input_scale", by_name, false, r.problems);
        break;
      }
      case dtype::u8: {
        if (scale == by_name.end()) {
          r.notes.push_back(fmt::format("{} is U8 without a weight_scale: not a quantized linear", name));
          continue;
        }
        l.cols = t.info->shape[1] * 2;
        l.format = by_name.count(module + ".input_scale") ? stored_format::nvfp4 : stored_format::nvfp4_w4a16;
        const auto& s = *scale->second.info;
        if (s.type != dtype::f8_e4m3 || s.shape.size() != 2 || s.shape[0] != l.rows || s.shape[1] * 16 != l.cols)
          r.problems.push_back(fmt::format("{}_scale is {} {}; NVFP4 with K = {} needs F8_E4M3 [{}, {}]", name,
                                           dtype_name(s.type), fmt::format("{}", fmt::join(s.shape, "x")), l.cols,
                                           l.rows, l.cols / 16));
        else
          check_block_scales(scale->second, r.problems);
        check_scale(name + "_scale_2", by_name, true, r.problems);
        check_scale(module + ".input_scale", by_name, false, r.problems);
        break;
      }
      default:
        r.notes.push_back(fmt::format("{} is {}: not a linear weight format mixq knows", name, dtype_name(t.info->type)));
        continue;
    }
    r.linears.push_back(l);
  }

  // Fused siblings must agree on format and on the scales the fused GEMM uses once.
  std::map<std::string, std::vector<const linear_layer*>> groups;
  for (const auto& l : r.linears)
    if (auto key = fusion_key(l.module); !key.empty()) groups[key].push_back(&l);
  for (const auto& [key, members] : groups) {
    for (const auto* m : members)
      if (m->format != members[0]->format)
        r.problems.push_back(fmt::format("fused group {}: {} is {} but {} is {} (the runtime fuses them into one GEMM)",
                                         key, members[0]->module, stored_format_name(members[0]->format), m->module,
                                         stored_format_name(m->format)));
    for (const char* suffix : {".weight_scale_2", ".input_scale"}) {
      std::optional<float> first;
      for (const auto* m : members) {
        const auto it = by_name.find(m->module + suffix);
        if (it == by_name.end()) continue;
        const auto v = scalar_f32(it->second);
        if (!v) continue;
        if (!first) first = v;
        else if (std::memcmp(&*first, &*v, 4) != 0)
          r.problems.push_back(fmt::format("fused group {}: {}{} = {} differs from {}{} = {} (vLLM uses one for the "
                                           "fused GEMM and silently mis-scales the others)",
                                           key, m->module, suffix, *v, members[0]->module, suffix, *first));
      }
    }
  }

  // An unquantized checkpoint must hold exactly the tensors its config.json describes.
  bool any_quantized = false;
  for (const auto& l : r.linears) any_quantized |= stored_format_bits(l.format) < 16;
  if (std::filesystem::exists(dir / "config.json")) {
    try {
      const model_spec spec = model_spec_from_file(dir);
      if (any_quantized) {
        r.notes.push_back("config.json understood; tensor-by-tensor check skipped for a quantized export");
      } else {
        std::vector<std::pair<std::string, std::vector<int64_t>>> present;
        for (const auto& [name, t] : by_name) present.emplace_back(name, t.info->shape);
        for (auto& m : check_against_tensors(spec, present)) r.problems.push_back(std::move(m));
      }
    } catch (const io_error& e) {
      r.notes.push_back(fmt::format("config.json not checked against the tensors: {}", e.what()));
    }
  }

  double bits = 0, weights = 0;
  for (const auto& l : r.linears) {
    bits += stored_format_bits(l.format) * double(l.rows * l.cols);
    weights += double(l.rows * l.cols);
  }
  r.effective_bits = weights > 0 ? bits / weights : 0;

  // hf_quant_config.json against the tensors.
  const auto hf = read_json(dir / "hf_quant_config.json", r.problems);
  if (!hf) {
    if (any_quantized) r.problems.push_back("quantized tensors but no hf_quant_config.json: the runtimes will not load them");
    return r;
  }
  const json q = hf->value("quantization", json::object());
  r.quant_algo = q.value("quant_algo", "");
  r.kv_cache_quant_algo = q.contains("kv_cache_quant_algo") && q["kv_cache_quant_algo"].is_string()
                              ? q["kv_cache_quant_algo"].get<std::string>()
                              : "";
  const auto algo_of = [](stored_format f) -> std::string {
    switch (f) {
      case stored_format::fp8: return "FP8";
      case stored_format::fp8_per_channel: return "FP8_PER_CHANNEL_PER_TOKEN";
      case stored_format::nvfp4: return "NVFP4";
      case stored_format::nvfp4_w4a16: return "W4A16_NVFP4";
      default: return "";
    }
  };
  std::vector<std::string> excludes;
  if (q.contains("exclude_modules") && q["exclude_modules"].is_array())
    for (const auto& e : q["exclude_modules"]) excludes.push_back(e.get<std::string>());
  const auto excluded = [&](const std::string& m) {
    for (const auto& p : excludes)
      if (glob_match(p, m)) return true;
    return false;
  };
  const json layers = q.value("quantized_layers", json::object());
  for (const auto& l : r.linears) {
    const std::string algo = algo_of(l.format);
    if (r.quant_algo == "MIXED_PRECISION") {
      if (layers.contains(l.module)) {
        const std::string listed = layers[l.module].value("quant_algo", "");
        if (listed != algo)
          r.problems.push_back(fmt::format("{}: hf_quant_config.json says {} but the tensors are {}", l.module, listed,
                                           algo.empty() ? stored_format_name(l.format) : algo));
      } else if (!algo.empty()) {
        r.problems.push_back(fmt::format("{} is {} but not in quantized_layers", l.module, algo));
      }
    } else if (!algo.empty() && algo != r.quant_algo) {
      r.problems.push_back(fmt::format("{} is {} but quant_algo is {}", l.module, algo, r.quant_algo));
    } else if (algo.empty() && !excluded(l.module) && l.module.find("embed") == std::string::npos) {
      r.problems.push_back(fmt::format("{} is unquantized ({}) but not in exclude_modules: the runtime will try to "
                                       "load it as {}",
                                       l.module, stored_format_name(l.format), r.quant_algo));
    }
  }
  return r;
}

}  // namespace mixq
