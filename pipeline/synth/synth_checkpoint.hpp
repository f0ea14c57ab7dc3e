// Synthetic checkpoints in exact Hugging Face layout: config.json, generation_config.json and
// model.safetensors (or shards + index) for every architecture ModelSpec knows, at a tiny size for
// tests and a small one (a few hundred MB) for benchmarks and scale runs. The config is built
// first and ModelSpec derives the tensor list from it, so the two cannot disagree. Values have
// the statistics of trained weights and depend only on (seed, tensor name): the same seed gives
// byte-identical files whatever the thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "pipeline/io/dtype.hpp"

namespace mixq {

enum class synth_arch : uint8_t { llama, mixtral, qwen3_moe, nemotron_h };
enum class synth_preset : uint8_t { tiny, small };

std::string_view to_string(synth_arch a);    // the model_type: "llama", "nemotron_h", ...
std::string_view to_string(synth_preset p);  // "tiny", "small"
std::optional<synth_arch> parse_synth_arch(std::string_view name);
std::optional<synth_preset> parse_synth_preset(std::string_view name);

// A size as transformers' max_shard_size reads it: "5GB" = 5e9 bytes (KB/MB/GB/TB are powers of
// 1000, KiB/MiB/GiB/TiB of 1024, a bare number is bytes); nullopt unless a positive size.
std::optional<uint64_t> parse_byte_size(std::string_view text);

// The preset's config.json: every field ModelSpec and the transformers model class read, with
// torch_dtype naming `type` (bf16, f16 or f32).
nlohmann::json synth_config(synth_arch arch, synth_preset preset, dtype type = dtype::bf16);
// generation_config.json as save_pretrained derives it from the config (token ids).
nlohmann::json synth_generation_config(const nlohmann::json& config);

struct synth_options {
  synth_arch arch = synth_arch::llama;
  synth_preset preset = synth_preset::tiny;
  uint64_t seed = 0;
  dtype type = dtype::bf16;  // bf16, f16 or f32; Mamba A_log / D / dt_bias and router biases stay F32
  uint64_t max_shard_bytes = 5'000'000'000;
  std::filesystem::path out;
  bool force = false;  // replace an existing non-empty `out`
};

struct synth_result {
  std::filesystem::path dir;
  int64_t parameters = 0;
  uint64_t tensor_bytes = 0;                 // safetensors payload
  std::vector<std::filesystem::path> files;  // everything written, as it lies in dir
  double seconds = 0;
};

// Generates the checkpoint in a temporary sibling of o.out and renames it into place only when
// every file is written. Throws io_error (and writes nothing) when o.out exists and is not an
// empty directory, unless o.force; throws std::invalid_argument on an unsupported dtype.
synth_result synth_checkpoint(const synth_options& o);

}  // namespace mixq
