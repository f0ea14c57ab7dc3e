#include "pipeline/quantize/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "pipeline/model/layer_stream.hpp"

namespace mixq {

std::string expert_module_of(const linear_spec& l) { return l.module.substr(0, l.module.rfind('.')); }

namespace {

float abs_max(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
  return m;
}

}  // namespace

calibration_stats calibrate(causal_lm& model, std::span<const std::vector<int32_t>> sequences,
                            const progress_callback& progress) {
  const model_spec& spec = model.spec();
  calibration_stats empty;
  // Each routed expert is counted at its first linear (gate or up), which sees exactly its tokens.
  std::map<std::string, std::string> counted_at;  // first linear of an expert -> expert module
  for (const linear_spec& l : spec.linears) {
    empty.input_amax[l.module] = 0.0f;
    if (l.expert >= 0) {
      const std::string e = expert_module_of(l);
      if (empty.expert_tokens.emplace(e, 0).second) counted_at[l.module] = e;
    }
  }
  // Each thread observes into its own statistics, merged by max and sum, which do not depend on the
  // order.
  std::vector<calibration_stats> partial(size_t(std::max(1, omp_get_max_threads())), empty);
  std::vector<std::span<const int32_t>> views(sequences.begin(), sequences.end());
  layer_pass pass;
  pass.hooks = [&](int64_t) {
    calibration_stats& st = partial[size_t(omp_get_thread_num())];
    forward_hooks hooks;
    hooks.input = [&st, &counted_at](const std::string& name, const float* x, int64_t T, int64_t in) {
      float& a = st.input_amax[name];
      a = std::fmax(a, abs_max(x, T * in));
      if (const auto it = counted_at.find(name); it != counted_at.end()) st.expert_tokens[it->second] += T;
    };
    hooks.kv = [&st](const std::string& attention, const float* k, const float* v, int64_t T, int64_t kv_dim) {
      float& ka = st.k_amax[attention];
      float& va = st.v_amax[attention];
      ka = std::fmax(ka, abs_max(k, T * kv_dim));
      va = std::fmax(va, abs_max(v, T * kv_dim));
    };
    return hooks;
  };
  pass.logits = [](int64_t, std::vector<float>&) {};
  pass.progress = progress;
  run_layer_by_layer(model, views, pass);
  partial[0].sequences = int64_t(sequences.size());
  for (const auto& seq : sequences) partial[0].tokens += int64_t(seq.size());
  calibration_stats stats = empty;
  for (const calibration_stats& st : partial) {
    stats.sequences += st.sequences;
    stats.tokens += st.tokens;
    for (const auto& [k, v] : st.input_amax) stats.input_amax[k] = std::fmax(stats.input_amax[k], v);
    for (const auto& [k, v] : st.k_amax) stats.k_amax[k] = std::fmax(stats.k_amax[k], v);
    for (const auto& [k, v] : st.v_amax) stats.v_amax[k] = std::fmax(stats.v_amax[k], v);
    for (const auto& [k, v] : st.expert_tokens) stats.expert_tokens[k] += v;
  }
  return stats;
}

void combine_calibration(calibration_stats& stats, const run_world& world) {
  if (world.size() == 1) return;
  const nlohmann::json mine = {{"sequences", stats.sequences}, {"tokens", stats.tokens},
                               {"input_amax", stats.input_amax}, {"k_amax", stats.k_amax},
                               {"v_amax", stats.v_amax}, {"expert_tokens", stats.expert_tokens}};
  const std::vector<uint8_t> cbor = nlohmann::json::to_cbor(mine);
  calibration_stats all;
  all.fingerprint = stats.fingerprint;
  for (const std::string& bytes : world.all_gather(std::string(cbor.begin(), cbor.end()))) {
    const nlohmann::json j = nlohmann::json::from_cbor(bytes);
    all.sequences += j.at("sequences").get<int64_t>();
    all.tokens += j.at("tokens").get<int64_t>();
    const auto take_max = [&](const char* key, std::map<std::string, float>& into) {
      for (const auto& [name, a] : j.at(key).get<std::map<std::string, float>>())
        into[name] = std::fmax(into[name], a);  // (inserted as 0: amax is never negative)
    };
    take_max("input_amax", all.input_amax);
    take_max("k_amax", all.k_amax);
    take_max("v_amax", all.v_amax);
    for (const auto& [name, n] : j.at("expert_tokens").get<std::map<std::string, int64_t>>()) all.expert_tokens[name] += n;
  }
  stats = std::move(all);
}

}  // namespace mixq
