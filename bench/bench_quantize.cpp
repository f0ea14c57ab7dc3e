// Quantize throughput per format and selector, in GB/s of BF16 input, next to memcpy of the same
// bytes with the same thread count (the yardstick: a quantizer reads its input at least once and
// writes ~1/4 of it, so memcpy bandwidth is the ceiling to compare with). Each timed run follows a
// memcpy timed the same way, so that both see the same machine (other work on it, clocks);
// x_memcpy is the ratio of their medians. The searches (MSE, four-over-six) also time their
// format's max path in each iteration: x_max is their median time over its.
// Two sizes: 4096 x 4096 (32 MiB of BF16, larger than this machine's L3: both passes — the global
// amax, then the blocks — stream from DRAM) and 1024 x 4096 (8 MiB, an expert-sized weight whose
// second pass is served from L3). Every timed run starts from cold caches.
//
//   build/bench/bench_quantize                      # 1 thread and all threads, both sizes
//   build/bench/bench_quantize --benchmark_filter=nvfp4
//   MIXQ_BENCH_SIMD=avx2 build/bench/bench_quantize   # the NVFP4 kernels' AVX2 (or baseline) form
//                                                     # (target-cloned loops keep the CPU's best)
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <map>
#include <vector>

#include "formats/activation_quant.hpp"
#include "formats/minifloat.hpp"
#include "kernels/cpu/fake_quant_activations.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cpu/simd_dispatch.hpp"
#include "pipeline/synth_weights.hpp"

namespace {

using namespace mixq;

constexpr int64_t kCols = 4096;

const synth_weight& weight(int64_t rows) {
  static std::map<int64_t, synth_weight> cache;
  auto it = cache.find(rows);
  if (it == cache.end())
    it = cache.emplace(rows, synth_make_weight("bench.weight", rows, kCols, synth_distribution::heavy_tailed, 7)).first;
  return it->second;
}

int64_t input_bytes(int64_t rows) { return rows * kCols * 2; }

// The weight converted value by value (convert(bf16 bits, index)), once per size.
template <class T, class Convert>
const std::vector<T>& converted_weight(int64_t rows, Convert convert) {
  static std::map<int64_t, std::vector<T>> cache;
  auto it = cache.find(rows);
  if (it == cache.end()) {
    const auto& w = weight(rows);
    std::vector<T> out(w.bf16.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = convert(w.bf16[i], i);
    it = cache.emplace(rows, std::move(out)).first;
  }
  return it->second;
}

uint32_t filler(size_t i) { return uint32_t(i * 2654435761u); }

// The same weight in F32 with its low 16 bits filled (values that are not BF16 values, as an F32
// checkpoint holds).
const std::vector<float>& weight_f32(int64_t rows) {
  return converted_weight<float>(rows, [](uint16_t b, size_t i) {
    return std::bit_cast<float>((uint32_t(b) << 16) | (filler(i) & 0xffffu));
  });
}

// The same weight in F16 with its 3 low mantissa bits filled (values that are not BF16 values, as
// an F16 checkpoint holds).
const std::vector<uint16_t>& weight_f16(int64_t rows) {
  return converted_weight<uint16_t>(rows, [](uint16_t b, size_t i) {
    return uint16_t(fp16_encode(bf16_decode(b)) | (filler(i) >> 13 & 7u));
  });
}

void parallel_memcpy(std::byte* dst, const std::byte* src, int64_t n) {
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt, begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    std::memcpy(dst + begin, src + begin, size_t(end - begin));
  }
}

struct bench_setup {
  int threads;
  int64_t rows;
};

bench_setup setup(benchmark::State& state) {
  const bench_setup s{int(state.range(0)), state.range(1)};
  omp_set_num_threads(s.threads);
  return s;
}

template <class Body>
double seconds_of(Body body) {
  const auto t0 = std::chrono::steady_clock::now();
  body();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Reads 64 MiB (twice this machine's L3) with the benchmark's threads: every timed run starts with
// the weight and the previous run's output out of cache (their dirty lines written back here, not
// during the next run).
void evict_caches() {
  static std::vector<uint64_t> junk(size_t(64) << 17, 1);
  uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (size_t i = 0; i < junk.size(); i += 8) sum += junk[i];
  benchmark::DoNotOptimize(sum);
}

// Runs body once per benchmark iteration, right after a memcpy of the same bytes (each from cold
// caches), and reports the body's time, its bandwidth and x_memcpy = (median memcpy time) /
// (median body time). A search also runs its format's max path (yardstick) in each iteration,
// after the memcpy, and reports x_max = (median body time) / (median max time): the searches'
// targets are ratios to max, and timing both side by side keeps the machine's drift out of them.
template <class Body, class Yardstick = std::nullptr_t>
void run_against_memcpy(benchmark::State& state, const bench_setup& s, Body body, int value_bytes = 2,
                        Yardstick yardstick = nullptr) {
  static std::vector<std::byte> dst;
  const int64_t bytes = input_bytes(s.rows) / 2 * value_bytes;
  dst.resize(size_t(bytes));
  const auto* src = value_bytes == 2 ? reinterpret_cast<const std::byte*>(weight(s.rows).bf16.data())
                                     : reinterpret_cast<const std::byte*>(weight_f32(s.rows).data());
  std::vector<double> copy, max, run;
  const auto cold = [&](auto timed) {
    state.PauseTiming();
    evict_caches();
    state.ResumeTiming();
    return seconds_of(timed);
  };
  for (auto _ : state) {
    copy.push_back(cold([&] {
      parallel_memcpy(dst.data(), src, bytes);
      benchmark::DoNotOptimize(dst.data());
    }));
    if constexpr (!std::is_same_v<Yardstick, std::nullptr_t>) max.push_back(cold(yardstick));
    run.push_back(cold(body));
    state.SetIterationTime(run.back());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["x_memcpy"] = median(copy) / median(run);
  if (!max.empty()) state.counters["x_max"] = median(run) / median(max);
}

cpu::source_matrix source(int64_t rows) {
  const auto& w = weight(rows);
  return {w.bf16.data(), cpu::source_dtype::bf16, w.rows, w.cols, w.name};
}

void BM_memcpy(benchmark::State& state) {
  const bench_setup s = setup(state);
  std::vector<std::byte> dst(static_cast<size_t>(input_bytes(s.rows)));
  const auto* src = reinterpret_cast<const std::byte*>(weight(s.rows).bf16.data());
  run_against_memcpy(state, s, [&] {
    parallel_memcpy(dst.data(), src, input_bytes(s.rows));
    benchmark::DoNotOptimize(dst.data());
  });
}

void BM_nvfp4(benchmark::State& state, nvfp4_selector selector) {
  const bench_setup s = setup(state);
  nvfp4_options o, max;
  o.selector = selector;
  const auto quantize = [&](const nvfp4_options& with) {
    return [&] { benchmark::DoNotOptimize(cpu::nvfp4_quantize(source(s.rows), with)); };
  };
  if (selector == nvfp4_selector::max) return run_against_memcpy(state, s, quantize(o));
  run_against_memcpy(state, s, quantize(o), 2, quantize(max));
}

void BM_fp8(benchmark::State& state, fp8_granularity granularity, fp8_selector selector) {
  const bench_setup s = setup(state);
  fp8_options o;
  o.granularity = granularity;
  o.selector = selector;
  fp8_options max = o;
  max.selector = fp8_selector::max;
  const auto quantize = [&](const fp8_options& with) {
    return [&] { benchmark::DoNotOptimize(cpu::fp8_quantize(source(s.rows), with)); };
  };
  if (selector == fp8_selector::max) return run_against_memcpy(state, s, quantize(o));
  run_against_memcpy(state, s, quantize(o), 2, quantize(max));
}

// The weight in F32 or F16 (values that are not BF16 values) and its input bytes per value.
cpu::source_matrix source_in(cpu::source_dtype dtype, int64_t rows) {
  const bool f32 = dtype == cpu::source_dtype::f32;
  const void* data = f32 ? static_cast<const void*>(weight_f32(rows).data()) : weight_f16(rows).data();
  return {data, dtype, rows, kCols, "bench.weight"};
}
int value_bytes(cpu::source_dtype dtype) { return dtype == cpu::source_dtype::f32 ? 4 : 2; }

// NVFP4 over the weight in F32 or F16.
void BM_nvfp4_in(benchmark::State& state, cpu::source_dtype dtype, nvfp4_selector selector) {
  const bench_setup s = setup(state);
  const cpu::source_matrix w = source_in(dtype, s.rows);
  nvfp4_options o, max;
  o.selector = selector;
  const auto quantize = [&](const nvfp4_options& with) {
    return [&] { benchmark::DoNotOptimize(cpu::nvfp4_quantize(w, with)); };
  };
  if (selector == nvfp4_selector::max) return run_against_memcpy(state, s, quantize(o), value_bytes(dtype));
  run_against_memcpy(state, s, quantize(o), value_bytes(dtype), quantize(max));
}

// FP8 over the weight in F32 or F16.
void BM_fp8_in(benchmark::State& state, cpu::source_dtype dtype, fp8_granularity granularity, fp8_selector selector) {
  const bench_setup s = setup(state);
  fp8_options o;
  o.granularity = granularity;
  o.selector = selector;
  const cpu::source_matrix w = source_in(dtype, s.rows);
  fp8_options max = o;
  max.selector = fp8_selector::max;
  const auto quantize = [&](const fp8_options& with) { return [&] { benchmark::DoNotOptimize(cpu::fp8_quantize(w, with)); }; };
  if (selector == fp8_selector::max) return run_against_memcpy(state, s, quantize(o), value_bytes(dtype));
  run_against_memcpy(state, s, quantize(o), value_bytes(dtype), quantize(max));
}

void BM_mx(benchmark::State& state, format_id format) {
  const bench_setup s = setup(state);
  run_against_memcpy(state, s, [&] { benchmark::DoNotOptimize(cpu::mx_quantize(source(s.rows), format)); });
}

void BM_nf4(benchmark::State& state) {
  const bench_setup s = setup(state);
  run_against_memcpy(state, s, [&] { benchmark::DoNotOptimize(cpu::nf4_quantize(source(s.rows))); });
}

void BM_nvfp4_dequantize(benchmark::State& state) {
  const bench_setup s = setup(state);
  const nvfp4_weight q = cpu::nvfp4_quantize(source(s.rows));
  std::vector<float> out(size_t(s.rows * kCols));
  run_against_memcpy(state, s, [&] {
    cpu::nvfp4_dequantize(q, out);
    benchmark::DoNotOptimize(out.data());
  });
}

// A quantized linear's input rounded as the runtime rounds it (F32 activations; GB/s of F32 input),
// the kernel or the scalar reference in formats/ (one thread whatever the count).
void BM_act(benchmark::State& state, format_id format, bool reference) {
  const bench_setup s = setup(state);
  const std::vector<float>& x = weight_f32(s.rows);
  std::vector<float> out(x.size());
  const float is = nvfp4_input_scale(8.0f);
  run_against_memcpy(
      state, s,
      [&] {
        if (format == format_id::nvfp4)
          reference ? nvfp4_fake_quant_activations(x, kCols, is, out) : cpu::nvfp4_fake_quant_activations(x, kCols, is, out);
        else
          reference ? fp8_fake_quant_activations(x, is, out) : cpu::fp8_fake_quant_activations(x, is, out);
        benchmark::DoNotOptimize(out.data());
      },
      4);
}

void thread_counts(benchmark::internal::Benchmark* b) {
  const int all = omp_get_max_threads();
  for (int64_t rows : {4096, 1024}) {
    b->Args({1, rows});
    if (all > 1) b->Args({all, rows});
  }
  b->ArgNames({"threads", "rows"})->Unit(benchmark::kMillisecond)->UseManualTime();
}

}  // namespace

BENCHMARK(BM_memcpy)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, max, nvfp4_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, four_over_six, nvfp4_selector::four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_fp8_sweep, nvfp4_selector::mse_fp8_sweep)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_multiplier, nvfp4_selector::mse_multiplier)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4, mse_four_over_six, nvfp4_selector::mse_four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f32_max, cpu::source_dtype::f32, nvfp4_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f32_four_over_six, cpu::source_dtype::f32, nvfp4_selector::four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f32_mse_fp8_sweep, cpu::source_dtype::f32, nvfp4_selector::mse_fp8_sweep)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f32_mse_multiplier, cpu::source_dtype::f32, nvfp4_selector::mse_multiplier)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f16_max, cpu::source_dtype::f16, nvfp4_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f16_four_over_six, cpu::source_dtype::f16, nvfp4_selector::four_over_six)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f16_mse_fp8_sweep, cpu::source_dtype::f16, nvfp4_selector::mse_fp8_sweep)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_nvfp4_in, f16_mse_multiplier, cpu::source_dtype::f16, nvfp4_selector::mse_multiplier)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_tensor_max, fp8_granularity::per_tensor, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_channel_max, fp8_granularity::per_channel, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_tensor_mse, fp8_granularity::per_tensor, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8, per_channel_mse, fp8_granularity::per_channel, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f32_per_tensor_max, cpu::source_dtype::f32, fp8_granularity::per_tensor, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f32_per_tensor_mse, cpu::source_dtype::f32, fp8_granularity::per_tensor, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f32_per_channel_max, cpu::source_dtype::f32, fp8_granularity::per_channel, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f32_per_channel_mse, cpu::source_dtype::f32, fp8_granularity::per_channel, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f16_per_tensor_max, cpu::source_dtype::f16, fp8_granularity::per_tensor, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f16_per_tensor_mse, cpu::source_dtype::f16, fp8_granularity::per_tensor, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f16_per_channel_max, cpu::source_dtype::f16, fp8_granularity::per_channel, fp8_selector::max)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_fp8_in, f16_per_channel_mse, cpu::source_dtype::f16, fp8_granularity::per_channel, fp8_selector::mse)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_mx, mxfp4, format_id::mxfp4)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_mx, mxfp8, format_id::mxfp8)->Apply(thread_counts);
BENCHMARK(BM_nf4)->Apply(thread_counts);
BENCHMARK(BM_nvfp4_dequantize)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_act, nvfp4, format_id::nvfp4, false)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_act, nvfp4_reference, format_id::nvfp4, true)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_act, fp8, format_id::fp8_per_tensor, false)->Apply(thread_counts);
BENCHMARK_CAPTURE(BM_act, fp8_reference, format_id::fp8_per_tensor, true)->Apply(thread_counts);
int main(int argc, char** argv) {
  if (const char* level = std::getenv("MIXQ_BENCH_SIMD")) {
    const std::string_view l = level;
    if (l != "avx2" && l != "baseline") {
      std::fprintf(stderr, "MIXQ_BENCH_SIMD=%s: expected avx2 or baseline\n", level);
      return 2;
    }
    mixq::cpu::limit_simd_level(l == "avx2" ? mixq::cpu::simd_level::avx2 : mixq::cpu::simd_level::baseline);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
