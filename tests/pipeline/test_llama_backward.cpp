// llama_model::forward_backward: the loss and dloss/dY at every linear's output, against transformers
// (tests/golden/make_llama_grad_goldens.py), against central finite differences through the
// linear-output hook, and against the forward pass's own NLL.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "pipeline/eval/perplexity.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr double kLossTol = 1e-5;  // relative
constexpr double kGradTol = 1e-4;  // max|a-b| / max|b| per tensor (gradients can be tiny: no +1)
constexpr double kFdTol = 1e-3;    // relative, finite difference vs <g, d>

const json& golden() {
  static const json g = testing::read_golden("synth_llama_tiny_grads.json");
  return g;
}

// mixq synth --arch <arch> --preset tiny --seed 0, loaded once per architecture for the suite.
const llama_model& synth_model(synth_arch arch = synth_arch::llama) {
  static std::map<synth_arch, llama_model> models;
  const auto it = models.find(arch);
  if (it != models.end()) return it->second;
  const testing::synth_dir d(arch);
  return models.emplace(arch, llama_model::load(d.dir)).first->second;
}

// Every module's dloss/dY against the golden key; returns the worst max|a-b| / (1 + max|b|).
double compare_to_golden(const llama_model& model, const json& want) {
  const auto tokens = want.at("tokens").get<std::vector<int32_t>>();
  const llama_grads got = model.forward_backward(tokens);
  const double ref_loss = want.at("loss").get<double>();
  EXPECT_LT(std::fabs(got.loss - ref_loss) / std::fabs(ref_loss), kLossTol) << got.loss << " vs " << ref_loss;
  const json& grads = want.at("grads");
  EXPECT_EQ(got.dy.size(), grads.size());
  const auto& linears = model.spec().linears;
  const bool lm_head_listed = std::any_of(linears.begin(), linears.end(),
                                          [](const linear_spec& l) { return l.role == linear_role::lm_head; });
  EXPECT_EQ(got.dy.size(), linears.size() + (lm_head_listed ? 0 : 1));
  const auto [worst, worst_name, worst_of_kind] =
      testing::compare_grads_to_golden(got.dy, grads, tokens.size(), kGradTol);
  std::cout << fmt::format("  loss {:.9g} (transformers {:.9g}); worst dY max|a-b|/max|b| {:.3g} ({})\n", got.loss,
                           ref_loss, worst, worst_name);
  ::testing::Test::RecordProperty("worst_rel", fmt::format("{:.3g}", worst));
  return worst;
}

TEST(llama_backward, synth_tiny_matches_transformers) {
  compare_to_golden(synth_model(), golden().at("synth_llama_tiny"));
}

TEST(llama_backward, synth_mixtral_tiny_matches_transformers) {
  compare_to_golden(synth_model(synth_arch::mixtral), golden().at("synth_mixtral_tiny"));
}

TEST(llama_backward, synth_qwen3_moe_tiny_matches_transformers) {
  compare_to_golden(synth_model(synth_arch::qwen3_moe), golden().at("synth_qwen3_moe_tiny"));
}

TEST(llama_backward, stories260k_matches_transformers) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "stories260K");
  compare_to_golden(llama_model::load(dir), golden().at("stories260K"));
}

// Mean next-token NLL of forward(tokens, hook), in double.
double mean_nll(const llama_model& model, const std::vector<int32_t>& tokens, const linear_output_hook& hook = {}) {
  const std::vector<float> logits = model.forward(tokens, hook);
  const int64_t n = int64_t(tokens.size()) - 1;
  return nll_sum(logits.data(), tokens.data() + 1, n, model.config().vocab) / double(n);
}

TEST(llama_backward, loss_equals_forward_mean_nll) {
  const llama_model& model = synth_model();
  const auto tokens = golden().at("synth_llama_tiny").at("tokens").get<std::vector<int32_t>>();
  const double want = mean_nll(model, tokens);
  EXPECT_NEAR(model.forward_backward(tokens).loss, want, 1e-9 * want);
  // a hook that changes nothing changes nothing
  const linear_output_hook noop = [](const std::string&, float*, int64_t, int64_t) {};
  EXPECT_EQ(mean_nll(model, tokens, noop), want);
  EXPECT_THROW(model.forward_backward(std::vector<int32_t>{1}), std::invalid_argument);
}

// The 4-point central difference (8 (L(h) - L(-h)) - (L(2h) - L(-2h))) / (12 h), L(h) the loss with
// Y + h d at one module's output Y, against <g, d>, for d = g / |g| and for
// a random unit direction, with the step h = eps * max(1, |Y|): a step relative to the output keeps
// the loss change well above the fp32 rounding noise of the forward pass. The error is measured
// relative to |g| (the largest directional derivative); the loss is accumulated in double.
// For a routed expert, Y and g are [T_e, out] over its tokens (the hook sees the same rows).
// `router_eps` replaces eps for a MoE router: its logits are small (|Y| < 1), so eps = 1e-3 moves
// the loss by little more than its fp32 noise (at 1e-2 the 4-point estimate still agrees to ~1e-4,
// so no top-k choice flips within the steps).
// `tokens` defaults to the synth_llama_tiny golden's; `eps` is the step of the other modules.
void check_finite_differences(const llama_model& model, const std::vector<std::string>& modules,
                              double router_eps = 1e-3, std::vector<int32_t> tokens = {}, double eps_other = 1e-3) {
  if (tokens.empty()) tokens = golden().at("synth_llama_tiny").at("tokens").get<std::vector<int32_t>>();
  const llama_grads grads = model.forward_backward(tokens);
  std::mt19937 rng(7);
  double worst = 0.0;
  for (const std::string& name : modules) {
    const std::vector<float>& g = grads.dy.at(name);
    double gnorm = 0.0;
    for (const float x : g) gnorm += double(x) * double(x);
    gnorm = std::sqrt(gnorm);
    ASSERT_GT(gnorm, 0.0) << name;
    double ynorm = 0.0;
    mean_nll(model, tokens, [&](const std::string& m, float* y, int64_t T, int64_t out) {
      if (m == name)
        for (int64_t i = 0; i < T * out; ++i) ynorm += double(y[i]) * double(y[i]);
    });
    const bool router = name.ends_with(".gate") && name.find(".experts.") == std::string::npos;
    const double eps = router ? router_eps : eps_other;
    const double h = eps * std::max(1.0, std::sqrt(ynorm));
    const auto [along, random] = testing::fd_directions(g, gnorm, rng);
    for (const std::vector<double>* d : {&along, &random}) {
      const auto loss_at = [&](double step) {
        return mean_nll(model, tokens, [&](const std::string& m, float* y, int64_t T, int64_t out) {
          if (m != name) return;
          for (int64_t i = 0; i < T * out; ++i) y[i] += float(step * (*d)[size_t(i)]);
        });
      };
      const double fd = testing::five_point_derivative(loss_at, h);
      const double analytic = testing::directional(g, *d);
      const double rel = std::fabs(fd - analytic) / gnorm;
      worst = std::max(worst, rel);
      std::cout << fmt::format("  {:40} {:6} |g| {:.4e} step {:.2e}  fd {:+.6e}  <g,d> {:+.6e}  rel {:.2e}\n",
                               name, d == &along ? "along" : "random", gnorm, h, fd, analytic, rel);
      EXPECT_LT(rel, kFdTol) << name;
    }
  }
  ::testing::Test::RecordProperty("worst_fd_rel", fmt::format("{:.3g}", worst));
}

TEST(llama_backward, output_gradients_match_finite_differences) {
  const llama_model& model = synth_model();
  const int64_t last = model.config().layers - 1;
  check_finite_differences(model, {
                                      "lm_head",
                                      "model.layers.0.self_attn.q_proj",
                                      "model.layers.0.self_attn.k_proj",
                                      "model.layers.0.self_attn.v_proj",
                                      fmt::format("model.layers.{}.mlp.down_proj", last),
                                      fmt::format("model.layers.{}.mlp.gate_proj", last),
                                      fmt::format("model.layers.{}.self_attn.o_proj", last),
                                  });
}

// Llama 3 RoPE scaling: the golden's patched model over its 100 tokens, past the original 64
// positions; q_proj / k_proj gradients pass back through the rescaled rotation. Over 100 rows |Y|
// is ~3.5x that of 8, so eps 1e-3 makes steps large enough for the 4-point formula's truncation
// error to show (3e-2 along g in layer 0, random directions agree to 1e-6): eps 2e-4 instead.
TEST(llama_backward, llama3_rope_gradients_match_finite_differences) {
  const json rope = testing::read_golden("llama3_rope_logits.json");
  const testing::synth_dir d(synth_arch::llama);
  d.patch_config(rope.at("config_patch"));
  const llama_model model = llama_model::load(d.dir);
  ASSERT_TRUE(model.config().rope_llama3.has_value());
  const auto tokens = rope.at("tokens").get<std::vector<int32_t>>();
  EXPECT_NEAR(model.forward_backward(tokens).loss, mean_nll(model, tokens), 1e-9 * mean_nll(model, tokens));
  check_finite_differences(model,
                           {
                               "model.layers.0.self_attn.q_proj",
                               "model.layers.0.self_attn.k_proj",
                               "model.layers.1.self_attn.q_proj",
                               "model.layers.1.self_attn.k_proj",
                               "lm_head",
                           },
                           1e-3, tokens, 2e-4);
}

// One expert (its down and gate linears), the router and one q_proj of each MoE model.
constexpr double kRouterEps = 1e-2;
TEST(llama_backward, mixtral_output_gradients_match_finite_differences) {
  check_finite_differences(synth_model(synth_arch::mixtral), {
                                                                 "model.layers.0.block_sparse_moe.experts.1.w2",
                                                                 "model.layers.0.block_sparse_moe.experts.1.w1",
                                                                 "model.layers.0.block_sparse_moe.gate",
                                                                 "model.layers.1.block_sparse_moe.gate",
                                                                 "model.layers.1.self_attn.q_proj",
                                                             },
                           kRouterEps);
}

TEST(llama_backward, qwen3_moe_output_gradients_match_finite_differences) {
  check_finite_differences(synth_model(synth_arch::qwen3_moe), {
                                                                   "model.layers.2.mlp.experts.2.down_proj",
                                                                   "model.layers.2.mlp.experts.2.gate_proj",
                                                                   "model.layers.1.mlp.gate",
                                                                   "model.layers.2.mlp.gate",
                                                                   "model.layers.1.self_attn.q_proj",
                                                                   "model.layers.1.self_attn.k_proj",
                                                               },
                           kRouterEps);
}

}  // namespace
}  // namespace mixq
