// The table of quantization formats: one row per format, everything else reads it.
// Adding a format is one row here plus its quantizer (ggml's type-traits table, as data).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace mixq {

enum class format_id : uint8_t {
  bf16,              // passthrough
  fp8_per_tensor,    // W8A8, E4M3 weights + activations, one FP32 scale per tensor
  fp8_per_channel,   // W8A8, one FP32 weight scale per output row
  nvfp4,             // W4A4 NVFP4: E2M1, 16-block E4M3 scale, FP32 global scale; NVFP4 activations
  nvfp4_w4a16,       // NVFP4 weights, BF16 activations
  mxfp4,             // OCP MXFP4: E2M1, 32-block E8M0 scale
  mxfp8,             // OCP MXFP8: E4M3, 32-block E8M0 scale
  nf4,               // QLoRA NormalFloat-4: 64-block absmax, FP16 scale
  count,
};

enum class element_kind : uint8_t { bf16, e4m3, e2m1, nf4 };
enum class scale_kind : uint8_t { none, f32, e4m3, e8m0, f16 };

struct format_traits {
  format_id id;
  std::string_view name;         // as in recipes and reports
  std::string_view modelopt_algo;// hf_quant_config.json quant_algo ("" where ModelOpt has none)
  element_kind element;
  int element_bits;
  int block_size;                // elements per block scale along K; 0 = per tensor / channel
  scale_kind block_scale;
  bool global_scale;             // an FP32 per-tensor scale on top of the block scales
  bool quantizes_activations;
  double effective_bits;         // storage bits per weight, scales included (cost model)
  std::string_view summary;
};

const format_traits& traits_of(format_id id);
std::span<const format_traits> all_formats();
std::optional<format_id> parse_format(std::string_view name);

// Why a format cannot hold a [rows, cols] weight (K = cols), or nullopt when it can.
std::optional<std::string> format_cannot_hold(format_id id, int64_t rows, int64_t cols);

}  // namespace mixq
