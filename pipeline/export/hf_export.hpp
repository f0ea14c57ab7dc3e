// Writes a quantized Hugging Face checkpoint directory (shared/reference/hf-export-format.md §6):
// quantized linears in the chosen layout, every other tensor copied byte for byte under its own name
// and dtype, KV-cache scales, config.json with quantization_config (+ hf_quant_config.json for
// ModelOpt), and the tokenizer / generation / remote-code files of the source. Everything is
// written into a temporary sibling directory and renamed into place only when complete, so an
// interrupted export never leaves a directory that looks like a checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "pipeline/export/quant_config.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/quantize/quantize_weights.hpp"

namespace mixq {

struct export_options {
  export_layout layout = export_layout::modelopt;
  kv_cache_format kv = kv_cache_format::none;
  uint64_t max_shard_bytes = 5'000'000'000;
  bool overwrite = false;          // replace an existing output directory (only once the new one is complete)
  std::string producer_version;    // recorded in the quantization config
  // Called with the complete temporary directory before it is renamed into place; throwing aborts
  // the export (the temporary directory is removed, an existing output is left untouched).
  std::function<void(const std::filesystem::path&)> verify;
};

struct export_summary {
  std::vector<std::filesystem::path> files;  // in the final directory
  uint64_t tensor_bytes = 0;                 // payload of every tensor written
  int64_t tensors = 0, copied = 0;           // tensors written; of those, copied unchanged
  int64_t abandoned_removed = 0;             // staging directories of killed runs removed first
};

// The source checkpoint's model_spec gives the per-layer format list (every linear not in q is BF16).
// io_error naming the directory if `out` exists (without overwrite) or a write fails.
export_summary export_checkpoint(const checkpoint& source, const model_spec& spec, const quantized_weights& q,
                                 const std::filesystem::path& out, const export_options& options);

// The same, quantizing each linear as its tensors are written (twice: its scalars come first, its
// codes with the narrow tensors later), so that one quantized linear is held at a time.
export_summary export_checkpoint(const checkpoint& source, const model_spec& spec, const weight_quantizer& quantizer,
                                 const std::filesystem::path& out, const export_options& options);

// Module -> format of every linear of spec under q.
layer_formats formats_of(const model_spec& spec, const quantized_weights& q);
layer_formats formats_of(const model_spec& spec, const weight_quantizer& quantizer);

}  // namespace mixq
