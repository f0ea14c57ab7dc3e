#include "calib/builtin_calibration.hpp"

#include <cstring>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "calib/text_tokenizer.hpp"

namespace mixq {

// Defined in the build directory's builtin_calibration_data.cpp (generated from calib/data/).
extern const char kBuiltinCalibrationText[];
extern const unsigned char kBuiltinCalibrationTok512[];
extern const size_t kBuiltinCalibrationTok512Bytes;

std::string_view builtin_calibration_text() { return kBuiltinCalibrationText; }

std::vector<int32_t> builtin_calibration_tokens(const std::filesystem::path& model_dir, int64_t vocab) {
  if (std::filesystem::exists(model_dir / "tokenizer.json") || std::filesystem::exists(model_dir / "tokenizer.model")) {
    std::vector<std::string> docs;
    const std::string text(builtin_calibration_text());
    const std::string sep = "<|endoftext|>";
    for (size_t at = 0;;) {
      const size_t next = text.find(sep, at);
      std::string doc = text.substr(at, next == std::string::npos ? std::string::npos : next - at);
      const size_t b = doc.find_first_not_of(" \t\r\n"), e = doc.find_last_not_of(" \t\r\n");
      if (b != std::string::npos) docs.push_back(doc.substr(b, e - b + 1));
      if (next == std::string::npos) break;
      at = next + sep.size();
    }
    return tokenize_documents(*open_text_tokenizer(model_dir), docs);
  }
  if (vocab < 512)
    throw token_file_error(fmt::format(
        "{} has no tokenizer.json or tokenizer.model and a vocabulary of {} (< 512), so the built-in calibration "
        "text cannot be used; pass calibration data with --calib (a .txt, .jsonl or pre-tokenized .bin file)",
        model_dir.string(), vocab));
  std::vector<int32_t> ids(kBuiltinCalibrationTok512Bytes / 2);
  for (size_t i = 0; i < ids.size(); ++i)  // little-endian u16
    ids[i] = int32_t(kBuiltinCalibrationTok512[2 * i]) | int32_t(kBuiltinCalibrationTok512[2 * i + 1]) << 8;
  return ids;
}

}  // namespace mixq
