// Bit-for-bit agreement with the golden vectors of tests/golden/make_format_goldens.py: NVFP4
// (max, four-over-six, MSE multiplier, MSE FP8 sweep) and FP8 (per tensor, per channel) codes,
// scales and dequantized values from NVIDIA Model Optimizer's own quantizers (or the script's
// NumPy reference where ModelOpt has no CPU path: each case says which), and NaN / Inf rejection.
// Both the scalar reference (formats/) and the fast CPU kernels must match.
#include <gtest/gtest.h>

#include <bit>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/quantize.hpp"

namespace mixq {
namespace {

using json = nlohmann::json;

code_bytes unhex(const std::string& s) {
  code_bytes out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = uint8_t(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return out;
}

std::vector<float> unhex_f32(const std::string& s) {
  const auto bytes = unhex(s);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

std::vector<uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<uint32_t> out;
  for (float f : v) out.push_back(std::bit_cast<uint32_t>(f));
  return out;
}

const json& goldens() {
  static const json j = [] {
    const char* src = std::getenv("MIXQ_SOURCE_DIR");
    const std::filesystem::path p =
        std::filesystem::path(src ? src : ".") / "tests" / "golden" / "data" / "format_goldens.json";
    std::ifstream in(p);
    if (!in) throw std::runtime_error("cannot read " + p.string());
    return json::parse(in);
  }();
  return j;
}

struct named_nvfp4 {
  const char* key;
  nvfp4_selector selector;
};

TEST(format_goldens, nvfp4_matches_bit_for_bit) {
  const json& g = goldens();
  const std::vector<float> multipliers = unhex_f32(g["mse_multipliers_f32_hex"]);
  const named_nvfp4 methods[] = {{"nvfp4_max", nvfp4_selector::max},
                                 {"nvfp4_four_over_six", nvfp4_selector::four_over_six},
                                 {"nvfp4_mse_multiplier", nvfp4_selector::mse_multiplier},
                                 {"nvfp4_mse_fp8_sweep", nvfp4_selector::mse_fp8_sweep}};
  int checked = 0;
  for (const auto& c : g["cases"]) {
    const std::vector<float> w = unhex_f32(c["input_f32_hex"]);
    const int64_t rows = c["shape"][0], cols = c["shape"][1];
    const std::string name = c["name"];
    for (const auto& m : methods) {
      if (!c["methods"].contains(m.key)) continue;
      const json& e = c["methods"][m.key];
      SCOPED_TRACE(name + " / " + m.key + " (source: " + e["source"].get<std::string>() + ")");
      nvfp4_options o;
      o.selector = m.selector;
      o.multipliers = multipliers;
      const nvfp4_weight ref = nvfp4_quantize({w.data(), rows, cols, name}, o);
      const nvfp4_weight fast = cpu::nvfp4_quantize(cpu::from_f32({w.data(), rows, cols, name}), o);
      const float ws2 = unhex_f32(e["weight_scale_2_f32_hex"])[0];
      const auto scales = unhex(e["weight_scale_e4m3_hex"]);
      const auto packed = unhex(e["packed_u8_hex"]);
      const auto dequant = unhex_f32(e["dequant_f32_hex"]);
      for (const nvfp4_weight* q : {&ref, &fast}) {
        EXPECT_EQ(std::bit_cast<uint32_t>(q->global_scale), std::bit_cast<uint32_t>(ws2));
        EXPECT_EQ(q->block_scales, scales);
        EXPECT_EQ(q->packed, packed);
        std::vector<float> d(w.size());
        nvfp4_dequantize(*q, d);
        EXPECT_EQ(bits_of(d), bits_of(dequant));
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);
}

TEST(format_goldens, fp8_matches_bit_for_bit) {
  const json& g = goldens();
  int checked = 0;
  for (const auto& c : g["cases"]) {
    const std::vector<float> w = unhex_f32(c["input_f32_hex"]);
    const int64_t rows = c["shape"][0], cols = c["shape"][1];
    const std::string name = c["name"];
    for (const char* key : {"fp8_per_tensor", "fp8_per_channel"}) {
      if (!c["methods"].contains(key)) continue;
      const json& e = c["methods"][key];
      SCOPED_TRACE(name + " / " + key);
      fp8_options o;
      o.granularity = std::string(key) == "fp8_per_tensor" ? fp8_granularity::per_tensor : fp8_granularity::per_channel;
      const fp8_weight ref = fp8_quantize({w.data(), rows, cols, name}, o);
      const fp8_weight fast = cpu::fp8_quantize(cpu::from_f32({w.data(), rows, cols, name}), o);
      for (const fp8_weight* q : {&ref, &fast}) {
        EXPECT_EQ(bits_of(q->scales), bits_of(unhex_f32(e["scale_f32_hex"])));
        EXPECT_EQ(q->codes, unhex(e["codes_e4m3_hex"]));
        std::vector<float> d(w.size());
        fp8_dequantize(*q, d);
        EXPECT_EQ(bits_of(d), bits_of(unhex_f32(e["dequant_f32_hex"])));
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 10);
}

TEST(format_goldens, nonfinite_inputs_are_rejected_at_the_first_bad_index) {
  for (const auto& c : goldens()["reject_cases"]) {
    const std::vector<float> w = unhex_f32(c["input_f32_hex"]);
    const int64_t rows = c["shape"][0], cols = c["shape"][1];
    const int64_t bad = c["first_bad_index"];
    const std::string where = "(flat index " + std::to_string(bad) + ")";
    const weight_view v{w.data(), rows, cols, "golden"};
    for (int impl = 0; impl < 4; ++impl) {
      try {
        if (impl == 0) nvfp4_quantize(v);
        if (impl == 1) cpu::nvfp4_quantize(cpu::from_f32(v));
        if (impl == 2) fp8_quantize(v);
        if (impl == 3) cpu::fp8_quantize(cpu::from_f32(v));
        ADD_FAILURE() << c["name"] << ": implementation " << impl << " accepted a non-finite weight";
      } catch (const format_error& e) {
        EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace mixq
