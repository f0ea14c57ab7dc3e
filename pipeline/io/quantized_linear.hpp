// How one quantized linear is stored on disk, in the two layouts inference engines load
// (shared/reference/hf-export-format.md §2.4 and §4):
//   ModelOpt           <m>.weight U8 [N, K/2] | F8_E4M3 [N, K];  <m>.weight_scale F8_E4M3 [N, K/16] | F32 [];
//                      <m>.weight_scale_2 F32 [] (NVFP4);  <m>.input_scale F32 [] (W4A4, W8A8)
//   compressed-tensors <m>.weight_packed U8 [N, K/2] | <m>.weight F8_E4M3 [N, K];  <m>.weight_scale as above
//                      ([1] for FP8);  <m>.weight_global_scale / <m>.input_global_scale F32 [1], the
//                      reciprocals of weight_scale_2 / input_scale (NVFP4);  <m>.input_scale F32 [1] (FP8)
// Writing (encode) and reading back (decode, dequantizing to fp32) live together so they cannot drift.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "formats/format_traits.hpp"
#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "pipeline/io/dtype.hpp"
#include "pipeline/io/safetensors_writer.hpp"

namespace mixq {

enum class export_layout { modelopt, compressed_tensors };

// A quantized linear: fp8 (per tensor), nvfp4 (W4A4) or nvfp4_w4a16.
struct quantized_linear {
  std::string module;              // "model.layers.0.self_attn.q_proj"
  format_id format = format_id::nvfp4;
  nvfp4_weight nvfp4;              // NVFP4 formats
  fp8_weight fp8;                  // fp8
  float input_scale = 0.0f;        // formats that quantize activations: amax / (6·448) or amax / 448
};

// A tensor with its bytes, ready for write_safetensors.
struct encoded_tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

// The tensors that replace <m>.weight for q in `layout` (a bias, if any, is written unchanged
// elsewhere), as views of q's own storage and of its F32 scalars, which go to the end of `scalars`:
// the export writes them without a copy. Both must outlive the views.
std::vector<tensor_to_write> stored_tensors(const quantized_linear& q, export_layout layout, std::deque<float>& scalars);
// The same tensors with their bytes copied.
std::vector<encoded_tensor> encode_quantized_linear(const quantized_linear& q, export_layout layout);

// compressed-tensors stores an NVFP4 scale s = amax / (6 · normalizer) as 1 / s, which a reader
// turns back into 1 / (1 / s): s itself for ~83 % of floats, one step off for the rest. For that
// layout this is the amax raised by the fewest float steps (at most 64) that make each
// normalizer's s one that survives, so the export decodes to exactly what was quantized and still
// bounds the tensor; amax as given for the ModelOpt layout, which stores s, and for amax <= 2^-100
// (the scale of 1 such amax take).
float amax_for_layout(float amax, export_layout layout, std::span<const float> normalizers);

// The bytes encode_quantized_linear writes for an [out, in] weight in `format` (the same in both
// layouts), from the shape alone; nullopt for a format with no export layout.
std::optional<uint64_t> quantized_linear_bytes(format_id format, int64_t out, int64_t in);

// A stored tensor as decode sees it: dtype, shape and raw little-endian bytes.
struct stored_tensor {
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};
using stored_tensor_lookup = std::function<std::optional<stored_tensor>(const std::string& name)>;

// A linear's weight read back from a checkpoint in either layout.
struct decoded_linear {
  std::vector<float> w;            // [out, in], dequantized exactly as the runtime does
  format_id format = format_id::bf16;
  float input_scale = 0.0f;        // 0: the checkpoint stores no input scale (weight-only or BF16)
};

// nullopt when `module` is not stored quantized (plain <m>.weight in BF16 / F16 / F32). Shapes,
// dtypes and missing siblings are checked: io_error-worthy problems come back as std::runtime_error
// naming the tensor, for the caller to prefix with the file.
std::optional<decoded_linear> decode_quantized_linear(const std::string& module, int64_t out, int64_t in,
                                                      const stored_tensor_lookup& lookup);

// The FP8 KV-cache scale tensors of an attention module: ModelOpt writes "<attn>.k_proj.k_scale" /
// "<attn>.v_proj.v_scale"; compressed-tensors (and transformers' loader for it) "<attn>.k_scale" /
// "<attn>.v_scale". vLLM maps both.
std::pair<std::string, std::string> kv_scale_names(const std::string& attention, export_layout layout);

// True for the tensor names quantization adds next to a linear's weight (weight_scale, input_scale,
// k_scale, ...) and the renamed weights (weight_packed): a checkpoint check must not call them unexpected.
bool is_quantization_tensor(std::string_view name);

}  // namespace mixq
