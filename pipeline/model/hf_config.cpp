#include "pipeline/model/hf_config.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>

#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

namespace {

// `text` with every bare NaN / Infinity / -Infinity outside strings replaced by {"__float__": "..."}.
std::string quote_non_finite(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < text.size()) out += text[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    bool replaced = false;
    for (const char* word : {"-Infinity", "Infinity", "NaN"}) {
      const std::string w(word);
      if (text.compare(i, w.size(), w) == 0) {
        out += "{\"__float__\": \"" + w + "\"}";
        i += w.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += ch;
  }
  return out;
}

}  // namespace

std::filesystem::path hf_config_path(const std::filesystem::path& dir_or_file) {
  return std::filesystem::is_directory(dir_or_file) ? dir_or_file / "config.json" : dir_or_file;
}

nlohmann::json read_hf_config(const std::filesystem::path& dir_or_file) {
  const std::filesystem::path file = hf_config_path(dir_or_file);
  std::ifstream in(file);
  if (!in) throw io_error(fmt::format("{}: cannot open (expected a config.json or a directory holding one)", file.string()));
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(quote_non_finite(text.str()));
  } catch (const nlohmann::json::exception& e) {
    throw io_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
}

void config_error(const std::filesystem::path& dir_or_file, const std::string& what) {
  throw io_error(fmt::format("{}: {}", hf_config_path(dir_or_file).string(), what));
}

double config_number_or(const std::filesystem::path& dir_or_file, const nlohmann::json& config, const char* key,
                        double fallback) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number()) config_error(dir_or_file, fmt::format("config key '{}' must be a number, got {}", key, it->dump()));
  return it->get<double>();
}

int64_t config_positive_int_or(const std::filesystem::path& dir_or_file, const nlohmann::json& config, const char* key,
                               int64_t fallback) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < 1)
    config_error(dir_or_file, fmt::format("config key '{}' must be a positive integer, got {}", key, it->dump()));
  return it->get<int64_t>();
}

std::optional<double> config_float(const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  const nlohmann::json* s = &v;
  if (v.is_object() && v.size() == 1 && v.contains("__float__")) s = &v["__float__"];
  if (!s->is_string()) return std::nullopt;
  const std::string t = s->get<std::string>();
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (t == "inf" || t == "Infinity" || t == "+inf" || t == "infinity") return inf;
  if (t == "-inf" || t == "-Infinity" || t == "-infinity") return -inf;
  if (t == "nan" || t == "NaN") return std::numeric_limits<double>::quiet_NaN();
  return std::nullopt;
}

int64_t config_max_positions(const std::filesystem::path& dir_or_file, const nlohmann::json& config,
                             std::string_view architecture) {
  const int64_t fallback = architecture == "mixtral"      ? 4096 * 32
                           : architecture == "qwen3_moe"  ? 32768
                           : architecture == "nemotron_h" ? 4096
                                                          : 2048;
  return config_positive_int_or(dir_or_file, config, "max_position_embeddings", fallback);
}

void require_unquantized_checkpoint(const std::filesystem::path& dir_or_file, const nlohmann::json& config) {
  const std::filesystem::path dir = hf_config_path(dir_or_file).parent_path();
  const auto q = config.find("quantization_config");
  const bool quantized = (q != config.end() && !q->is_null()) || std::filesystem::exists(dir / "hf_quant_config.json");
  if (!quantized) return;
  std::string what = "hf_quant_config.json";
  if (q != config.end() && q->is_object()) {
    what = "quantization_config";
    for (const char* key : {"quant_method", "quant_algo"})
      if (const auto v = q->find(key); v != q->end() && v->is_string()) what += fmt::format(" {} {}", key, v->get<std::string>());
  }
  throw io_error(fmt::format("{}: already quantized ({}): mixq quantizes an unquantized BF16 / F16 / F32 checkpoint; "
                             "point --model at the one it came from (mixq eval and mixq inspect read it as it is)",
                             dir.string(), what));
}

}  // namespace mixq
