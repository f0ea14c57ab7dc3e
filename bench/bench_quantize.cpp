// Quantize throughput per format and selector, in GB/s of BF16 input, next to memcpy of the same
// bytes measured in the same run with the same thread count (the yardstick: a quantizer reads its
// input at least once and writes ~1/4 of it, so memcpy bandwidth is the ceiling to compare with).
//
//   build/bench/bench_quantize                      # all threads and 1 thread
//   build/bench/bench_quantize --benchmark_filter=nvfp4
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <vector>

#include "kernels/cpu/quantize.hpp"
#include "pipeline/synth_weights.hpp"

namespace {

using namespace mixq;

constexpr int64_t kRows = 4096, kCols = 4096;

const synth_weight& weight() {
  static const synth_weight w = synth_make_weight("bench.weight", kRows, kCols, synth_distribution::heavy_tailed, 7);
  return w;
}

int64_t input_bytes() { return kRows * kCols * 2; }

void parallel_memcpy(std::byte* dst, const std::byte* src, int64_t n) {
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt, begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    std::memcpy(dst + begin, src + begin, size_t(end - begin));
  }
}

// Best-of-N memcpy bandwidth (bytes/s) at a thread count, cached.
double memcpy_bandwidth(int threads) {
  static std::map<int, double> cache;
  if (auto it = cache.find(threads); it != cache.end()) return it->second;
  omp_set_num_threads(threads);
  const auto* src = reinterpret_cast<const std::byte*>(weight().bf16.data());
  std::vector<std::byte> dst(static_cast<size_t>(input_bytes()));
  double best = 1e30;
  for (int i = 0; i < 20; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_memcpy(dst.data(), src, input_bytes());
    benchmark::DoNotOptimize(dst.data());
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return cache[threads] = double(input_bytes()) / best;
}

void report(benchmark::State& state, int threads) {
  state.SetBytesProcessed(state.iterations() * input_bytes());
  // (bytes / time) / memcpy bandwidth: the fraction of memcpy speed reached.
  state.counters["x_memcpy"] =
      benchmark::Counter(double(input_bytes()) / memcpy_bandwidth(threads), benchmark::Counter::kIsIterationInvariantRate);
}

cpu::source_matrix source() {
  const auto& w = weight();
  return {w.bf16.data(), cpu::source_dtype::bf16, w.rows, w.cols, w.name};
}

void BM_memcpy(benchmark::State& state) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  const auto* src = reinterpret_cast<const std::byte*>(weight().bf16.data());
  std::vector<std::byte> dst(static_cast<size_t>(input_bytes()));
  for (auto _ : state) {
    parallel_memcpy(dst.data(), src, input_bytes());
    benchmark::DoNotOptimize(dst.data());
  }
  report(state, threads);
}

void BM_nvfp4(benchmark::State& state, nvfp4_selector selector) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  nvfp4_options o;
  o.selector = selector;
  for (auto _ : state) benchmark::DoNotOptimize(cpu::nvfp4_quantize(source(), o));
  report(state, threads);
}

void BM_fp8(benchmark::State& state, fp8_granularity granularity, fp8_selector selector) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  fp8_options o;
  o.granularity = granularity;
  o.selector = selector;
  for (auto _ : state) benchmark::DoNotOptimize(cpu::fp8_quantize(source(), o));
  report(state, threads);
}

void BM_mx(benchmark::State& state, format_id format) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  for (auto _ : state) benchmark::DoNotOptimize(cpu::mx_quantize(source(), format));
  report(state, threads);
}

void BM_nf4(benchmark::State& state) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  for (auto _ : state) benchmark::DoNotOptimize(cpu::nf4_quantize(source()));
  report(state, threads);
}

void BM_nvfp4_dequantize(benchmark::State& state) {
  const int threads = int(state.range(0));
  memcpy_bandwidth(threads);
  omp_set_num_threads(threads);
  const nvfp4_weight q = cpu::nvfp4_quantize(source());
  std::vector<float> out(size_t(kRows * kCols));
  for (auto _ : state) {
    cpu::nvfp4_dequantize(q, out);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, threads);
}

void thread_counts(benchmark::internal::Benchmark* b) {
  const int all = omp_get_max_threads();
  b->Arg(1);
  if (all > 1) b->Arg(all);
  b->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_memcpy)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, max, nvfp4_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, four_over_six, nvfp4_selector::four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_fp8_sweep, nvfp4_selector::mse_fp8_sweep)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_multiplier, nvfp4_selector::mse_multiplier)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_four_over_six, nvfp4_selector::mse_four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_tensor_max, fp8_granularity::per_tensor, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_channel_max, fp8_granularity::per_channel, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_tensor_mse, fp8_granularity::per_tensor, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_mx, mxfp4, format_id::mxfp4)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_mx, mxfp8, format_id::mxfp8)->Apply(thread_counts);
BENCHMARK(BM_nf4)->Apply(thread_counts);
BENCHMARK(BM_nvfp4_dequantize)->Apply(thread_counts);
BENCHMARK_MAIN();
