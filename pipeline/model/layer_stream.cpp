#include "pipeline/model/layer_stream.hpp"

#include <mutex>

#include <omp.h>

#include "pipeline/parallel/first_error.hpp"

namespace mixq {

void run_layer_by_layer(causal_lm& model, std::span<const std::span<const int32_t>> sequences, const layer_pass& pass) {
  const int64_t n = int64_t(sequences.size()), L = model.layer_count();
  bool holds_all = true;
  for (int64_t l = 0; l < L && holds_all; ++l) holds_all = model.holds_layer(l);
  const auto hooks_of = [&](int64_t i) { return pass.hooks ? pass.hooks(i) : forward_hooks{}; };
  int64_t done = 0;
  std::mutex progress_mutex;
  const auto step = [&](int64_t total) {
    const std::lock_guard<std::mutex> lock(progress_mutex);
    if (pass.progress) pass.progress(++done, total);
  };
  first_error error;
  if (holds_all) {  // each sequence through every layer: no layer-wide steps to wait for
    for (int64_t l = 0; l < L; ++l)
      if (pass.loaded) pass.loaded(model, l);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i)
      if (!error.failed())
        error.run([&] {
          const forward_hooks hooks = hooks_of(i);
          const int64_t T = int64_t(sequences[size_t(i)].size());
          std::vector<float> h = model.embed(sequences[size_t(i)]);
          for (int64_t l = 0; l < L; ++l) model.layer_forward(l, h.data(), T, hooks);
          std::vector<float> logits = model.head(h.data(), T, hooks);
          pass.logits(i, logits);
          step(n);
        });
    error.rethrow();
    return;
  }
  std::vector<std::vector<float>> h(static_cast<size_t>(n));  // each sequence's residual stream [T, H]
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) error.run([&] { h[size_t(i)] = model.embed(sequences[size_t(i)]); });
  error.rethrow();
  for (int64_t l = 0; l < L; ++l) {
    const layer_loan here(model, l);
    if (pass.loaded) pass.loaded(model, l);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i)
      if (!error.failed())
        error.run([&] { model.layer_forward(l, h[size_t(i)].data(), int64_t(sequences[size_t(i)].size()), hooks_of(i)); });
    error.rethrow();
    step(L + 1);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i)
    if (!error.failed())
      error.run([&] {
        std::vector<float> logits = model.head(h[size_t(i)].data(), int64_t(sequences[size_t(i)].size()), hooks_of(i));
        h[size_t(i)] = {};
        pass.logits(i, logits);
      });
  error.rethrow();
  step(L + 1);
}

}  // namespace mixq
