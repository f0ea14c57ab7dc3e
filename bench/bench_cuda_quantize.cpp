// GPU weight quantization throughput: NVFP4 (every selector) and FP8 (per tensor and per channel,
// max / mse) on an 8192 x 8192 BF16 weight resident on the device, and the dequantizers back to fp32,
// in GB/s of the weight's BF16 bytes (GB = 1e9 bytes), next to a device-to-device cudaMemcpy of the
// same 128 MiB. Times are GPU times (CUDA events around one whole call: for a quantizer the amax /
// non-finite scan, the host sync that reads it, the kernels). Skips with an error when no CUDA device
// is present.
//
//   bench_cuda_quantize --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "formats/minifloat.hpp"
#include "kernels/cuda/dequantize.hpp"
#include "kernels/cuda/quantize.hpp"

namespace {

using namespace mixq;

constexpr int64_t kRows = 8192, kCols = 8192;
constexpr size_t kElements = size_t(kRows) * size_t(kCols);
constexpr size_t kInputBytes = kElements * sizeof(uint16_t);

// The device-resident weight and outputs, made once for every benchmark in the program.
struct device_setup {
  std::string error;  // non-empty: every benchmark skips with it
  uint16_t* weight = nullptr;
  uint8_t* copy = nullptr;  // kInputBytes: the memcpy destination
  uint8_t* packed = nullptr;
  uint8_t* block_scales = nullptr;
  uint8_t* codes = nullptr;
  float* scales = nullptr;  // kRows
  float* values = nullptr;  // kElements: the dequantized weight
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;

  device_setup() {
    if (!cuda::device_available()) {
      error = "no CUDA device";
      return;
    }
    // Weights as in an LLM layer: N(0, 0.02) with a few input channels 50x larger.
    std::vector<uint16_t> host(kElements);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (size_t i = 0; i < kElements; ++i) {
      const float scale = (i % kCols) % 37 == 3 ? 50.0f : 1.0f;
      host[i] = bf16_encode(normal(rng) * scale);
    }
    // The quantizers take their scratch from the stream-ordered allocator: keep the default pool's
    // memory between calls instead of returning it to the driver at every synchronization.
    cudaMemPool_t pool = nullptr;
    uint64_t keep = UINT64_MAX;
    if (!ok(cudaDeviceGetDefaultMemPool(&pool, 0)) ||
        !ok(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep)))
      return;
    // Stops at the first failure, which `error` keeps. (Freed at exit, with the process.)
    static_cast<void>(ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&weight), kInputBytes)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&copy), kInputBytes)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&packed), kElements / 2)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&block_scales), kElements / 16)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&codes), kElements)) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&scales), kRows * sizeof(float))) &&
                      ok(cudaMalloc(reinterpret_cast<void**>(&values), kElements * sizeof(float))) && ok(cudaEventCreate(&start)) &&
                      ok(cudaEventCreate(&stop)) &&
                      ok(cudaMemcpy(weight, host.data(), kInputBytes, cudaMemcpyHostToDevice)));
  }
  bool ok(cudaError_t e) {
    if (e != cudaSuccess && error.empty()) error = std::string("CUDA: ") + cudaGetErrorString(e);
    return e == cudaSuccess;
  }
  cpu::source_matrix source() const { return {weight, cpu::source_dtype::bf16, kRows, kCols, "bench.bf16"}; }
};

device_setup& setup() {
  static device_setup s;
  return s;
}

// Times `op` with CUDA events per iteration; reports GB/s of BF16 input.
void run_timed(benchmark::State& state, const std::function<void(device_setup&)>& op) {
  device_setup& s = setup();
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  double seconds = 0.0;
  try {
    for (auto _ : state) {
      s.ok(cudaEventRecord(s.start, s.stream));
      op(s);
      s.ok(cudaEventRecord(s.stop, s.stream));
      s.ok(cudaEventSynchronize(s.stop));
      float ms = 0.0f;
      s.ok(cudaEventElapsedTime(&ms, s.start, s.stop));
      state.SetIterationTime(double(ms) * 1e-3);
      seconds += double(ms) * 1e-3;
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  if (seconds > 0.0) state.counters["GB/s"] = double(kInputBytes) * double(state.iterations()) / seconds * 1e-9;
}

void BM_cuda_memcpy_d2d(benchmark::State& state) {
  run_timed(state, [](device_setup& s) {
    s.ok(cudaMemcpyAsync(s.copy, s.weight, kInputBytes, cudaMemcpyDeviceToDevice, s.stream));
  });
}

void BM_cuda_nvfp4(benchmark::State& state, nvfp4_selector selector) {
  nvfp4_options o;
  o.selector = selector;
  run_timed(state, [o](device_setup& s) { cuda::nvfp4_quantize_device(s.source(), s.packed, s.block_scales, o, s.stream); });
}

void BM_cuda_fp8(benchmark::State& state, fp8_granularity granularity, fp8_selector selector) {
  fp8_options o;
  o.granularity = granularity;
  o.selector = selector;
  run_timed(state, [o](device_setup& s) { cuda::fp8_quantize_device(s.source(), s.codes, s.scales, o, s.stream); });
}

// Dequantizes what the max quantizer made (quantized once, outside the timing).
void BM_cuda_nvfp4_dequantize(benchmark::State& state) {
  float global_scale = 0.0f;
  if (setup().error.empty())
    global_scale = cuda::nvfp4_quantize_device(setup().source(), setup().packed, setup().block_scales, {}, setup().stream)
                       .global_scale;
  run_timed(state, [global_scale](device_setup& s) {
    cuda::nvfp4_dequantize_device(s.packed, s.block_scales, global_scale, int64_t(kElements), s.values, s.stream);
  });
}

void BM_cuda_fp8_dequantize(benchmark::State& state) {
  fp8_options o;
  o.granularity = fp8_granularity::per_channel;
  if (setup().error.empty()) cuda::fp8_quantize_device(setup().source(), setup().codes, setup().scales, o, setup().stream);
  run_timed(state, [](device_setup& s) {
    cuda::fp8_dequantize_device(s.codes, s.scales, true, kRows, kCols, s.values, s.stream);
  });
}

}  // namespace

BENCHMARK(BM_cuda_memcpy_d2d)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_nvfp4, max, nvfp4_selector::max)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_nvfp4, mse_multiplier, nvfp4_selector::mse_multiplier)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_nvfp4, mse, nvfp4_selector::mse_fp8_sweep)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_nvfp4, four_over_six, nvfp4_selector::four_over_six)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_nvfp4, mse_four_over_six, nvfp4_selector::mse_four_over_six)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_fp8, per_tensor_max, fp8_granularity::per_tensor, fp8_selector::max)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_fp8, per_tensor_mse, fp8_granularity::per_tensor, fp8_selector::mse)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_fp8, per_channel_max, fp8_granularity::per_channel, fp8_selector::max)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cuda_fp8, per_channel_mse, fp8_granularity::per_channel, fp8_selector::mse)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_nvfp4_dequantize)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_fp8_dequantize)->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
