// A Hugging Face tokenizer.json byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2 and the like),
// giving the ids the Python `tokenizers` library gives (tests/golden/make_bpe_goldens.py checks it).
//
// Supported: model BPE (vocab, merges as "a b" strings or [a, b] pairs, ignore_merges, unk_token /
// fuse_unk; no dropout, byte fallback, subword prefix or word suffix); normalizer null, NFC or a
// Sequence of them; pre_tokenizer ByteLevel (add_prefix_space, use_regex), Split with the GPT-2,
// Llama 3 or Qwen2 pattern (behavior Isolated or Removed, not inverted), Digits, and Sequence of
// these — a ByteLevel step is required; added_tokens with single_word / lstrip / rstrip /
// normalized; post_processor TemplateProcessing / ByteLevel / Sequence (the single-sequence
// template's special tokens); decoder ByteLevel. Anything else is refused, naming the file and key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "calib/text_tokenizer.hpp"

namespace mixq {

class bpe_tokenizer final : public text_tokenizer {
 public:
  // Throws token_file_error naming the file (and the key) for a missing, malformed or unsupported
  // tokenizer.json; unsupported_tokenizer_error when it is well-formed but of a kind not handled.
  static bpe_tokenizer open(const std::filesystem::path& file);
  // The same from the JSON text; `name` stands for the file in messages.
  static bpe_tokenizer parse(std::string_view json_text, const std::filesystem::path& name);

  // The ids of valid UTF-8 text (throws token_file_error naming the byte offset otherwise), with
  // the post-processor's special tokens around them when add_special_tokens.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  std::vector<int32_t> encode(std::string_view text) const override { return encode(text, false); }
  // Text of ids (byte-level inverse; ill-formed UTF-8 becomes U+FFFD). Throws for an unknown id.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The post-processor's leading special token when it prepends exactly one (Llama 3's
  // <|begin_of_text|>); none for GPT-2 / Qwen2 style tokenizers.
  std::optional<int32_t> bos_id() const override;
  // One past the largest id, added tokens included.
  int32_t vocab_size() const override;
  const std::filesystem::path& path() const override;

  // The pre-tokenizer alone (no normalizer, no added tokens): the words BPE sees, in byte-level
  // characters — what the library's pre_tokenizer.pre_tokenize_str gives.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  // The id of a token string (vocab or added token), if any.
  std::optional<int32_t> token_to_id(std::string_view token) const;

  struct impl;

 private:
  std::shared_ptr<const impl> impl_;
};

}  // namespace mixq
