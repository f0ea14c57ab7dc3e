// Raw text into the token stream a model is evaluated or calibrated on: documents from a .txt file
// (separated by "<|endoftext|>") or a .jsonl file (one {"text": ...} per line), each stripped of
// surrounding whitespace, empty ones dropped, encoded with the model's SentencePiece tokenizer
// (libsentencepiece) as [BOS] + pieces, and concatenated — llama2.c's pretokenize rule, which is
// how shared/data/tinystories's .u16.bin was made.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "calib/token_file.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mixq {

class sentencepiece_tokenizer {
 public:
  // Throws token_file_error naming the file when it is missing or not a SentencePiece model.
  static sentencepiece_tokenizer open(const std::filesystem::path& model_file);

  std::vector<int32_t> encode(std::string_view text) const;
  int32_t bos_id() const;
  int32_t vocab_size() const;

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::filesystem::path path_;
};

// The documents of a .txt or .jsonl file (see above); errors name the file and, for JSONL, the line.
std::vector<std::string> read_documents(const std::filesystem::path& path);

// [BOS] + encode(document) for each document, concatenated.
std::vector<int32_t> tokenize_documents(const sentencepiece_tokenizer& tokenizer, const std::vector<std::string>& docs);

// Token ids from any supported data file: pre-tokenized .bin (u16 / u32) as is, or .txt / .jsonl
// encoded with model_dir/tokenizer.model. Every id is checked against vocab.
std::vector<int32_t> read_token_stream(const std::filesystem::path& data, const std::filesystem::path& model_dir,
                                       int64_t vocab, token_dtype dtype = token_dtype::from_extension);

}  // namespace mixq
