// What a user wants to know about a checkpoint directory before serving or quantizing it: the
// architecture, parameters, dtypes and size; for quantized exports (ModelOpt or compressed-tensors
// layout) the format of every linear, the effective bits, and the checks that decide whether vLLM /
// SGLang / TensorRT-LLM load it and compute correctly (shared/reference/hf-export-format.md §3, §4):
// scales present, finite and positive; fused siblings and MoE experts sharing one format and scale;
// NVFP4 K per tensor-parallel slice a multiple of 16; the configs agreeing with the tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mixq {

enum class stored_format : uint8_t { bf16, f16, f32, fp8, fp8_per_channel, nvfp4, nvfp4_w4a16 };
std::string_view stored_format_name(stored_format f);  // "bf16", "fp8", "nvfp4", ...
double stored_format_bits(stored_format f);           // effective bits per weight

struct linear_layer {
  std::string module;   // tensor name without ".weight"
  stored_format format;
  int64_t rows = 0, cols = 0;  // logical [N, K]
  bool input_scale = false;    // stores an activation scale (input_scale / input_global_scale)
};

struct inspect_options {
  int tensor_parallel = 1;     // the TP degree the NVFP4 slice rules are checked for
};

struct checkpoint_inspection {
  std::filesystem::path dir;
  std::string architecture;     // config.json architectures[0] (model_type), or "?"
  int64_t tensors = 0, files = 0;
  int64_t parameters = 0;       // logical weights: a packed NVFP4 byte counts 2
  uint64_t file_bytes = 0;      // on disk
  std::map<std::string, int64_t> bytes_by_dtype;
  std::string layout;           // "modelopt", "compressed-tensors", or "" when not quantized
  std::string quant_algo;       // ModelOpt quant_algo or the compressed-tensors format; "" when absent
  std::string kv_cache_quant_algo;  // "FP8" when the config quantizes the KV cache
  int tensor_parallel = 1;
  std::vector<linear_layer> linears;  // the model's linear weights only (config.json's model when it parses)
  double effective_bits = 0;    // over the linears, weighted by size
  bool config_checked = false;  // config.json described a model mixq knows, and the tensors were held to it
  std::vector<std::string> problems;  // the runtimes would refuse or compute wrongly
  std::vector<std::string> notes;     // worth knowing, not wrong

  std::map<std::string, int64_t> linears_by_format() const;
};

// Reads only headers, scales and configs (never a whole weight). Throws io_error on files that
// cannot be read at all and std::invalid_argument for tensor_parallel < 1; everything else is
// reported in problems.
checkpoint_inspection inspect_checkpoint(const std::filesystem::path& dir, const inspect_options& options = {});

}  // namespace mixq
