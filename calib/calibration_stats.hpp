// What calibration learned about a model, and its HDF5 home in the run directory.
// The statistics are keyed by HF module names so they outlive any one process layout; the file
// carries a fingerprint of what produced them (model, calibration settings, data), and reading it
// back for a different model or data is refused with a message saying which part differs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "calib/token_file.hpp"  // token_file_error: the one error type of calib/

namespace mixq {

// Fingerprint parts: hex digests of the inputs that decide the statistics.
struct stats_fingerprint {
  std::string model;        // config.json + every shard's header and size
  std::string calibration;  // the recipe's calibration settings (samples, seq_len, batch, data path)
  std::string data;         // the calibration token ids actually used

  bool operator==(const stats_fingerprint&) const = default;
};

struct calibration_stats {
  stats_fingerprint fingerprint;
  int64_t sequences = 0, tokens = 0;
  std::map<std::string, float> input_amax;     // linear module -> max |x| over every token it saw
  std::map<std::string, float> k_amax, v_amax; // attention module ("...self_attn") -> max |K|, |V| after RoPE
  std::map<std::string, int64_t> expert_tokens;// routed-expert module ("...experts.3") -> tokens routed to it
};

// 64-bit FNV-1a over bytes, as 16 hex digits: the fingerprint hash (stable across platforms).
std::string fnv1a_hex(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);
// Fingerprint of a checkpoint directory: config.json, and each *.safetensors file's name, size, header
// and samples of its tensor data (stats_fingerprint.cpp).
// token_file_error naming the path when config.json is missing or a shard is not safetensors.
std::string model_fingerprint(const std::filesystem::path& model_dir);

// Writes the statistics to an HDF5 file atomically (temporary name, then rename). token_file_error on failure.
void write_calibration_stats(const std::filesystem::path& file, const calibration_stats& stats);
// Reads them back; token_file_error naming the file and the group / dataset that is missing or malformed.
calibration_stats read_calibration_stats(const std::filesystem::path& file);
// "" when equal, else a sentence naming which parts differ, for a refused --resume.
std::string describe_fingerprint_mismatch(const stats_fingerprint& stored, const stats_fingerprint& wanted);

}  // namespace mixq
