// nemotron_h_model::forward_backward: the loss and dloss/dY at every linear's output against
// transformers' autograd (tests/golden/make_nemotron_h_grad_goldens.py), the loss against the forward
// pass's own NLL, each Mamba-2 backward op against central finite differences, and dloss/dY at single
// modules against finite differences of the whole model through the linear-output hook (synthetic
// tiny and nemotron-h-tiny).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/eval/perplexity.hpp"
#include "kernels/cpu/ssd_scan.hpp"
#include "pipeline/model/nemotron_h.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

using json = nlohmann::json;
using testing::synth_dir;

// ---- against transformers ---------------------------------------------------------------------

constexpr double kLossTol = 1e-5;  // relative
// max|a - b| / max|b| per module. Measured: 2.5e-6 (synthetic, an out_proj) and 5.9e-6
// (nemotron-h-tiny, a routed expert's down_proj); loss 2.4e-8 and 9e-8. Small backward errors show
// at 2e-4 and up: dt's gradient let through the active clamp gives 2.3e-4, the softplus slope off by
// 0.1% 2.5e-4 / 8.2e-4, the router's top-k renormalization term left out 0.58 / 0.94.
constexpr double kGradTol = 5e-5;

// Every module's dloss/dY against the golden; the worst relative difference is printed and recorded.
void compare_to_golden(const nemotron_h_model& model, const json& want) {
  const auto tokens = want.at("tokens").get<std::vector<int32_t>>();
  const llama_grads got = model.forward_backward(tokens);
  const double ref_loss = want.at("loss").get<double>();
  EXPECT_LT(std::fabs(got.loss - ref_loss) / std::fabs(ref_loss), kLossTol) << got.loss << " vs " << ref_loss;
  const json& grads = want.at("grads");
  EXPECT_EQ(got.dy.size(), grads.size()) << "modules with a gradient";
  const auto [worst, worst_name, worst_of_kind] =
      testing::compare_grads_to_golden(got.dy, grads, tokens.size(), kGradTol);
  std::cout << fmt::format("  loss {:.9g} (transformers {:.9g}, rel {:.2g}); worst dY max|a-b|/max|b| {:.3g} ({})\n",
                           got.loss, ref_loss, std::fabs(got.loss - ref_loss) / std::fabs(ref_loss), worst, worst_name);
  for (const auto& [kind, w] : worst_of_kind) std::cout << fmt::format("    {:18} {:.3g}\n", kind, w);
  ::testing::Test::RecordProperty("worst_rel", fmt::format("{:.3g}", worst));
}

// Every block kind; transformers clamps dt at time_step_min (1e-3 here), which the golden's tokens
// hit (dt_clamped > 0): mixq is told the same clamp, so the zero gradient behind it is compared too.
TEST(nemotron_h_backward, synth_tiny_matches_transformers) {
  const json want = testing::read_golden("synth_nemotron_h_tiny_grads.json");
  EXPECT_GT(want.at("dt_clamped").get<int>(), 0);
  const synth_dir d(synth_arch::nemotron_h);
  const json min_dt = testing::read_json(d.dir / "config.json").at("time_step_min");
  d.patch_config({{"time_step_limit", {min_dt, nullptr}}});
  compare_to_golden(nemotron_h_model::load(d.dir), want);
}

// The trained model, unpatched: its time_step_min (1e-6) clamps no step of these tokens.
TEST(nemotron_h_backward, tiny_matches_transformers) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  const json want = testing::read_golden("nemotron_h_tiny_grads.json");
  EXPECT_EQ(want.at("dt_clamped").get<int>(), 0);
  compare_to_golden(nemotron_h_model::load(dir), want);
}

std::vector<float> random_vector(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// The 4-point central difference of loss() in every element of `in`, against the analytic gradient
// `grad` (same layout); returns max|fd - grad| / max|grad| over the elements `used` selects. The
// step is absolute: the op inputs are O(1), and the loss sums dout * out in double, so only the
// outputs an element touches change and their fp32 rounding stays far below h * |grad|.
double worst_fd_error(std::vector<float>& in, const std::vector<float>& grad, const std::function<double()>& loss,
                      const std::function<bool(size_t)>& used, float h = 1e-2f) {
  double max_diff = 0.0, max_grad = 0.0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (!used(i)) continue;
    const float x0 = in[i];
    const auto at = [&](float step) {
      in[i] = x0 + step;
      return loss();
    };
    const double fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * double(h));
    in[i] = x0;
    max_diff = std::max(max_diff, std::fabs(fd - double(grad[i])));
    max_grad = std::max(max_grad, std::fabs(double(grad[i])));
  }
  EXPECT_GT(max_grad, 0.0);
  return max_diff / max_grad;
}

double weighted_sum(const std::vector<float>& out, const std::vector<float>& dout) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += double(out[i]) * double(dout[i]);
  return s;
}

constexpr double kOpFdTol = 1e-3;  // max|fd - analytic| / max|analytic| per input tensor

TEST(nemotron_h_backward, ssd_scan_matches_finite_differences) {
  const int64_t T = 7, Hm = 4, P = 3, G = 2, N = 5, I = Hm * P, CD = I + 2 * G * N;
  std::mt19937 rng(1);
  std::vector<float> xbc = random_vector(rng, size_t(T * CD), -1.0f, 1.0f);  // [x | B | C] rows
  std::vector<float> dt = random_vector(rng, size_t(T * Hm), 0.05f, 1.0f);
  const std::vector<float> A = random_vector(rng, size_t(Hm), -1.5f, -0.1f);
  const std::vector<float> D = random_vector(rng, size_t(Hm), -1.0f, 1.0f);
  const std::vector<float> dy = random_vector(rng, size_t(T * I), -1.0f, 1.0f);
  const auto loss = [&] {
    std::vector<float> y(size_t(T * I));
    cpu::ssd_scan_forward(y.data(), xbc.data(), xbc.data() + I, xbc.data() + I + G * N, CD, dt.data(), A.data(), D.data(),
                     T, Hm, P, G, N);
    return weighted_sum(y, dy);
  };
  std::vector<float> dxbc(size_t(T * CD), 0.0f), ddt(size_t(T * Hm), 0.0f);
  cpu::ssd_scan_backward(dxbc.data(), dxbc.data() + I, dxbc.data() + I + G * N, ddt.data(), dy.data(), xbc.data(),
                    xbc.data() + I, xbc.data() + I + G * N, CD, dt.data(), A.data(), D.data(), T, Hm, P, G, N);
  const auto column = [&](int64_t lo, int64_t hi) {
    return [=](size_t i) { return int64_t(i) % CD >= lo && int64_t(i) % CD < hi; };
  };
  const double ex = worst_fd_error(xbc, dxbc, loss, column(0, I));
  const double eB = worst_fd_error(xbc, dxbc, loss, column(I, I + G * N));
  const double eC = worst_fd_error(xbc, dxbc, loss, column(I + G * N, CD));
  const double edt = worst_fd_error(dt, ddt, loss, [](size_t) { return true; });
  std::cout << fmt::format("  ssd_scan: x {:.2e}  B {:.2e}  C {:.2e}  dt {:.2e}\n", ex, eB, eC, edt);
  EXPECT_LT(ex, kOpFdTol);
  EXPECT_LT(eB, kOpFdTol);
  EXPECT_LT(eC, kOpFdTol);
  EXPECT_LT(edt, kOpFdTol);
}

TEST(nemotron_h_backward, causal_conv1d_matches_finite_differences) {
  const int64_t T = 6, C = 5, K = 4, stride = C + 3, offset = 1;  // x inside wider rows, as xBC in in_proj's output
  std::mt19937 rng(2);
  std::vector<float> x = random_vector(rng, size_t(T * stride), -1.5f, 1.5f);
  const std::vector<float> w = random_vector(rng, size_t(C * K), -1.0f, 1.0f);
  const std::vector<float> b = random_vector(rng, size_t(C), -0.5f, 0.5f);
  const std::vector<float> dout = random_vector(rng, size_t(T * C), -1.0f, 1.0f);
  for (const float* bias : {b.data(), static_cast<const float*>(nullptr)}) {
    const auto loss = [&] {
      std::vector<float> out(size_t(T * C));
      causal_conv1d_forward(out.data(), x.data() + offset, stride, w.data(), bias, T, C, K);
      return weighted_sum(out, dout);
    };
    std::vector<float> dx(size_t(T * stride), 0.0f);
    causal_conv1d_backward(dx.data() + offset, stride, dout.data(), x.data() + offset, stride, w.data(), bias, T, C,
                           K);
    const double e = worst_fd_error(x, dx, loss, [&](size_t i) {
      const int64_t col = int64_t(i) % stride;
      return col >= offset && col < offset + C;
    });
    std::cout << fmt::format("  causal_conv1d ({} bias): x {:.2e}\n", bias ? "with" : "no", e);
    EXPECT_LT(e, kOpFdTol);
    for (size_t i = 0; i < dx.size(); ++i)  // nothing outside the C channels is touched
      if (int64_t(i) % stride < offset || int64_t(i) % stride >= offset + C) {
        EXPECT_EQ(dx[i], 0.0f);
      }
  }
}

TEST(nemotron_h_backward, gated_rmsnorm_matches_finite_differences) {
  const int64_t T = 4, I = 12, G = 3, zs = I + 2;
  const float eps = 1e-5f;
  std::mt19937 rng(3);
  std::vector<float> y = random_vector(rng, size_t(T * I), -1.5f, 1.5f);
  std::vector<float> z = random_vector(rng, size_t(T * zs), -2.0f, 2.0f);
  const std::vector<float> weight = random_vector(rng, size_t(I), 0.5f, 1.5f);
  const std::vector<float> dout = random_vector(rng, size_t(T * I), -1.0f, 1.0f);
  const auto loss = [&] {
    std::vector<float> out(size_t(T * I));
    gated_rmsnorm_forward(out.data(), y.data(), z.data(), zs, weight.data(), T, I, G, eps);
    return weighted_sum(out, dout);
  };
  std::vector<float> dy(size_t(T * I)), dz(size_t(T * zs), 0.0f);
  gated_rmsnorm_backward(dy.data(), dz.data(), zs, dout.data(), y.data(), z.data(), zs, weight.data(), T, I, G, eps);
  const double ey = worst_fd_error(y, dy, loss, [](size_t) { return true; });
  const double ez = worst_fd_error(z, dz, loss, [&](size_t i) { return int64_t(i) % zs < I; });
  std::cout << fmt::format("  gated_rmsnorm: y {:.2e}  z {:.2e}\n", ey, ez);
  EXPECT_LT(ey, kOpFdTol);
  EXPECT_LT(ez, kOpFdTol);
}

// ---- the whole model -------------------------------------------------------------------------

std::vector<int32_t> test_tokens(int64_t vocab, size_t n = 24) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(0, int32_t(vocab - 1));
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = id(rng);
  return t;
}

double mean_nll(const nemotron_h_model& model, const std::vector<int32_t>& tokens, const linear_output_hook& hook = {}) {
  const std::vector<float> logits = model.forward(tokens, hook);
  const int64_t n = int64_t(tokens.size()) - 1;
  return nll_sum(logits.data(), tokens.data() + 1, n, model.vocab()) / double(n);
}

void check_loss_and_modules(const nemotron_h_model& model, const std::vector<int32_t>& tokens) {
  const double want = mean_nll(model, tokens);
  const llama_grads g = model.forward_backward(tokens);
  EXPECT_NEAR(g.loss, want, 1e-6 * want);
  // one dY per linear of the forward pass (the MTP head's excluded) and lm_head
  size_t linears = 0;
  bool lm_head_listed = false;
  for (const linear_spec& l : model.spec().linears) {
    if (l.role == linear_role::lm_head)
      lm_head_listed = true;
    else
      linears += !model.spec().blocks.at(size_t(l.block)).mtp;
  }
  EXPECT_EQ(g.dy.size(), linears + 1);
  EXPECT_TRUE(g.dy.count("lm_head") || lm_head_listed);
  EXPECT_THROW(model.forward_backward(std::vector<int32_t>{1}), std::invalid_argument);
}

TEST(nemotron_h_backward, loss_equals_forward_mean_nll) {
  const synth_dir d(synth_arch::nemotron_h);
  const nemotron_h_model model = nemotron_h_model::load(d.dir);
  check_loss_and_modules(model, test_tokens(model.vocab()));
}

// The first module whose name ends with `suffix` and whose dY is not empty.
std::string find_module(const llama_grads& g, const std::string& suffix) {
  for (const auto& [name, dy] : g.dy)
    if (name.ends_with(suffix) && !dy.empty()) return name;
  ADD_FAILURE() << "no module *" << suffix;
  return {};
}

// Which expert ran on how many tokens, in hook order: the routing of one forward pass.
using routing = std::vector<std::pair<std::string, int64_t>>;

// As test_llama_backward.cpp: the 4-point central difference of the loss with Y + h d at one
// module's output Y, against <g, d>, for d = g / |g| and a random unit direction, the step
// h = eps * max(1, |Y|); the error relative to |g|. The top-k choice is piecewise constant and a
// perturbation upstream of a MoE block can flip it, which makes the loss jump: the step is halved
// until all four perturbed passes route every token as the unperturbed one does.
void check_finite_differences(const nemotron_h_model& model, const std::vector<int32_t>& tokens,
                              const std::vector<std::string>& suffixes, double eps, double tol) {
  const llama_grads grads = model.forward_backward(tokens);
  std::mt19937 rng(7);
  double worst = 0.0;
  for (const std::string& suffix : suffixes) {
    const std::string name = find_module(grads, suffix);
    if (name.empty()) continue;
    const std::vector<float>& g = grads.dy.at(name);
    double gnorm = 0.0;
    for (const float x : g) gnorm += double(x) * double(x);
    gnorm = std::sqrt(gnorm);
    ASSERT_GT(gnorm, 0.0) << name;
    double ynorm = 0.0;
    routing base;
    const double loss0 = mean_nll(model, tokens, [&](const std::string& m, float* y, int64_t T, int64_t out) {
      if (m.find(".experts.") != std::string::npos) base.emplace_back(m, T);
      if (m == name)
        for (int64_t i = 0; i < T * out; ++i) ynorm += double(y[i]) * double(y[i]);
    });
    const auto [along, random] = testing::fd_directions(g, gnorm, rng);
    for (const std::vector<double>* d : {&along, &random}) {
      bool same_routing = true;
      const auto loss_at = [&](double step) {
        routing r;
        const double loss = mean_nll(model, tokens, [&](const std::string& m, float* y, int64_t T, int64_t out) {
          if (m.find(".experts.") != std::string::npos) r.emplace_back(m, T);
          if (m != name) return;
          ASSERT_EQ(size_t(T * out), d->size()) << name;
          for (int64_t i = 0; i < T * out; ++i) y[i] += float(step * (*d)[size_t(i)]);
        });
        same_routing = same_routing && r == base;
        return loss;
      };
      double h = eps * std::max(1.0, std::sqrt(ynorm)), fd = 0.0;
      for (int halvings = 0; halvings < 8; ++halvings, h /= 2) {
        same_routing = true;
        fd = testing::five_point_derivative(loss_at, h);
        if (same_routing) break;
      }
      EXPECT_TRUE(same_routing) << name << ": every step flips a top-k choice";
      const double analytic = testing::directional(g, *d);
      const double rel = std::fabs(fd - analytic) / gnorm;
      worst = std::max(worst, rel);
      // The float forward rounds the loss by ~2^-24 of itself; the stencil (weights 1, 8, 8, 1 over 12h)
      // turns that into 1.5 · that / h of derivative noise, which a step halved for routing can lift
      // above tol: allow it.
      const double noise = 1.5 * std::ldexp(std::fabs(loss0), -24) / h / gnorm;
      std::cout << fmt::format("  {:48} {:6} |g| {:.4e} step {:.2e}  fd {:+.6e}  <g,d> {:+.6e}  rel {:.2e}\n",
                               name, d == &along ? "along" : "random", gnorm, h, fd, analytic, rel);
      EXPECT_LT(rel, tol + noise) << name;
    }
  }
  ::testing::Test::RecordProperty("worst_fd_rel", fmt::format("{:.3g}", worst));
}

// eps = 1e-4: the Mamba-2 mixers (dt through exp(dt A), relu2 kinks downstream) curve enough that
// 1e-3 steps along g leave a few percent of truncation error; at 1e-4 the fp32 noise of the loss is
// still well below the change.
constexpr double kFdEps = 1e-4;
const std::vector<std::string> kFdModules = {
    ".mixer.in_proj",          ".mixer.out_proj", ".experts.0.up_proj", ".shared_experts.down_proj",
    ".mixer.fc1_latent_proj",  ".mixer.gate",     ".mixer.q_proj",      "lm_head",
};

TEST(nemotron_h_backward, synth_output_gradients_match_finite_differences) {
  const synth_dir d(synth_arch::nemotron_h);
  const nemotron_h_model model = nemotron_h_model::load(d.dir);
  check_finite_differences(model, test_tokens(model.vocab()), kFdModules, kFdEps, 5e-3);
}

// With time_step_limit set, dt is clamped where softplus leaves [dt_min, dt_max]: no gradient
// flows there (a lower bound of 0.1, or an upper one of 0.02, clamps part of the synthetic model's
// steps, whose dt lie in [1e-3, 1e-1]). At 0.02, mid-range, many steps sit near the kink, and a
// step of eps 1e-4 along g carries some across it (7e-3 error; 1.7e-3 at eps 1e-5).
TEST(nemotron_h_backward, synth_dt_clamp_gradients_match_finite_differences) {
  for (const auto& [limit, eps] : {std::pair{nlohmann::json{0.1, nullptr}, kFdEps},
                                   std::pair{nlohmann::json{0.0, 0.02}, 1e-5}}) {
    const synth_dir d(synth_arch::nemotron_h);
    d.patch_config({{"time_step_limit", limit}});
    const nemotron_h_model model = nemotron_h_model::load(d.dir);
    check_finite_differences(model, test_tokens(model.vocab()), {".mixer.in_proj", ".mixer.out_proj"}, eps, 5e-3);
  }
}

TEST(nemotron_h_backward, tiny_output_gradients_match_finite_differences) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  const nemotron_h_model model = nemotron_h_model::load(dir);
  const std::vector<int32_t> tokens = test_tokens(model.vocab());
  check_loss_and_modules(model, tokens);
  check_finite_differences(model, tokens, kFdModules, kFdEps, 1e-2);
}

}  // namespace
}  // namespace mixq
