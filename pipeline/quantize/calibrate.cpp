#include "pipeline/quantize/calibrate.hpp"

#include <cmath>
#include <map>
#include <string>

namespace mixq {

std::string expert_module_of(const linear_spec& l) { return l.module.substr(0, l.module.rfind('.')); }

namespace {

float abs_max(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
  return m;
}

}  // namespace

calibration_stats calibrate(const causal_lm& model, std::span<const std::vector<int32_t>> sequences,
                            const progress_callback& progress) {
  const model_spec& spec = model.spec();
  calibration_stats stats;
  // Each routed expert is counted at its first linear (gate or up), which sees exactly its tokens.
  std::map<std::string, std::string> counted_at;  // first linear of an expert -> expert module
  for (const linear_spec& l : spec.linears) {
    stats.input_amax[l.module] = 0.0f;
    if (l.expert >= 0) {
      const std::string e = expert_module_of(l);
      if (stats.expert_tokens.emplace(e, 0).second) counted_at[l.module] = e;
    }
  }
  forward_hooks hooks;
  hooks.input = [&](const std::string& name, const float* x, int64_t T, int64_t in) {
    float& a = stats.input_amax[name];
    a = std::fmax(a, abs_max(x, T * in));
    if (const auto it = counted_at.find(name); it != counted_at.end()) stats.expert_tokens[it->second] += T;
  };
  hooks.kv = [&](const std::string& attention, const float* k, const float* v, int64_t T, int64_t kv_dim) {
    float& ka = stats.k_amax[attention];
    float& va = stats.v_amax[attention];
    ka = std::fmax(ka, abs_max(k, T * kv_dim));
    va = std::fmax(va, abs_max(v, T * kv_dim));
  };
  const int64_t n = int64_t(sequences.size());
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& seq = sequences[size_t(i)];
    model.forward(seq, hooks);
    ++stats.sequences;
    stats.tokens += int64_t(seq.size());
    if (progress) progress(i + 1, n);
  }
  return stats;
}

}  // namespace mixq
