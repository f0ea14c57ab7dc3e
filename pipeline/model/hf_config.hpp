// Reading a Hugging Face config.json: every error names the file and the key.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

namespace mixq {

// The JSON of dir/config.json (or of the file itself when given one); io_error when it is missing or
// not valid JSON.
nlohmann::json read_hf_config(const std::filesystem::path& dir_or_file);

// config[key] as a number, or fallback when absent or null; io_error naming dir and key otherwise.
double config_number_or(const std::filesystem::path& dir, const nlohmann::json& config, const char* key,
                        double fallback);

}  // namespace mixq
