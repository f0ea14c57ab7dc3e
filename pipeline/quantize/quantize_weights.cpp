#include "pipeline/quantize/quantize_weights.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>

#include <fmt/format.h>

#include "formats/activation_quant.hpp"
#include "kernels/cpu/quantize.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

std::string scale_sharing_key(const std::string& module) {
  const size_t dot = module.rfind('.');
  if (dot == std::string::npos) return module;
  const std::string leaf = module.substr(dot + 1), prefix = module.substr(0, dot);
  if (leaf == "q_proj" || leaf == "k_proj" || leaf == "v_proj") return prefix + ".qkv";
  if (leaf == "gate_proj" || leaf == "up_proj" || leaf == "w1" || leaf == "w3") return prefix + ".gate_up";
  return module;
}

namespace {

struct source_weight {
  const linear_spec* spec;
  weight_quant_spec quant;
  cpu::source_matrix matrix;
  float amax = 0.0f;
};

float stat_or_zero(const std::map<std::string, float>& m, const std::string& key) {
  const auto it = m.find(key);
  return it == m.end() ? 0.0f : it->second;
}

}  // namespace

std::map<std::string, float> input_amax_by_linear(const model_spec& spec, const calibration_stats& stats) {
  std::map<std::string, float> group, expert_leaf;  // sharing key / "<layer>.experts.*.<leaf>" -> max
  const auto leaf_key = [](const linear_spec& l) {
    const std::string e = expert_module_of(l);
    return e.substr(0, e.rfind('.')) + ".*" + l.module.substr(l.module.rfind('.'));
  };
  for (const linear_spec& l : spec.linears) {
    const float a = stat_or_zero(stats.input_amax, l.module);
    float& g = group[scale_sharing_key(l.module)];
    g = std::max(g, a);
    if (l.expert >= 0) {
      float& e = expert_leaf[leaf_key(l)];
      e = std::max(e, a);
    }
  }
  std::map<std::string, float> out;
  for (const linear_spec& l : spec.linears) {
    float a = group[scale_sharing_key(l.module)];
    if (a == 0.0f && l.expert >= 0) a = expert_leaf[leaf_key(l)];
    out[l.module] = a;
  }
  return out;
}

quantized_weights quantize_weights(const checkpoint& ckpt, const model_spec& spec, const quant_plan& plan,
                                   kv_cache_format kv, const calibration_stats& stats,
                                   const progress_callback& progress, weight_device device) {
  std::unordered_map<std::string, checkpoint::entry> by_name;
  for (const auto& e : ckpt.tensors()) by_name.emplace(e.tensor->name, e);

  // 1. the weights to quantize, each scanned once for its amax (and NaN / Inf)
  std::vector<source_weight> todo;
  for (size_t i = 0; i < spec.linears.size(); ++i) {
    const weight_quant_spec& q = plan.linears.at(i).weight;
    if (q.format == format_id::bf16) continue;
    const linear_spec& l = spec.linears[i];
    const auto it = by_name.find(l.weight_name());
    if (it == by_name.end()) throw io_error(fmt::format("{}: tensor '{}' is missing", ckpt.dir().string(), l.weight_name()));
    const auto m = checkpoint::as_matrix(it->second);
    if (!m || m->rows != l.out_features || m->cols != l.in_features)
      throw io_error(fmt::format("{}: tensor '{}' must be a [{}, {}] BF16, F16 or F32 weight to be quantized",
                                 it->second.shard->path().string(), l.weight_name(), l.out_features, l.in_features));
    const cpu::source_scan scan = cpu::scan_source(*m);
    cpu::apply_nonfinite_policy(*m, scan, q.nonfinite);
    todo.push_back({&l, q, *m, scan.amax});
  }

  // 2. shared amax of fused siblings: weights here, inputs from the calibration statistics
  std::map<std::string, float> group_w_amax;
  for (const source_weight& s : todo) {
    const std::string key = scale_sharing_key(s.spec->module);
    group_w_amax[key] = std::max(group_w_amax[key], s.amax);
  }
  const std::map<std::string, float> x_amax_of = input_amax_by_linear(spec, stats);
  quantized_weights out;
  std::set<std::string> quantized_experts;  // only these need an input scale
  for (const source_weight& s : todo)
    if (s.spec->expert >= 0) quantized_experts.insert(expert_module_of(*s.spec));
  for (const auto& [expert, tokens] : stats.expert_tokens)
    if (tokens == 0 && quantized_experts.count(expert)) out.uncalibrated_experts.push_back(expert);

  // 3. quantize
  int64_t done = 0;
  for (const source_weight& s : todo) {
    const std::string key = scale_sharing_key(s.spec->module);
    quantized_linear q;
    q.module = s.spec->module;
    q.format = s.quant.format;
    const float x_amax = x_amax_of.at(s.spec->module);
    if (q.format == format_id::fp8_per_tensor) {
      fp8_options o = fp8_options_for(s.quant);
      o.amax = group_w_amax[key];
      q.fp8 = fp8_quantize_on(device, s.matrix, o);
      q.input_scale = fp8_input_scale(x_amax);
    } else if (q.format == format_id::nvfp4 || q.format == format_id::nvfp4_w4a16) {
      nvfp4_options o = nvfp4_options_for(s.quant);
      o.global_amax = group_w_amax[key];
      q.nvfp4 = nvfp4_quantize_on(device, s.matrix, o);
      if (q.format == format_id::nvfp4) q.input_scale = nvfp4_input_scale(x_amax);
    } else {
      throw io_error(fmt::format("{}: format {} cannot be exported", q.module, traits_of(q.format).name));
    }
    out.linears.push_back(std::move(q));
    if (progress) progress(++done, int64_t(todo.size()));
  }

  // 4. KV cache
  if (kv == kv_cache_format::fp8) {
    float k_max = 0.0f, v_max = 0.0f;
    for (const auto& [attention, a] : stats.k_amax) k_max = std::max(k_max, a);
    for (const auto& [attention, a] : stats.v_amax) v_max = std::max(v_max, a);
    for (const linear_spec& l : spec.linears) {
      if (!l.module.ends_with(".k_proj")) continue;
      const std::string attention = l.module.substr(0, l.module.size() - 7);
      if (stats.k_amax.count(attention)) {
        out.kv[attention] = {fp8_input_scale(stats.k_amax.at(attention)),
                             fp8_input_scale(stat_or_zero(stats.v_amax, attention))};
      } else {
        out.kv[attention] = {fp8_input_scale(k_max), fp8_input_scale(v_max)};
        out.uncalibrated_attention.push_back(attention);
      }
    }
  }
  return out;
}

void apply_fake_quant(causal_lm& model, const quantized_weights& q) {
  std::unordered_map<std::string, const quantized_linear*> by_module;
  for (const quantized_linear& l : q.linears) by_module.emplace(l.module, &l);
  model.for_each_linear([&](llama_linear& W) {
    const auto it = by_module.find(W.name);
    if (it == by_module.end()) return;
    const quantized_linear& l = *it->second;
    if (l.format == format_id::fp8_per_tensor) {
      fp8_dequantize(l.fp8, W.w);
      W.act = {format_id::fp8_per_tensor, l.input_scale};
    } else {
      nvfp4_dequantize(l.nvfp4, W.w);
      W.act = l.format == format_id::nvfp4 ? input_quant{format_id::nvfp4, l.input_scale} : input_quant{};
    }
  });
  for (const auto& [attention, scales] : q.kv)
    if (std::find(q.uncalibrated_attention.begin(), q.uncalibrated_attention.end(), attention) ==
        q.uncalibrated_attention.end())
      model.set_kv_cache_scales(attention, scales);
}

}  // namespace mixq
