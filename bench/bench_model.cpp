// Forward and forward+backward speed of a checkpoint, next to the machine's GEMM peak measured in
// the same run (OpenBLAS sgemm on 2048^3, the same threads): tokens/s, the linears' share of the
// FLOPs and their achieved fraction of that peak, and the process's peak resident memory.
// Windows run as mixq's evaluation and calibration run them: in parallel over the threads, each on
// one thread (--sequential: one after another, each using all threads inside its operators). With
// one thread the two are the same. bench/model_vs_pytorch.py puts PyTorch beside it.
//
//   OMP_NUM_THREADS=1 build/bench/bench_model --model ../shared/models/stories260K \
//       --data ../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin --ctx 512 --windows 16
// Prints one JSON object.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include <omp.h>

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "pipeline/model/allocator_tuning.hpp"
#include "calib/builtin_calibration.hpp"
#include "calib/text_tokenizer.hpp"
#include "pipeline/model/llama.hpp"

using namespace mixq;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // KiB on Linux
}

// The best of a few sgemm runs on square matrices, GFLOP/s: the yardstick for the linears.
double gemm_peak_gflops(int64_t n) {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const matrix a = matrix::Random(n, n), b = matrix::Random(n, n);
  matrix c(n, n);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = clock_type::now();
    c.noalias() = a * b;
    best = std::min(best, seconds_since(start));
  }
  return 2.0 * double(n) * double(n) * double(n) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  mixq::keep_buffers_in_heap();
  CLI::App app{"Forward / forward+backward speed of a checkpoint against the machine's GEMM peak"};
  std::filesystem::path model_dir, data;
  int64_t ctx = 512, windows = 8, gemm_n = 2048;
  bool recompute = false, sequential = false;
  app.add_option("--model", model_dir, "Hugging Face checkpoint directory")->required();
  app.add_option("--data", data, "token file (.bin / .txt / .jsonl); default: the built-in calibration text");
  app.add_option("--ctx", ctx, "tokens per window");
  app.add_option("--windows", windows, "windows per measurement");
  app.add_option("--gemm-n", gemm_n, "size of the square sgemm that measures the peak");
  app.add_flag("--recompute", recompute, "backward recomputes each block instead of keeping its activations");
  app.add_flag("--sequential", sequential, "windows one after another, threads inside the operators");
  CLI11_PARSE(app, argc, argv);

  try {
    const auto model = load_causal_lm(model_dir);
    std::vector<int32_t> tokens = data.empty() ? builtin_calibration_tokens(model_dir, model->vocab())
                                               : read_token_stream(data, model_dir, model->vocab());
    ctx = std::min(ctx, model->max_positions());
    if (tokens.empty()) throw std::invalid_argument("no tokens to run");
    for (const std::vector<int32_t> once = tokens; int64_t(tokens.size()) < ctx * windows;)
      tokens.insert(tokens.end(), once.begin(), once.end());
    const auto window = [&](int64_t w) { return std::span<const int32_t>(tokens).subspan(size_t(w * ctx), size_t(ctx)); };

    // FLOPs in the linears, from their input / output shapes as the forward reports them (routed
    // experts counted for the tokens they get).
    std::map<std::string, int64_t> in_features;
    double linear_flops = 0.0;
    forward_hooks count;
    count.input = [&](const std::string& name, const float*, int64_t, int64_t in) { in_features[name] = in; };
    count.output = [&](const std::string& name, float*, int64_t T, int64_t out) {
      linear_flops += 2.0 * double(T) * double(in_features.at(name)) * double(out);
    };
    for (int64_t w = 0; w < windows; ++w) model->forward(window(w), count);
    model->forward(window(0));  // warm-up

    // every window, in parallel (one thread each) or one after another
    const auto each_window = [&](const auto& run) {
      const auto start = clock_type::now();
      if (sequential) {
        for (int64_t w = 0; w < windows; ++w) run(w);
      } else {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t w = 0; w < windows; ++w) run(w);
      }
      return seconds_since(start);
    };
    const double fwd_s = each_window([&](int64_t w) { model->forward(window(w)); });
    const double fwd_rss = peak_rss_mib();

    const activation_memory memory = recompute ? activation_memory::recompute : activation_memory::keep;
    model->forward_backward(window(0), {}, memory);  // warm-up
    const double fwd_bwd_s = each_window([&](int64_t w) { model->forward_backward(window(w), {}, memory); });

    const double peak = gemm_peak_gflops(gemm_n);
    const double tokens_run = double(ctx * windows);
    // The backward of a linear is one GEMM of the forward's size (dX = dY W; no weight gradients).
    nlohmann::json out = {
        {"model", model_dir.string()},
        {"threads", omp_get_max_threads()},
        {"ctx", ctx},
        {"windows", windows},
        {"activation_memory", recompute ? "recompute" : "keep"},
        {"windows_in_parallel", !sequential},
        {"forward_tokens_per_s", tokens_run / fwd_s},
        {"forward_backward_tokens_per_s", tokens_run / fwd_bwd_s},
        {"gemm_peak_gflops", peak},
        {"forward_linear_gflops", linear_flops / fwd_s / 1e9},
        {"forward_linear_fraction_of_peak", linear_flops / fwd_s / 1e9 / peak},
        {"forward_backward_linear_fraction_of_peak", 2.0 * linear_flops / fwd_bwd_s / 1e9 / peak},
        {"peak_rss_mib_forward", fwd_rss},
        {"peak_rss_mib", peak_rss_mib()},
    };
    std::puts(out.dump(2).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
