// What the runtimes require across the linears of a quantized export, whatever its layout: fused
// siblings and MoE experts agreeing, NVFP4 slices under tensor parallelism, KV-cache scales.
#include <cstring>
#include <regex>

#include <fmt/format.h>

#include "pipeline/io/quantized_linear.hpp"

#include "pipeline/inspect/inspection_checks.hpp"

namespace mixq::inspection {
namespace {

std::optional<float> scalar_f32(const tensor_ref& t) {
  if (t.info->type != dtype::f32 || t.info->numel() != 1) return std::nullopt;
  float v;
  std::memcpy(&v, t.bytes().data(), 4);
  return v;
}

// The runtimes fuse these projections into one GEMM, which then has one global / input scale.
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

std::string last_component(const std::string& module) { return module.substr(module.rfind('.') + 1); }

// How vLLM splits a linear across tensor-parallel ranks, decided by the module's last name
// component: row-parallel layers (attention / MLP / Mamba outputs, expert down projections) split
// K; routers, the latent-MoE projections (ReplicatedLinear in vLLM's Nemotron-H) and lm_head (padded
// vocabulary) are not split by K or N; every other projection is column-parallel and splits N.
enum class tp_split { k, n, none };
tp_split split_of(const std::string& module) {
  const std::string last = last_component(module);
  for (const char* row : {"o_proj", "down_proj", "out_proj", "w2"})
    if (last == row) return tp_split::k;
  for (const char* replicated : {"gate", "fc1_latent_proj", "fc2_latent_proj", "lm_head"})
    if (last == replicated) return tp_split::none;
  return tp_split::n;
}

bool is_nvfp4(stored_format f) { return f == stored_format::nvfp4 || f == stored_format::nvfp4_w4a16; }

}  // namespace

void check_fused_groups(const tensor_map& tensors, checkpoint_inspection& r) {
  std::map<std::string, std::vector<const linear_layer*>> groups;
  for (const auto& l : r.linears)
    if (auto key = fusion_key(l.module); !key.empty()) groups[key].push_back(&l);
  for (const auto& [key, members] : groups) {
    for (const auto* m : members)
      if (m->format != members[0]->format)
        r.problems.push_back(fmt::format("fused group {}: {} is {} but {} is {} (the runtime fuses them into one GEMM)",
                                         key, members[0]->module, stored_format_name(members[0]->format), m->module,
                                         stored_format_name(m->format)));
    for (const char* suffix : {".weight_scale_2", ".input_scale", ".weight_global_scale", ".input_global_scale"}) {
      std::optional<float> first;
      for (const auto* m : members) {
        const auto it = tensors.find(m->module + suffix);
        if (it == tensors.end()) continue;
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
}

void check_moe_experts(checkpoint_inspection& r) {
  static const std::regex expert(R"(^(.*\.experts)\.\d+\.[^.]+$)");
  std::map<std::string, std::vector<const linear_layer*>> layers;
  for (const auto& l : r.linears)
    if (std::smatch m; std::regex_match(l.module, m, expert)) layers[m[1].str()].push_back(&l);
  for (const auto& [layer, experts] : layers) {
    const linear_layer& first = *experts[0];
    int64_t differ = 0;
    const linear_layer* example = nullptr;
    for (const auto* e : experts)
      if (e->format != first.format) ++differ, example = example ? example : e;
    if (example)
      r.problems.push_back(fmt::format("MoE layer {}: {} is {} but {} is {} ({} of {} expert linears differ; vLLM gives "
                                       "all routed experts of a layer one format, taken from the first expert)",
                                       layer, first.module, stored_format_name(first.format), example->module,
                                       stored_format_name(example->format), differ, experts.size()));
  }
}

void check_tensor_parallel(checkpoint_inspection& r) {
  const int64_t tp = r.tensor_parallel;
  for (const auto& l : r.linears) {
    if (!is_nvfp4(l.format)) continue;
    switch (split_of(l.module)) {
      case tp_split::k:
        if (l.cols % tp != 0)
          r.problems.push_back(fmt::format("{}: row-parallel NVFP4 at --tp {}: K = {} does not split into {} equal "
                                           "slices",
                                           l.module, tp, l.cols, tp));
        else if ((l.cols / tp) % 16 != 0)
          r.problems.push_back(fmt::format("{}: row-parallel NVFP4 at --tp {}: K = {} splits into slices of {}, not a "
                                           "multiple of 16 (vLLM rejects input_size_per_partition % 16 != 0)",
                                           l.module, tp, l.cols, l.cols / tp));
        break;
      case tp_split::n:
        if (l.rows % tp != 0)
          r.problems.push_back(fmt::format("{}: column-parallel NVFP4 at --tp {}: N = {} does not split into {} equal "
                                           "slices",
                                           l.module, tp, l.rows, tp));
        break;
      case tp_split::none: break;
    }
  }
}

void check_kv_scales(const tensor_map& tensors, checkpoint_inspection& r) {
  if (r.kv_cache_quant_algo.empty()) {
    int64_t present = 0;
    for (const auto& [name, t] : tensors) present += name.ends_with(".k_scale") || name.ends_with(".v_scale");
    if (present > 0)
      r.notes.push_back(fmt::format("{} KV-cache scale tensors but the config quantizes no KV cache: the runtimes "
                                    "ignore them",
                                    present));
    return;
  }
  for (const auto& l : r.linears) {
    if (!l.module.ends_with(".k_proj")) continue;
    const std::string attention = l.module.substr(0, l.module.size() - 7);
    const auto [k_name, v_name] = kv_scale_names(
        attention, r.layout == "compressed-tensors" ? export_layout::compressed_tensors : export_layout::modelopt);
    for (const std::string& name : {k_name, v_name}) {
      if (!tensors.count(name))
        r.problems.push_back(fmt::format("attention {}: kv_cache_quant_algo is {} but {} is missing (the runtime "
                                         "falls back to scale 1.0)",
                                         attention, r.kv_cache_quant_algo, name));
      check_scale(name, tensors, false, r.problems);
    }
  }
}

}  // namespace mixq::inspection
