// forward_backward with activation_memory::recompute (each block's activations recomputed right
// before its backward) returns exactly what the default keeps-everything pass returns — the same
// ops in the same order, so the same bits — on every architecture, with the observers called once
// per block and an output hook that rewrites Y applied in both passes of a recomputed block.
#include <gtest/gtest.h>

#include <map>

#include "model_test_support.hpp"
#include "pipeline/model/llama.hpp"

namespace mixq {
namespace {

class ActivationRecompute : public ::testing::TestWithParam<synth_arch> {};

TEST_P(ActivationRecompute, SameLossAndGradientsAsKeepingEverything) {
  const testing::synth_dir d(GetParam());
  const auto model = load_causal_lm(d.dir);
  std::vector<int32_t> tokens;
  for (int32_t t = 0; t < 24; ++t) tokens.push_back((t * 37 + 11) % int32_t(model->vocab()));

  // Observers (input, KV, routing) count calls; the output hook scales every Y by a fixed factor (a stand-in for the
  // fake-quant replay), so a recomputed block that skipped it would give different activations.
  std::map<std::string, int> seen_keep, seen_recompute;
  const auto hooks_counting = [](std::map<std::string, int>& seen) {
    forward_hooks h;
    h.input = [&seen](const std::string& name, const float*, int64_t, int64_t) { ++seen[name]; };
    h.kv = [&seen](const std::string& attention, const float*, const float*, int64_t, int64_t) {
      ++seen["kv " + attention];
    };
    h.routing = [&seen](const std::string& moe, int64_t e, const int64_t*, const float*, int64_t) {
      ++seen["routing " + moe + " " + std::to_string(e)];
    };
    h.output = [](const std::string&, float* y, int64_t T, int64_t out) {
      for (int64_t i = 0; i < T * out; ++i) y[i] *= 0.999f;
    };
    return h;
  };
  const llama_grads keep = model->forward_backward(tokens, hooks_counting(seen_keep), activation_memory::keep);
  const llama_grads again =
      model->forward_backward(tokens, hooks_counting(seen_recompute), activation_memory::recompute);
  EXPECT_EQ(keep.loss, again.loss);
  ASSERT_EQ(keep.dy.size(), again.dy.size());
  for (const auto& [name, dy] : keep.dy) EXPECT_EQ(dy, again.dy.at(name)) << name;
  EXPECT_EQ(seen_keep, seen_recompute);
  for (const auto& [name, n] : seen_recompute) EXPECT_EQ(n, 1) << name;
}

INSTANTIATE_TEST_SUITE_P(Architectures, ActivationRecompute,
                         ::testing::Values(synth_arch::llama, synth_arch::mixtral, synth_arch::qwen3_moe,
                                         synth_arch::nemotron_h),
                         [](const auto& param_info) { return std::string(to_string(param_info.param)); });

}  // namespace
}  // namespace mixq
