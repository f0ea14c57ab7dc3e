#include "pipeline/eval/perplexity.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/row_math.hpp"

namespace mixq {

double nll_sum(const float* logits, const int32_t* targets, int64_t n, int64_t V) {
  double total = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const float* row = logits + t * V;  // [V]
    total += cpu::log_sum_exp(row, V) - double(row[targets[t]]);
  }
  return total;
}

perplexity_result evaluate_perplexity(const causal_lm& model, std::span<const int32_t> tokens, int64_t ctx,
                                      const run_world& world) {
  const int64_t max_ctx = model.max_positions();
  if (ctx > max_ctx)
    throw std::invalid_argument(fmt::format("perplexity: ctx {} is more than the model allows: max_position_embeddings "
                                            "is {} in {}",
                                            ctx, max_ctx, model.spec().origin));
  if (ctx < 2) throw std::invalid_argument(fmt::format("perplexity: ctx {} is too small: a window needs 2 tokens", ctx));
  const int64_t N = int64_t(tokens.size());
  const int64_t V = model.vocab();
  const int64_t n_windows = (N + ctx - 1) / ctx;
  std::vector<double> window_nll(size_t(n_windows), 0.0);
  std::vector<int64_t> window_predicted(size_t(n_windows), 0);

  const auto start = std::chrono::steady_clock::now();
  world.stage([&] {
    // Exceptions must not leave an OpenMP region: keep the first message and rethrow after it.
    std::string error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_windows; ++w) {
      const int64_t begin = w * ctx, len = std::min(ctx, N - begin);
      if (len < 2 || !world.takes(w)) continue;  // a lone trailing token predicts nothing
      try {
        const std::vector<float> logits = model.forward(tokens.subspan(size_t(begin), size_t(len)));  // [len, V]
        window_nll[size_t(w)] = nll_sum(logits.data(), tokens.data() + begin + 1, len - 1, V);
        window_predicted[size_t(w)] = len - 1;
      } catch (const std::exception& e) {
#pragma omp critical(mixq_perplexity_error)
        if (error.empty()) error = e.what();
      }
    }
    if (!error.empty()) throw std::runtime_error(error);
  });
  if (world.size() > 1)  // every window's sums from the process that took it
    world.share_items(
        n_windows,
        [&](int64_t w) {
          std::string bytes(sizeof(double) + sizeof(int64_t), '\0');
          std::memcpy(bytes.data(), &window_nll[size_t(w)], sizeof(double));
          std::memcpy(bytes.data() + sizeof(double), &window_predicted[size_t(w)], sizeof(int64_t));
          return bytes;
        },
        [&](int64_t w, std::string bytes) {
          std::memcpy(&window_nll[size_t(w)], bytes.data(), sizeof(double));
          std::memcpy(&window_predicted[size_t(w)], bytes.data() + sizeof(double), sizeof(int64_t));
        });

  perplexity_result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens = N;
  double total = 0.0;
  for (int64_t w = 0; w < n_windows; ++w) {
    total += window_nll[size_t(w)];
    r.predicted += window_predicted[size_t(w)];
    r.windows += window_predicted[size_t(w)] > 0 ? 1 : 0;
  }
  if (r.predicted == 0) throw std::invalid_argument(fmt::format("perplexity: {} tokens predict nothing", N));
  r.mean_nll = total / double(r.predicted);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

}  // namespace mixq
