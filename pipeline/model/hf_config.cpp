#include "pipeline/model/hf_config.hpp"

#include <fstream>

#include <fmt/format.h>

#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

nlohmann::json read_hf_config(const std::filesystem::path& dir_or_file) {
  const std::filesystem::path file =
      std::filesystem::is_directory(dir_or_file) ? dir_or_file / "config.json" : dir_or_file;
  std::ifstream in(file);
  if (!in) throw io_error(fmt::format("{}: cannot open (expected a config.json or a directory holding one)", file.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw io_error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
}

double config_number_or(const std::filesystem::path& dir, const nlohmann::json& config, const char* key,
                        double fallback) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number())
    throw io_error(fmt::format("{}: config key '{}' must be a number, got {}", dir.string(), key, it->dump()));
  return it->get<double>();
}

}  // namespace mixq
