#include "formats/format_traits.hpp"

#include <array>

#include <fmt/format.h>

namespace mixq {
namespace {

// Effective bits count the element plus its share of the block scale (the FP32 per-tensor scale
// is negligible and, as in ModelOpt's cost model, ignored): NVFP4 4 + 8/16, MXFP4 4 + 8/32,
// NF4 4 + 16/64.
constexpr std::array<format_traits, static_cast<size_t>(format_id::count)> kFormats = {{
    {format_id::bf16, "bf16", "", element_kind::bf16, 16, 0, scale_kind::none, false, false, 16.0,
     "unquantized BF16"},
    {format_id::fp8_per_tensor, "fp8", "FP8", element_kind::e4m3, 8, 0, scale_kind::f32, false, true, 8.0,
     "FP8 E4M3 weights and activations, per-tensor FP32 scales"},
    {format_id::fp8_per_channel, "fp8_per_channel", "FP8_PER_CHANNEL_PER_TOKEN", element_kind::e4m3, 8, 0,
     scale_kind::f32, false, true, 8.0, "FP8 E4M3, one FP32 weight scale per output channel"},
    {format_id::nvfp4, "nvfp4", "NVFP4", element_kind::e2m1, 4, 16, scale_kind::e4m3, true, true, 4.5,
     "NVFP4 W4A4: E2M1 values, E4M3 scale per 16, FP32 global scale"},
    {format_id::nvfp4_w4a16, "nvfp4_w4a16", "W4A16_NVFP4", element_kind::e2m1, 4, 16, scale_kind::e4m3, true,
     false, 4.5, "NVFP4 weights, BF16 activations"},
    {format_id::mxfp4, "mxfp4", "", element_kind::e2m1, 4, 32, scale_kind::e8m0, false, true, 4.25,
     "OCP MXFP4: E2M1 values, E8M0 scale per 32"},
    {format_id::mxfp8, "mxfp8", "", element_kind::e4m3, 8, 32, scale_kind::e8m0, false, true, 8.25,
     "OCP MXFP8: E4M3 values, E8M0 scale per 32"},
    {format_id::nf4, "nf4", "", element_kind::nf4, 4, 64, scale_kind::f16, false, false, 4.25,
     "NormalFloat-4 (QLoRA): absmax per 64, FP16 scale"},
}};

constexpr bool table_is_in_enum_order() {
  for (size_t i = 0; i < kFormats.size(); ++i)
    if (static_cast<size_t>(kFormats[i].id) != i) return false;
  return true;
}
static_assert(table_is_in_enum_order(), "kFormats rows must follow format_id order");

}  // namespace

const format_traits& traits_of(format_id id) { return kFormats.at(static_cast<size_t>(id)); }
std::span<const format_traits> all_formats() { return kFormats; }

std::optional<format_id> parse_format(std::string_view name) {
  for (const auto& f : kFormats)
    if (f.name == name) return f.id;
  return std::nullopt;
}

std::optional<std::string> format_cannot_hold(format_id id, int64_t rows, int64_t cols) {
  const format_traits& t = traits_of(id);
  if (rows <= 0 || cols <= 0) return fmt::format("{}: empty shape [{}, {}]", t.name, rows, cols);
  if (t.block_size > 0 && cols % t.block_size != 0)
    return fmt::format("{} needs K (the last dim, {}) to be a multiple of its block size {}", t.name, cols,
                       t.block_size);
  if (t.element_bits == 4 && cols % 2 != 0)
    return fmt::format("{} packs two values per byte and needs an even K, not {}", t.name, cols);
  return std::nullopt;
}

}  // namespace mixq
