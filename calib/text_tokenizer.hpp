// Raw text into the token stream a model is evaluated or calibrated on: documents from a .txt file
// (separated by "<|endoftext|>") or a .jsonl file (one {"text": ...} per line), each stripped of
// surrounding whitespace, empty ones dropped, encoded with the model's tokenizer as [BOS] + pieces,
// and concatenated — llama2.c's pretokenize rule, which is how shared/data/tinystories's .u16.bin
// was made. The tokenizer is the model directory's tokenizer.json (byte-level BPE,
// calib/bpe_tokenizer.hpp) or its SentencePiece tokenizer.model (libsentencepiece).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "calib/token_file.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mixq {

// A well-formed tokenizer file of a kind mixq does not implement (e.g. a SentencePiece-style
// tokenizer.json with byte fallback).
class unsupported_tokenizer_error : public token_file_error {
 public:
  using token_file_error::token_file_error;
};

// What the document rule needs of a tokenizer.
class text_tokenizer {
 public:
  virtual ~text_tokenizer() = default;
  // The ids of the text alone (no BOS / EOS added).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The token starting each document, when the tokenizer has one.
  virtual std::optional<int32_t> bos_id() const = 0;
  // Every id encode gives is below this.
  virtual int32_t vocab_size() const = 0;
  virtual const std::filesystem::path& path() const = 0;
};

class sentencepiece_tokenizer final : public text_tokenizer {
 public:
  // Throws token_file_error naming the file when it is missing or not a SentencePiece model.
  static sentencepiece_tokenizer open(const std::filesystem::path& model_file);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::optional<int32_t> bos_id() const override;
  int32_t vocab_size() const override;
  const std::filesystem::path& path() const override { return path_; }

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::filesystem::path path_;
};

// The documents of a .txt or .jsonl file (see above); errors name the file and, for JSONL, the line.
// Text must be UTF-8: an ill-formed byte is an error naming the file and its byte offset.
std::vector<std::string> read_documents(const std::filesystem::path& path);

// encode(document), in pieces of about chunk_bytes where it is longer: a tokenizer's working set is
// ~100 bytes per byte of text (SentencePiece), so one 10 MB document would take a GB. A piece
// ends before a space that follows a non-space and precedes an ASCII letter, where every
// tokenizer mixq reads starts a new pre-token (byte-level BPE's " ?\p{L}+" patterns) or word
// (SentencePiece's dummy prefix for the next piece's leading space): the same ids as the whole.
// max_tokens > 0: stops once it has that many (the rest may be missing).
inline constexpr size_t kDocumentChunkBytes = size_t(1) << 18;
std::vector<int32_t> encode_document(const text_tokenizer& tokenizer, std::string_view document,
                                     int64_t max_tokens = 0, size_t chunk_bytes = kDocumentChunkBytes);

// [BOS] + encode(document) for each document, concatenated; just encode(document) when the
// tokenizer has no BOS (GPT-2 / Qwen2 style byte-level BPE: their post-processor adds nothing).
// max_tokens > 0: the first max_tokens of that stream, no more tokenized than that needs.
std::vector<int32_t> tokenize_documents(const text_tokenizer& tokenizer, const std::vector<std::string>& docs,
                                        int64_t max_tokens = 0);

// The tokenizer of a model directory: tokenizer.json when there is one, as transformers' fast
// tokenizers choose — unless it is a kind mixq does not implement (a SentencePiece conversion) and
// tokenizer.model is there too, which then encodes the same; else tokenizer.model. Throws
// token_file_error naming both files when neither exists.
std::unique_ptr<text_tokenizer> open_text_tokenizer(const std::filesystem::path& model_dir);

// Token ids from any supported data file: pre-tokenized .bin (u16 / u32) as is, or .txt / .jsonl
// encoded with the model directory's tokenizer (open_text_tokenizer). Every id is checked against vocab.
// max_tokens > 0: only the stream's first max_tokens (calibration reads no further).
std::vector<int32_t> read_token_stream(const std::filesystem::path& data, const std::filesystem::path& model_dir,
                                       int64_t vocab, token_dtype dtype = token_dtype::from_extension,
                                       int64_t max_tokens = 0);

}  // namespace mixq
