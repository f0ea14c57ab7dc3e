// Checkpoint IO: opening and validating a many-shard checkpoint (headers only), and reading every
// tensor byte through the memory-mapped reader, next to a plain read() of the same files in the
// same run (the yardstick: read() into a buffer from the page cache). The checkpoint is written
// once to a temporary directory: 32 shards of 8 MiB, 64 tensors each, 2048 in the index.
//
//   build/bench/bench_checkpoint_io
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/safetensors_writer.hpp"

namespace {

namespace fs = std::filesystem;
using namespace mixq;

constexpr int kShards = 32;
constexpr int kTensorsPerShard = 64;
constexpr int64_t kTensorBytes = 128 << 10;  // 128 KiB each: 8 MiB per shard, 256 MiB in all

const fs::path& checkpoint_dir() {
  static const fs::path dir = [] {
    const fs::path d = fs::temp_directory_path() / ("mixq-bench-io-" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::vector<uint8_t> payload(static_cast<size_t>(kTensorBytes));
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = uint8_t(i * 131);
    std::vector<tensor_to_write> tensors;
    for (int s = 0; s < kShards; ++s)
      for (int t = 0; t < kTensorsPerShard; ++t)
        tensors.push_back({"model.layers." + std::to_string(s) + ".mlp.experts." + std::to_string(t) + ".up_proj.weight",
                           dtype::bf16, {256, kTensorBytes / 512}, std::as_bytes(std::span(payload))});
    write_checkpoint_tensors(d, tensors, uint64_t(kTensorsPerShard * kTensorBytes));
    std::atexit([] { fs::remove_all(checkpoint_dir()); });
    return d;
  }();
  return dir;
}

uint64_t total_bytes() { return uint64_t(kShards) * kTensorsPerShard * kTensorBytes; }

void BM_open_and_validate(benchmark::State& state) {
  const fs::path& dir = checkpoint_dir();
  for (auto _ : state) benchmark::DoNotOptimize(checkpoint::open(dir).tensors().size());
  state.counters["shards"] = kShards;
  state.counters["tensors"] = kShards * kTensorsPerShard;
}

// Sums 64-bit words so every byte is loaded once.
uint64_t checksum(const std::byte* p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    s += w;
  }
  return s;
}

void BM_read_mapped_tensors(benchmark::State& state) {
  const checkpoint c = checkpoint::open(checkpoint_dir());
  for (auto _ : state) {
    uint64_t s = 0;
    for (const auto& e : c.tensors()) {
      const auto b = e.shard->bytes(*e.tensor);
      s += checksum(b.data(), b.size());
    }
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(int64_t(state.iterations() * total_bytes()));
}

void BM_read_files_yardstick(benchmark::State& state) {
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(checkpoint_dir()))
    if (f.path().extension() == ".safetensors") files.push_back(f.path());
  std::vector<std::byte> buffer(size_t(kTensorsPerShard * kTensorBytes + (1 << 20)));
  uint64_t bytes = 0;
  for (auto _ : state) {
    uint64_t s = 0;
    for (const auto& f : files) {
      const int fd = ::open(f.c_str(), O_RDONLY);
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      ::close(fd);
      s += checksum(buffer.data(), size_t(n));
      bytes += uint64_t(n);
    }
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(int64_t(bytes));
}

}  // namespace

BENCHMARK(BM_open_and_validate)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_read_files_yardstick)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_read_mapped_tensors)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
