#include "pipeline/eval/perplexity.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/row_math.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/model/layer_stream.hpp"

namespace mixq {

double nll_sum(const float* logits, const int32_t* targets, int64_t n, int64_t V) {
  double total = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const float* row = logits + t * V;  // [V]
    total += cpu::log_sum_exp(row, V) - double(row[targets[t]]);
  }
  return total;
}

perplexity_result evaluate_perplexity(causal_lm& model, std::span<const int32_t> tokens, int64_t ctx,
                                      const run_world& world, const layer_loaded& loaded) {
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
    std::vector<int64_t> mine;  // this process's windows that predict at least one token
    std::vector<std::span<const int32_t>> views;
    for (int64_t w = 0; w < n_windows; ++w) {
      const int64_t begin = w * ctx, len = std::min(ctx, N - begin);
      if (len < 2 || !world.takes(w)) continue;  // a lone trailing token predicts nothing
      mine.push_back(w);
      views.push_back(tokens.subspan(size_t(begin), size_t(len)));
    }
    layer_pass pass;
    pass.loaded = loaded;
    pass.logits = [&](int64_t i, std::vector<float>& logits) {  // [len, V]
      const int64_t w = mine[size_t(i)], len = int64_t(views[size_t(i)].size());
      window_nll[size_t(w)] = nll_sum(logits.data(), tokens.data() + w * ctx + 1, len - 1, V);
      window_predicted[size_t(w)] = len - 1;
    };
    run_layer_by_layer(model, views, pass);
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

std::string nonfinite_perplexity_message(const std::filesystem::path& model_dir, double ppl) {
  const std::optional<std::string> bad = checkpoint::open(model_dir).first_nonfinite();
  return fmt::format("{}: the model's own perplexity is {} (no quantization involved): {}", model_dir.string(), ppl,
                     bad ? *bad : "every stored value is finite, so its float32 forward pass overflows (a weight or "
                                  "an activation beyond float range)");
}

}  // namespace mixq
