#include "pipeline/model/layer_stream.hpp"

#include <algorithm>
#include <exception>
#include <mutex>

#include <omp.h>

namespace mixq {

namespace {

// The first exception thrown inside an OpenMP loop (they must not leave it), rethrown after it.
class first_error {
 public:
  template <class F>
  void run(F&& f) {
    try {
      f();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  bool failed() const { return error_ != nullptr; }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

// Drops, on every way out, the layer a pass loaded itself.
struct loaded_layer {
  causal_lm& model;
  int64_t layer;
  bool dropping;
  ~loaded_layer() {
    if (dropping) model.drop_layer(layer);
  }
};

}  // namespace

void run_layer_by_layer(causal_lm& model, std::span<const std::span<const int32_t>> sequences, const layer_pass& pass) {
  const int64_t n = int64_t(sequences.size()), L = model.layer_count();
  bool holds_all = true;
  for (int64_t l = 0; l < L && holds_all; ++l) holds_all = model.holds_layer(l);
  const int64_t group = holds_all ? std::max<int64_t>(1, omp_get_max_threads()) : std::max<int64_t>(1, n);
  const int64_t groups = (n + group - 1) / group, total = groups * (L + 1);
  const auto hooks_of = [&](int64_t i) { return pass.hooks ? pass.hooks(i) : forward_hooks{}; };
  int64_t done = 0;
  const auto step = [&] {
    if (pass.progress) pass.progress(++done, total);
  };
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const int64_t g1 = std::min(n, g0 + group);
    std::vector<std::vector<float>> h(size_t(g1 - g0));  // each sequence's residual stream [T, H]
    first_error error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = g0; i < g1; ++i) error.run([&] { h[size_t(i - g0)] = model.embed(sequences[size_t(i)]); });
    error.rethrow();
    for (int64_t l = 0; l < L; ++l) {
      const loaded_layer here{model, l, !model.holds_layer(l)};
      model.load_layer(l);
      if (pass.loaded) pass.loaded(model, l);
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t i = g0; i < g1; ++i)
        if (!error.failed())
          error.run([&] {
            const int64_t T = int64_t(sequences[size_t(i)].size());
            model.layer_forward(l, h[size_t(i - g0)].data(), T, hooks_of(i));
          });
      error.rethrow();
      step();
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = g0; i < g1; ++i)
      if (!error.failed())
        error.run([&] {
          std::vector<float>& hi = h[size_t(i - g0)];
          std::vector<float> logits = model.head(hi.data(), int64_t(sequences[size_t(i)].size()), hooks_of(i));
          hi = {};
          pass.logits(i, logits);
        });
    error.rethrow();
    step();
  }
}

}  // namespace mixq
