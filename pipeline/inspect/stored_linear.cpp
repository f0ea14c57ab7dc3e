// One linear as a runtime would load it, in either export layout (pipeline/io/quantized_linear.hpp):
// which format its tensors say, and whether its scales are usable.
#include <cmath>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "pipeline/inspect/inspection_checks.hpp"

namespace mixq::inspection {
namespace {

// E4M3 block scales: zero (the block dequantizes to 0 whatever its codes), negative (its signs
// flipped: no quantizer writes one) or NaN are problems.
void check_block_scales(const tensor_ref& t, std::vector<std::string>& problems) {
  const auto bytes = t.bytes();
  int64_t zero = 0, negative = 0, nan = 0, first = -1;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const uint8_t b = std::to_integer<uint8_t>(bytes[i]);
    const bool is_zero = (b & 0x7f) == 0, is_nan = (b & 0x7f) == 0x7f, is_negative = !is_zero && !is_nan && b & 0x80;
    zero += is_zero, nan += is_nan, negative += is_negative;
    if ((is_zero || is_nan || is_negative) && first < 0) first = int64_t(i);
  }
  if (zero + negative + nan > 0)
    problems.push_back(fmt::format("{} has {} zero, {} negative and {} NaN block scales (first at flat index {})",
                                   t.info->name, zero, negative, nan, first));
}

// NVFP4 in either layout: packed U8 [N, K/2] codes and F8_E4M3 [N, K/16] block scales.
void read_nvfp4(const std::string& module, const tensor_ref& packed, const tensor_map& tensors, bool ct,
                linear_layer& l, checkpoint_inspection& r) {
  l.cols = packed.info->shape[1] * 2;
  const std::string global = module + (ct ? ".weight_global_scale" : ".weight_scale_2");
  const std::string input = module + (ct ? ".input_global_scale" : ".input_scale");
  l.input_scale = tensors.count(input) > 0;
  l.format = l.input_scale ? stored_format::nvfp4 : stored_format::nvfp4_w4a16;
  const auto scale = tensors.find(module + ".weight_scale");
  if (scale == tensors.end()) {
    r.problems.push_back(fmt::format("{}.weight_scale is missing (NVFP4 needs its block scales)", module));
  } else {
    const auto& s = *scale->second.info;
    if (s.type != dtype::f8_e4m3 || s.shape.size() != 2 || s.shape[0] != l.rows || s.shape[1] * 16 != l.cols)
      r.problems.push_back(fmt::format("{}.weight_scale is {} [{}]; NVFP4 with K = {} needs F8_E4M3 [{}, {}]", module,
                                       dtype_name(s.type), fmt::join(s.shape, ", "), l.cols, l.rows, l.cols / 16));
    else
      check_block_scales(scale->second, r.problems);
  }
  check_scale(global, tensors, true, r.problems);  // compressed-tensors stores the reciprocal: same rule
  check_scale(input, tensors, false, r.problems);
}

}  // namespace

void check_scale(const std::string& name, const tensor_map& tensors, bool required, std::vector<std::string>& problems) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) {
    if (required) problems.push_back(fmt::format("{} is missing", name));
    return;
  }
  if (it->second.info->type != dtype::f32) {
    problems.push_back(fmt::format("{} is {}, the runtimes expect F32", name, dtype_name(it->second.info->type)));
    return;
  }
  const auto bytes = it->second.bytes();
  for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    float v;
    std::memcpy(&v, bytes.data() + i, 4);
    if (!std::isfinite(v) || v <= 0.0f) {
      problems.push_back(fmt::format("{} holds {} at index {} (a scale must be finite and positive)", name, v, i / 4));
      return;
    }
  }
}

std::string modelopt_algo(stored_format f) {
  switch (f) {
    case stored_format::fp8: return "FP8";
    case stored_format::fp8_per_channel: return "FP8_PER_CHANNEL_PER_TOKEN";
    case stored_format::nvfp4: return "NVFP4";
    case stored_format::nvfp4_w4a16: return "W4A16_NVFP4";
    default: return "";
  }
}

std::optional<linear_layer> read_stored_linear(const std::string& module, const tensor_map& tensors,
                                               checkpoint_inspection& r) {
  if (const auto packed = tensors.find(module + ".weight_packed"); packed != tensors.end()) {
    const auto& p = *packed->second.info;
    if (p.type != dtype::u8 || p.shape.size() != 2) {
      r.problems.push_back(fmt::format("{} is {} [{}]; compressed-tensors NVFP4 needs U8 [N, K/2]", p.name,
                                       dtype_name(p.type), fmt::join(p.shape, ", ")));
      return std::nullopt;
    }
    linear_layer l{module, stored_format::nvfp4, p.shape[0], 0};
    read_nvfp4(module, packed->second, tensors, true, l, r);
    return l;
  }
  const auto weight = tensors.find(module + ".weight");
  if (weight == tensors.end()) return std::nullopt;
  const tensor_info& w = *weight->second.info;
  if (w.shape.size() != 2) {
    r.problems.push_back(fmt::format("{} has shape [{}]; a linear weight is 2-D", w.name, fmt::join(w.shape, ", ")));
    return std::nullopt;
  }
  linear_layer l{module, stored_format::bf16, w.shape[0], w.shape[1]};
  l.input_scale = tensors.count(module + ".input_scale") > 0;
  switch (w.type) {
    case dtype::bf16: l.format = stored_format::bf16; break;
    case dtype::f16: l.format = stored_format::f16; break;
    case dtype::f32: l.format = stored_format::f32; break;
    case dtype::f8_e4m3: {
      const auto scale = tensors.find(module + ".weight_scale");
      if (scale == tensors.end()) {
        r.problems.push_back(fmt::format("{} is F8_E4M3 without {}.weight_scale", w.name, module));
        return std::nullopt;
      }
      const int64_t n = scale->second.info->numel();
      l.format = n == 1 ? stored_format::fp8 : stored_format::fp8_per_channel;
      if (n != 1 && n != l.rows)
        r.problems.push_back(fmt::format("{}.weight_scale has {} values; FP8 needs 1 (per tensor) or {} (per channel)",
                                         module, n, l.rows));
      check_scale(module + ".weight_scale", tensors, true, r.problems);
      check_scale(module + ".input_scale", tensors, false, r.problems);
      break;
    }
    case dtype::u8:  // packed NVFP4 codes, whose block scales read_nvfp4 requires
      read_nvfp4(module, weight->second, tensors, false, l, r);
      break;
    default:
      r.problems.push_back(fmt::format("{} is {}: a linear weight is BF16, F16, F32, F8_E4M3 or U8 (packed NVFP4) for "
                                       "the runtimes", w.name, dtype_name(w.type)));
      return std::nullopt;
  }
  return l;
}

}  // namespace mixq::inspection
