// libFuzzer target for the tokenizer.json byte-level BPE tokenizer and its Unicode helpers. The
// first byte picks one of the committed test tokenizers (Llama 3, GPT-2, Qwen2 style); the rest is
// the text. Text that is not UTF-8 must be refused with token_file_error; valid text must give ids
// below vocab_size that decode back to it (exactly for Llama 3 / GPT-2, which neither normalize nor
// strip spaces around added tokens), and NFC must be idempotent. Anything else is a bug.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "calib/bpe_tokenizer.hpp"
#include "calib/unicode_text.hpp"

namespace {

const mixq::bpe_tokenizer& tokenizer(int k) {
  static const std::array<mixq::bpe_tokenizer, 3> t = {
      mixq::bpe_tokenizer::open(MIXQ_BPE_DATA "/llama3/tokenizer.json"),
      mixq::bpe_tokenizer::open(MIXQ_BPE_DATA "/gpt2/tokenizer.json"),
      mixq::bpe_tokenizer::open(MIXQ_BPE_DATA "/qwen2/tokenizer.json")};
  return t[size_t(k)];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int which = data[0] % 3;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const mixq::bpe_tokenizer& tok = tokenizer(which);
  const bool valid = mixq::unicode::find_invalid_utf8(text) == std::string_view::npos;

  const std::string lossy = mixq::unicode::utf8_lossy(text);
  if (mixq::unicode::find_invalid_utf8(lossy) != std::string_view::npos || (valid && lossy != text)) std::abort();

  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, /*add_special_tokens=*/false);
  } catch (const mixq::token_file_error&) {
    if (valid) std::abort();
    return 0;
  }
  if (!valid) std::abort();
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  const std::string back = tok.decode(ids);
  if (which != 2 && back != text) std::abort();
  const std::string n = mixq::unicode::nfc(text);
  if (mixq::unicode::nfc(n) != n || mixq::unicode::find_invalid_utf8(n) != std::string_view::npos) std::abort();
  return 0;
}
