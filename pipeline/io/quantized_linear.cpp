#include "pipeline/io/quantized_linear.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <span>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mixq {
namespace {

const std::vector<int64_t> kScalar{};     // ModelOpt writes 0-d scales
const std::vector<int64_t> kOneElem{1};   // compressed-tensors writes [1]

}  // namespace

std::vector<tensor_to_write> stored_tensors(const quantized_linear& q, export_layout layout, std::deque<float>& scalars) {
  const std::string& m = q.module;
  const bool ct = layout == export_layout::compressed_tensors;
  const std::vector<int64_t>& scalar = ct ? kOneElem : kScalar;
  std::vector<tensor_to_write> out;
  const auto view = [](const auto& v) { return std::as_bytes(std::span(v.data(), v.size())); };
  const auto f32 = [&](std::string name, float value) {
    scalars.push_back(value);  // (a deque keeps its elements where they are)
    out.push_back({std::move(name), dtype::f32, scalar, std::as_bytes(std::span(&scalars.back(), 1))});
  };
  switch (q.format) {
    case format_id::nvfp4:
    case format_id::nvfp4_w4a16: {
      const nvfp4_weight& w = q.nvfp4;
      out.push_back({m + (ct ? ".weight_packed" : ".weight"), dtype::u8, {w.rows, w.cols / 2}, view(w.packed)});
      out.push_back({m + ".weight_scale", dtype::f8_e4m3, {w.rows, w.blocks_per_row()}, view(w.block_scales)});
      if (ct) {
        f32(m + ".weight_global_scale", 1.0f / w.global_scale);
        if (q.format == format_id::nvfp4) f32(m + ".input_global_scale", 1.0f / q.input_scale);
      } else {
        f32(m + ".weight_scale_2", w.global_scale);
        if (q.format == format_id::nvfp4) f32(m + ".input_scale", q.input_scale);
      }
      return out;
    }
    case format_id::fp8_per_tensor: {
      const fp8_weight& w = q.fp8;
      if (w.scales.size() != 1) throw std::invalid_argument(fmt::format("{}: FP8 export is per tensor", m));
      out.push_back({m + ".weight", dtype::f8_e4m3, {w.rows, w.cols}, view(w.codes)});
      f32(m + ".weight_scale", w.scales[0]);
      f32(m + ".input_scale", q.input_scale);
      return out;
    }
    default:
      throw std::invalid_argument(
          fmt::format("{}: format {} has no HF export layout", m, traits_of(q.format).name));
  }
}

float amax_for_layout(float amax, export_layout layout, std::span<const float> normalizers) {
  if (layout != export_layout::compressed_tensors || !(amax > 0x1p-100f) || !std::isfinite(amax)) return amax;
  const auto survives = [&](float a) {
    for (const float n : normalizers) {
      const float s = nvfp4_global_scale(a, n);
      if (1.0f / (1.0f / s) != s) return false;
    }
    return true;
  };
  float a = amax;
  for (int step = 0; step <= 64 && std::isfinite(a); ++step, a = std::nextafter(a, INFINITY))
    if (survives(a)) return a;
  return amax;
}

std::vector<encoded_tensor> encode_quantized_linear(const quantized_linear& q, export_layout layout) {
  std::deque<float> scalars;
  std::vector<encoded_tensor> out;
  for (tensor_to_write& t : stored_tensors(q, layout, scalars))
    out.push_back({std::move(t.name), t.type, std::move(t.shape), std::vector<std::byte>(t.bytes.begin(), t.bytes.end())});
  return out;
}

std::optional<uint64_t> quantized_linear_bytes(format_id format, int64_t out, int64_t in) {
  const uint64_t n = uint64_t(out) * uint64_t(in), scalar = sizeof(float);
  switch (format) {
    case format_id::nvfp4: return n / 2 + n / kNvfp4Block + 2 * scalar;  // codes, block scales, scale_2, input
    case format_id::nvfp4_w4a16: return n / 2 + n / kNvfp4Block + scalar;
    case format_id::fp8_per_tensor: return n + 2 * scalar;                 // codes, weight and input scales
    default: return std::nullopt;
  }
}

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::runtime_error(what); }

stored_tensor require(const stored_tensor_lookup& lookup, const std::string& name, dtype type,
                      const std::vector<int64_t>& shape) {
  const auto t = lookup(name);
  if (!t) bad(fmt::format("tensor '{}' is missing", name));
  if (t->type != type) bad(fmt::format("tensor '{}' is {}, expected {}", name, dtype_name(t->type), dtype_name(type)));
  if (t->shape != shape)
    bad(fmt::format("tensor '{}' has shape [{}], expected [{}]", name, fmt::join(t->shape, ", "),
                    fmt::join(shape, ", ")));
  return *t;
}

// One F32 value stored as [] or [1].
std::optional<float> scalar(const stored_tensor_lookup& lookup, const std::string& name) {
  const auto t = lookup(name);
  if (!t) return std::nullopt;
  if (t->type != dtype::f32 || t->bytes.size() != 4)
    bad(fmt::format("tensor '{}' must be one F32 value, is {} [{}]", name, dtype_name(t->type),
                    fmt::join(t->shape, ", ")));
  float v;
  std::memcpy(&v, t->bytes.data(), 4);
  if (!(v > 0.0f) || !std::isfinite(v)) bad(fmt::format("tensor '{}' holds {}, not a positive finite scale", name, v));
  return v;
}

float required_scalar(const stored_tensor_lookup& lookup, const std::string& name) {
  const auto v = scalar(lookup, name);
  if (!v) bad(fmt::format("tensor '{}' is missing", name));
  return *v;
}

template <class Vector>
Vector copy_of(std::span<const std::byte> b) {
  Vector v(b.size() / sizeof(typename Vector::value_type));
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(typename Vector::value_type));
  return v;
}

}  // namespace

std::optional<decoded_linear> decode_quantized_linear(const std::string& module, int64_t out, int64_t in,
                                                      const stored_tensor_lookup& lookup) {
  const auto weight = lookup(module + ".weight");
  const bool ct_packed = !weight && lookup(module + ".weight_packed").has_value();
  const bool nvfp4 = ct_packed || (weight && weight->type == dtype::u8);
  const bool fp8 = weight && weight->type == dtype::f8_e4m3;
  if (!nvfp4 && !fp8) return std::nullopt;

  decoded_linear d;
  d.w.resize(size_t(out * in));
  if (nvfp4) {
    if (in % kNvfp4Block != 0) bad(fmt::format("'{}' is stored as NVFP4 but K = {} is not a multiple of 16", module, in));
    nvfp4_weight q;
    q.rows = out;
    q.cols = in;
    q.packed = copy_of<code_bytes>(
        require(lookup, module + (ct_packed ? ".weight_packed" : ".weight"), dtype::u8, {out, in / 2}).bytes);
    q.block_scales =
        copy_of<code_bytes>(require(lookup, module + ".weight_scale", dtype::f8_e4m3, {out, in / kNvfp4Block}).bytes);
    if (ct_packed) {
      q.global_scale = 1.0f / required_scalar(lookup, module + ".weight_global_scale");
      const auto igs = scalar(lookup, module + ".input_global_scale");
      d.input_scale = igs ? 1.0f / *igs : 0.0f;
    } else {
      q.global_scale = required_scalar(lookup, module + ".weight_scale_2");
      d.input_scale = scalar(lookup, module + ".input_scale").value_or(0.0f);
    }
    d.format = d.input_scale > 0.0f ? format_id::nvfp4 : format_id::nvfp4_w4a16;
    nvfp4_dequantize(q, d.w);
  } else {
    fp8_weight q;
    q.rows = out;
    q.cols = in;
    q.codes = copy_of<code_bytes>(require(lookup, module + ".weight", dtype::f8_e4m3, {out, in}).bytes);
    const auto ws = lookup(module + ".weight_scale");
    if (!ws) bad(fmt::format("tensor '{}.weight_scale' is missing", module));
    if (ws->type != dtype::f32 || (ws->bytes.size() != 4 && ws->bytes.size() != size_t(out) * 4))
      bad(fmt::format("tensor '{}.weight_scale' must be F32 with 1 or {} values", module, out));
    q.scales = copy_of<std::vector<float>>(ws->bytes);
    for (float s : q.scales)
      if (!(s > 0.0f) || !std::isfinite(s)) bad(fmt::format("tensor '{}.weight_scale' holds {}", module, s));
    d.input_scale = scalar(lookup, module + ".input_scale").value_or(0.0f);
    d.format = q.scales.size() == 1 ? format_id::fp8_per_tensor : format_id::fp8_per_channel;
    fp8_dequantize(q, d.w);
  }
  return d;
}

std::pair<std::string, std::string> kv_scale_names(const std::string& attention, export_layout layout) {
  if (layout == export_layout::compressed_tensors) return {attention + ".k_scale", attention + ".v_scale"};
  return {attention + ".k_proj.k_scale", attention + ".v_proj.v_scale"};
}

bool is_quantization_tensor(std::string_view name) {
  static constexpr std::array kSuffixes{".weight_scale",        ".weight_scale_2",     ".input_scale",
                                        ".weight_packed",       ".weight_global_scale", ".input_global_scale",
                                        ".k_scale",             ".v_scale"};
  for (std::string_view s : kSuffixes)
    if (name.size() > s.size() && name.substr(name.size() - s.size()) == s) return true;
  return false;
}

}  // namespace mixq
