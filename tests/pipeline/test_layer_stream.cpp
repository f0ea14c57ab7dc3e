// run_layer_by_layer and models that load their layers on demand: the logits and the hook calls of
// forward(), bit for bit, for every architecture; one layer held at a time; errors stop the pass and
// leave no layer loaded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <stdexcept>

#include "model_test_support.hpp"
#include "pipeline/model/layer_stream.hpp"

namespace mixq {
namespace {

using ::testing::HasSubstr;

// Three sequences of different lengths (the last a single token).
std::vector<std::vector<int32_t>> sequences_for(const causal_lm& m) {
  std::vector<std::vector<int32_t>> s(3);
  for (int32_t t = 0; t < 23; ++t) s[0].push_back((t * 53 + 7) % int32_t(m.vocab()));
  for (int32_t t = 0; t < 9; ++t) s[1].push_back((t * 31 + 2) % int32_t(m.vocab()));
  s[2].push_back(5);
  return s;
}

std::vector<std::span<const int32_t>> views_of(const std::vector<std::vector<int32_t>>& s) {
  return {s.begin(), s.end()};
}

int64_t layers_held(const causal_lm& m) {
  int64_t n = 0;
  for (int64_t l = 0; l < m.layer_count(); ++l) n += m.holds_layer(l) ? 1 : 0;
  return n;
}

class LayerStream : public ::testing::TestWithParam<synth_arch> {};

TEST_P(LayerStream, GivesForwardsLogitsAndHookCallsHoldingOneLayer) {
  const testing::synth_dir d(GetParam());
  const auto whole = load_causal_lm(d.dir);
  const auto layers = load_causal_lm(d.dir, {}, layer_weights::on_demand);
  ASSERT_GE(layers->layer_count(), 2);
  EXPECT_EQ(layers_held(*layers), 0);
  EXPECT_EQ(layers_held(*whole), whole->layer_count());
  const auto seqs = sequences_for(*whole);

  // forward() on the whole model: logits, and each linear's calls (name -> T summed, output sums).
  // From OpenMP threads, as the pass runs them (Eigen's GEMM blocks differently where it may use
  // threads of its own).
  std::mutex m;
  std::map<std::string, std::pair<int64_t, double>> want_calls;
  std::vector<std::vector<float>> want(seqs.size());
#pragma omp parallel for
  for (size_t i = 0; i < seqs.size(); ++i)
    want[i] = whole->forward(seqs[i], [&](const std::string& name, float* y, int64_t T, int64_t out) {
      double sum = 0.0;
      for (int64_t j = 0; j < T * out; ++j) sum += y[j];
      const std::lock_guard<std::mutex> lock(m);
      auto& c = want_calls[name];
      c.first += T;
      c.second += sum;
    });

  std::map<std::string, std::pair<int64_t, double>> got_calls;
  std::vector<std::vector<float>> got(seqs.size());
  int64_t most_held = 0, loaded_calls = 0, last_progress = 0;
  layer_pass pass;
  pass.hooks = [&](int64_t) -> forward_hooks {
    return [&](const std::string& name, float* y, int64_t T, int64_t out) {
      double sum = 0.0;
      for (int64_t i = 0; i < T * out; ++i) sum += y[i];
      const std::lock_guard<std::mutex> lock(m);
      auto& c = got_calls[name];
      c.first += T;
      c.second += sum;
    };
  };
  pass.loaded = [&](causal_lm& model, int64_t layer) {
    EXPECT_TRUE(model.holds_layer(layer));
    most_held = std::max(most_held, layers_held(model));
    ++loaded_calls;
  };
  pass.logits = [&](int64_t i, std::vector<float>& logits) { got[size_t(i)] = std::move(logits); };
  pass.progress = [&](int64_t done, int64_t total) {
    EXPECT_EQ(done, last_progress + 1);
    EXPECT_EQ(total, layers->layer_count() + 1);  // one group: every layer, then the heads
    last_progress = done;
  };
  run_layer_by_layer(*layers, views_of(seqs), pass);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(got[i], want[i]) << "sequence " << i;
  EXPECT_EQ(most_held, 1);
  EXPECT_EQ(loaded_calls, layers->layer_count());
  EXPECT_EQ(layers_held(*layers), 0);  // dropped again
  EXPECT_EQ(last_progress, layers->layer_count() + 1);
  ASSERT_EQ(got_calls.size(), want_calls.size());
  for (const auto& [name, c] : want_calls) {
    EXPECT_EQ(got_calls[name].first, c.first) << name;
    EXPECT_NEAR(got_calls[name].second, c.second, 1e-9 * (1.0 + std::abs(c.second))) << name;  // (summed in another order)
  }

  // a model holding every layer keeps them
  pass.progress = {};
  run_layer_by_layer(*whole, views_of(seqs), pass);
  EXPECT_EQ(layers_held(*whole), whole->layer_count());
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(got[i], want[i]) << "sequence " << i;
}

TEST_P(LayerStream, ErrorsStopThePassAndLeaveNoLayerLoaded) {
  const testing::synth_dir d(GetParam());
  const auto layers = load_causal_lm(d.dir, {}, layer_weights::on_demand);
  auto seqs = sequences_for(*layers);
  layer_pass pass;
  pass.logits = [](int64_t, std::vector<float>&) {};

  seqs[1][3] = int32_t(layers->vocab());  // a token outside the vocabulary: told by embed, as forward() tells it
  EXPECT_THAT([&] { run_layer_by_layer(*layers, views_of(seqs), pass); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("is outside the vocabulary")));
  EXPECT_EQ(layers_held(*layers), 0);

  seqs = sequences_for(*layers);
  pass.loaded = [](causal_lm&, int64_t layer) {
    if (layer == 1) throw std::runtime_error("stop at layer 1");
  };
  EXPECT_THAT([&] { run_layer_by_layer(*layers, views_of(seqs), pass); },
              ::testing::ThrowsMessage<std::runtime_error>(HasSubstr("stop at layer 1")));
  EXPECT_EQ(layers_held(*layers), 0);

  // what needs every layer says so
  EXPECT_THAT([&] { layers->forward(seqs[0]); }, ::testing::ThrowsMessage<std::logic_error>(HasSubstr("not loaded")));
  EXPECT_THAT([&] { layers->forward_backward(seqs[0]); },
              ::testing::ThrowsMessage<std::logic_error>(HasSubstr("not loaded")));
  layers->load_layer(0);
  layers->load_layer(0);  // (a held layer: nothing)
  EXPECT_EQ(layers_held(*layers), 1);
}

INSTANTIATE_TEST_SUITE_P(Architectures, LayerStream,
                         ::testing::Values(synth_arch::llama, synth_arch::mixtral, synth_arch::qwen3_moe,
                                           synth_arch::nemotron_h),
                         [](const auto& param_info) { return std::string(to_string(param_info.param)); });

}  // namespace
}  // namespace mixq
