// What the model tests share: the golden files, the real checkpoints in ../shared (skipped when
// absent, a failure under CI=true), and tiny synthetic checkpoints in scratch directories.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/synth/synth_checkpoint.hpp"

namespace mixq::testing {

namespace fs = std::filesystem;

inline fs::path source_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return fs::path(src ? src : ".");
}

inline nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return nlohmann::json::parse(in);
}

inline nlohmann::json read_golden(const std::string& file) {
  return read_json(source_dir() / "tests" / "golden" / "data" / file);
}

inline bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// ../shared/models/<model> when it holds a checkpoint, found through MIXQ_SOURCE_DIR; else empty.
inline fs::path shared_model(const std::string& model) {
  if (!std::getenv("MIXQ_SOURCE_DIR")) return {};
  const fs::path dir = source_dir() / ".." / "shared" / "models" / model;
  return fs::exists(dir / "model.safetensors") ? dir : fs::path{};
}
inline fs::path shared_data(const std::string& file) { return source_dir() / ".." / "shared" / "data" / file; }

// Declares `var` = the shared model directory, or skips the test (fails it under CI=true).
#define MIXQ_REQUIRE_SHARED_MODEL(var, model)                                                           \
  const ::std::filesystem::path var = ::mixq::testing::shared_model(model);                              \
  if (var.empty()) {                                                                                     \
    if (::mixq::testing::on_ci()) FAIL() << "../shared/models/" model " is missing (CI needs ../shared)"; \
    GTEST_SKIP() << "../shared/models/" model " not found through MIXQ_SOURCE_DIR; skipping";            \
  }

// mixq synth --arch <arch> --preset tiny --seed 0 in a scratch directory, removed at scope end.
struct synth_dir {
  fs::path dir;
  explicit synth_dir(synth_arch arch) {
    dir = fs::temp_directory_path() / ("mixq-synth-" + std::string(to_string(arch)) + "-" + std::to_string(::getpid()));
    synth_options o;
    o.arch = arch;
    o.preset = synth_preset::tiny;
    o.seed = 0;
    o.out = dir;
    o.force = true;
    synth_checkpoint(o);
  }
  ~synth_dir() { fs::remove_all(dir); }
  synth_dir(const synth_dir&) = delete;
  synth_dir& operator=(const synth_dir&) = delete;

  // Rewrites config.json with `patch` merged in.
  void patch_config(const nlohmann::json& patch) const {
    nlohmann::json cfg = read_json(dir / "config.json");
    cfg.merge_patch(patch);
    std::ofstream(dir / "config.json") << cfg.dump(2);
  }
};

// d loss / d step at 0 by the five-point central difference (error O(h^4)).
template <class F>
double five_point_derivative(const F& loss_at, double h) {
  return (8 * (loss_at(h) - loss_at(-h)) - (loss_at(2 * h) - loss_at(-2 * h))) / (12 * h);
}

// Unit directions for a finite-difference check of a gradient g with norm gnorm: along g, and random.
inline std::pair<std::vector<double>, std::vector<double>> fd_directions(const std::vector<float>& g, double gnorm,
                                                                         std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> along(g.begin(), g.end()), random(g.size());
  for (double& x : along) x /= gnorm;
  double rnorm = 0.0;
  for (double& x : random) {
    x = normal(rng);
    rnorm += x * x;
  }
  for (double& x : random) x /= std::sqrt(rnorm);
  return {std::move(along), std::move(random)};
}

// <g, d>: the directional derivative the gradient predicts.
inline double directional(const std::vector<float>& g, const std::vector<double>& d) {
  double s = 0.0;
  for (size_t i = 0; i < g.size(); ++i) s += double(g[i]) * d[i];
  return s;
}

// max |a - b| / (1 + |ref|) over every logit of [T, V] logits against a golden [T][V].
// max |got - want| / max |want|: the error relative to the largest value.
inline double max_relative(std::span<const float> got, std::span<const float> want) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::abs(got[i] - want[i])));
    ref = std::max(ref, double(std::abs(want[i])));
  }
  return err / std::max(ref, 1e-30);
}

// Every module's dloss/dY in `dy` against a golden's "grads" (transformers' autograd): [T, out] rows,
// or [T_e, out] over a routed expert's tokens ([] when none is routed to it: a different row count
// means a different top-k choice). Each module must agree to grad_tol in max|a-b| / max|b|; the worst
// is returned, overall and by leaf name (in_proj, gate, up_proj, ...).
struct golden_grads_result {
  double worst = 0.0;
  std::string worst_name;
  std::map<std::string, double> worst_of_kind;
};
inline golden_grads_result compare_grads_to_golden(const std::map<std::string, std::vector<float>>& dy,
                                                   const nlohmann::json& grads, size_t T, double grad_tol) {
  golden_grads_result r;
  for (const auto& [name, rows] : grads.items()) {
    const auto it = dy.find(name);
    if (it == dy.end()) {
      ADD_FAILURE() << "no gradient for " << name;
      continue;
    }
    const std::vector<float>& g = it->second;
    const size_t n_rows = rows.size(), out = n_rows ? rows.at(0).size() : 0;
    if (name.find(".experts.") == std::string::npos) { EXPECT_EQ(n_rows, T) << name; }
    EXPECT_EQ(g.size(), n_rows * out) << name;
    if (g.size() != n_rows * out || n_rows == 0) continue;
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t t = 0; t < n_rows; ++t)
      for (size_t o = 0; o < out; ++o) {
        const double ref = rows[t][o].get<double>();
        max_diff = std::max(max_diff, std::fabs(double(g[t * out + o]) - ref));
        max_ref = std::max(max_ref, std::fabs(ref));
      }
    const double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    EXPECT_LT(rel, grad_tol) << name << ": max|a-b| " << max_diff << ", max|b| " << max_ref;
    if (rel > r.worst) r.worst_name = name;
    r.worst = std::max(r.worst, rel);
    double& w = r.worst_of_kind[name.substr(name.rfind('.') + 1)];
    w = std::max(w, rel);
  }
  return r;
}

inline double worst_logit_difference(const std::vector<float>& logits, const nlohmann::json& expect) {
  const size_t V = expect[0].size();
  double worst = 0;
  for (size_t t = 0; t < expect.size(); ++t)
    for (size_t v = 0; v < V; ++v) {
      const double ref = expect[t][v].get<double>();
      worst = std::max(worst, std::fabs(double(logits[t * V + v]) - ref) / (1.0 + std::fabs(ref)));
    }
  return worst;
}

}  // namespace mixq::testing
