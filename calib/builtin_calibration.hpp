// The calibration set compiled into mixq, so `mixq quantize` runs without a data file: about 1200
// words of simple English stories (calib/data/builtin_calibration.txt), plus the same text
// pre-tokenized with the tok512 SentencePiece model shared by the test checkpoints and `mixq synth`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace mixq {

std::string_view builtin_calibration_text();

// Tokens for a model: the text encoded with the model's tokenizer (tokenizer.json or tokenizer.model,
// chosen by open_text_tokenizer) as [BOS] + pieces per story when there is one; else the tok512 ids,
// when the model's vocabulary holds them (>= 512). Throws token_file_error saying to pass
// calibration data otherwise.
std::vector<int32_t> builtin_calibration_tokens(const std::filesystem::path& model_dir, int64_t vocab);

}  // namespace mixq
