// What a user wants to know about a checkpoint directory before serving or quantizing it: the
// architecture, parameters, dtypes and size; for quantized exports (ModelOpt HF layout) the format
// of every linear, the effective bits, and the checks that decide whether vLLM / SGLang /
// TensorRT-LLM load it and compute correctly (scales present, finite and positive; fused siblings
// sharing weight_scale_2 and input_scale; hf_quant_config.json agreeing with the tensors).
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
};

struct checkpoint_inspection {
  std::filesystem::path dir;
  std::string architecture;     // config.json architectures[0] (model_type), or "?"
  int64_t tensors = 0, files = 0;
  int64_t parameters = 0;       // logical weights: a packed NVFP4 byte counts 2
  uint64_t file_bytes = 0;      // on disk
  std::map<std::string, int64_t> bytes_by_dtype;
  std::string quant_algo;       // hf_quant_config.json, or "" when absent
  std::string kv_cache_quant_algo;
  std::vector<linear_layer> linears;
  double effective_bits = 0;    // over the linears, weighted by size
  std::vector<std::string> problems;  // the runtimes would refuse or compute wrongly
  std::vector<std::string> notes;     // worth knowing, not wrong

  std::map<std::string, int64_t> linears_by_format() const;
};

// Reads only headers, scales and configs (never a whole weight). Throws io_error on files that
// cannot be read at all; everything else is reported in problems.
checkpoint_inspection inspect_checkpoint(const std::filesystem::path& dir);

}  // namespace mixq
