// Reading a Hugging Face config.json: every error names the file and the key.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace mixq {

// dir/config.json, or the path itself when it is not a directory.
std::filesystem::path hf_config_path(const std::filesystem::path& dir_or_file);

// The JSON of dir/config.json (or of the file itself when given one); io_error when it is missing or
// not valid JSON. Python's json writes the non-finite floats as bare NaN / Infinity / -Infinity,
// which JSON has no spelling for: they are read as transformers 5 writes them,
// {"__float__": "Infinity"}, so that config_float() understands both.
nlohmann::json read_hf_config(const std::filesystem::path& dir_or_file);

// An io_error "<dir>/config.json: <what>".
[[noreturn]] void config_error(const std::filesystem::path& dir_or_file, const std::string& what);

// config[key] as a number, or fallback when absent or null; io_error naming config.json and key otherwise.
double config_number_or(const std::filesystem::path& dir_or_file, const nlohmann::json& config, const char* key,
                        double fallback);

// config[key] as an integer >= 1, or fallback when absent or null; io_error naming config.json and key
// otherwise (a fraction, zero, a negative number, a string).
int64_t config_positive_int_or(const std::filesystem::path& dir_or_file, const nlohmann::json& config, const char* key,
                               int64_t fallback);

// config.json's max_position_embeddings, or transformers' default for the model_type where it is
// absent (llama 2048, mixtral 131072, qwen3_moe 32768, nemotron_h 4096); io_error where invalid.
int64_t config_max_positions(const std::filesystem::path& dir_or_file, const nlohmann::json& config,
                             std::string_view architecture);

// io_error where the checkpoint is already quantized (config.json has a quantization_config, or an
// hf_quant_config.json lies beside it): quantizing takes an unquantized BF16 / F16 / F32 source.
void require_unquantized_checkpoint(const std::filesystem::path& dir_or_file, const nlohmann::json& config);

// A float value in any spelling a config.json holds: a number, "inf" / "Infinity" / "-inf" / "nan"
// (strings), or {"__float__": "Infinity"}; nullopt for anything else.
std::optional<double> config_float(const nlohmann::json& v);

}  // namespace mixq
