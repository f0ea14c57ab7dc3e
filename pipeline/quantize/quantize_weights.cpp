#include "pipeline/quantize/quantize_weights.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "formats/activation_quant.hpp"
#include "kernels/cpu/quantize.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

namespace {

// A quantized linear as bytes (CBOR), to move it between processes, and back.
std::string to_message(const quantized_linear& q) {
  using nlohmann::json;
  const auto bin = [](const code_bytes& b) { return json::binary(std::vector<uint8_t>(b.begin(), b.end())); };
  const json j = {{"module", q.module},
                  {"format", int(q.format)},
                  {"input_scale", q.input_scale},
                  {"nvfp4", {q.nvfp4.rows, q.nvfp4.cols, q.nvfp4.global_scale, q.nvfp4.normalizer, bin(q.nvfp4.packed),
                             bin(q.nvfp4.block_scales)}},
                  {"fp8", {q.fp8.rows, q.fp8.cols, q.fp8.scales, bin(q.fp8.codes)}}};
  const std::vector<uint8_t> cbor = json::to_cbor(j);
  return std::string(cbor.begin(), cbor.end());
}

quantized_linear from_message(const std::string& bytes) {
  using nlohmann::json;
  const json j = json::from_cbor(bytes);
  const auto codes = [](const json& b) {
    const auto& v = b.get_binary();
    return code_bytes(v.begin(), v.end());
  };
  quantized_linear q;
  q.module = j.at("module").get<std::string>();
  q.format = format_id(j.at("format").get<int>());
  q.input_scale = j.at("input_scale").get<float>();
  const json& n = j.at("nvfp4");
  q.nvfp4 = {n[0].get<int64_t>(), n[1].get<int64_t>(), n[2].get<float>(), n[3].get<float>(), codes(n[4]), codes(n[5])};
  const json& f = j.at("fp8");
  q.fp8 = {f[0].get<int64_t>(), f[1].get<int64_t>(), f[2].get<std::vector<float>>(), codes(f[3])};
  return q;
}

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

weight_quantizer::weight_quantizer(const checkpoint& ckpt, const model_spec& spec, const quant_plan& plan,
                                   kv_cache_format kv, const calibration_stats& stats, weight_device device,
                                   const run_world& world, export_layout layout)
    : device_(device), layout_(layout) {
  std::unordered_map<std::string, checkpoint::entry> by_name;
  for (const auto& e : ckpt.tensors()) by_name.emplace(e.tensor->name, e);

  // 1. the weights to quantize, each scanned once for its amax (and NaN / Inf) by the process that
  //    quantizes it
  std::vector<float> amax;
  world.stage([&] {
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
      todo_.push_back({&l, q, *m, 0.0f});
      layer_.push_back(l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1);
      amax.push_back(0.0f);
      if (!world.takes(int64_t(todo_.size()) - 1)) continue;
      const cpu::source_scan scan = cpu::scan_source(*m);
      cpu::apply_nonfinite_policy(*m, scan, q.nonfinite);
      amax.back() = scan.amax;
    }
  });

  // 2. shared amax of fused siblings: weights here (a max over the processes), inputs from the
  //    calibration statistics
  std::map<std::string, float> group_w_amax;
  for (size_t k = 0; k < todo_.size(); ++k) {
    float& g = group_w_amax[scale_sharing_key(todo_[k].spec->module)];
    g = std::max(g, amax[k]);
  }
  {
    std::vector<float> all;
    for (const auto& [key, a] : group_w_amax) all.push_back(a);
    world.max(all);
    size_t k = 0;
    for (auto& [key, a] : group_w_amax) a = all[k++];
  }
  for (source_weight& s : todo_) s.amax = group_w_amax.at(scale_sharing_key(s.spec->module));
  x_amax_ = input_amax_by_linear(spec, stats);
  std::set<std::string> quantized_experts;  // only these need an input scale
  for (const source_weight& s : todo_)
    if (s.spec->expert >= 0) quantized_experts.insert(expert_module_of(*s.spec));
  for (const auto& [expert, tokens] : stats.expert_tokens)
    if (tokens == 0 && quantized_experts.count(expert)) scales_.uncalibrated_experts.push_back(expert);

  // 3. KV cache
  if (kv == kv_cache_format::fp8) {
    float k_max = 0.0f, v_max = 0.0f;
    for (const auto& [attention, a] : stats.k_amax) k_max = std::max(k_max, a);
    for (const auto& [attention, a] : stats.v_amax) v_max = std::max(v_max, a);
    for (const linear_spec& l : spec.linears) {
      if (!l.module.ends_with(".k_proj")) continue;
      const std::string attention = l.module.substr(0, l.module.size() - 7);
      kv_layer_[attention] = l.block >= 0 ? spec.blocks[size_t(l.block)].layer : outside_layers;
      if (stats.k_amax.count(attention)) {
        scales_.kv[attention] = {fp8_input_scale(stats.k_amax.at(attention)),
                                 fp8_input_scale(stat_or_zero(stats.v_amax, attention))};
      } else {
        scales_.kv[attention] = {fp8_input_scale(k_max), fp8_input_scale(v_max)};
        scales_.uncalibrated_attention.push_back(attention);
      }
    }
  }
}

format_id weight_quantizer::format(size_t k) const { return todo_.at(k).quant.format; }

namespace {

// The normalizers an NVFP4 selector may quantize a weight under (the tensor keeps one of them).
std::span<const float> normalizers_of(nvfp4_selector s) {
  static constexpr float kBoth[] = {kNvfp4Normalizer, kNvfp4FourOverSixNormalizer};
  if (s == nvfp4_selector::four_over_six) return std::span(kBoth).last(1);
  if (s == nvfp4_selector::mse_four_over_six) return kBoth;
  return std::span(kBoth).first(1);
}

}  // namespace

quantized_linear weight_quantizer::quantize(size_t k) const {
  const source_weight& s = todo_.at(k);
  quantized_linear q;
  q.module = s.spec->module;
  q.format = s.quant.format;
  const float x_amax = x_amax_.at(s.spec->module);
  if (q.format == format_id::fp8_per_tensor) {
    fp8_options o = fp8_options_for(s.quant);
    o.amax = s.amax;
    q.fp8 = fp8_quantize_on(device_, s.matrix, o);
    q.input_scale = fp8_input_scale(x_amax);
  } else if (q.format == format_id::nvfp4 || q.format == format_id::nvfp4_w4a16) {
    nvfp4_options o = nvfp4_options_for(s.quant);
    o.global_amax = amax_for_layout(s.amax, layout_, normalizers_of(o.selector));
    q.nvfp4 = nvfp4_quantize_on(device_, s.matrix, o);
    if (q.format == format_id::nvfp4)  // (activations: the standard normalizer)
      q.input_scale = nvfp4_input_scale(amax_for_layout(x_amax, layout_, normalizers_of(nvfp4_selector::max)));
  } else {
    throw io_error(fmt::format("{}: format {} cannot be exported", q.module, traits_of(q.format).name));
  }
  return q;
}

quantized_weights weight_quantizer::quantize_layer(int64_t layer) const {
  quantized_weights out = scales_;
  std::erase_if(out.kv, [&](const auto& kv) { return kv_layer_.at(kv.first) != layer; });
  for (size_t k = 0; k < todo_.size(); ++k)
    if (layer_[k] == layer) out.linears.push_back(quantize(k));
  return out;
}

quantized_weights quantize_weights(const checkpoint& ckpt, const model_spec& spec, const quant_plan& plan,
                                   kv_cache_format kv, const calibration_stats& stats,
                                   const progress_callback& progress, weight_device device, const run_world& world,
                                   export_layout layout) {
  const weight_quantizer quantizer(ckpt, spec, plan, kv, stats, device, world, layout);
  // this process's weights, then every process gets every one, in spec order
  const size_t n = quantizer.size();
  std::vector<quantized_linear> made(n);
  world.stage([&] {
    int64_t done = 0, mine = 0;
    for (size_t i = 0; i < n; ++i) mine += world.takes(int64_t(i));
    for (size_t i = 0; i < n; ++i) {
      if (!world.takes(int64_t(i))) continue;
      made[i] = quantizer.quantize(i);
      if (progress) progress(++done, mine);
    }
  });
  quantized_weights out = quantizer.scales();
  if (world.size() == 1) {
    out.linears = std::move(made);
  } else {
    world.share_items(
        int64_t(n), [&](int64_t i) { return to_message(made[size_t(i)]); },
        [&](int64_t i, std::string bytes) {
          out.linears.push_back(world.takes(i) ? std::move(made[size_t(i)]) : from_message(bytes));
        });
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
