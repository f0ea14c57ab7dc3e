#include "calib/text_tokenizer.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "calib/bpe_tokenizer.hpp"
#include "calib/unicode_text.hpp"

namespace mixq {
namespace {

std::string_view strip(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw token_file_error(fmt::format("{}: cannot open", path.string()));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

sentencepiece_tokenizer sentencepiece_tokenizer::open(const std::filesystem::path& model_file) {
  if (!std::filesystem::exists(model_file))
    throw token_file_error(fmt::format("{}: no SentencePiece tokenizer model", model_file.string()));
  sentencepiece_tokenizer t;
  t.processor_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  t.path_ = model_file;
  const auto status = t.processor_->Load(model_file.string());
  if (!status.ok())
    throw token_file_error(fmt::format("{}: not a SentencePiece model ({})", model_file.string(), status.ToString()));
  return t;
}

std::vector<int32_t> sentencepiece_tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  if (!status.ok()) throw token_file_error(fmt::format("{}: encoding failed ({})", path_.string(), status.ToString()));
  return {ids.begin(), ids.end()};
}

std::optional<int32_t> sentencepiece_tokenizer::bos_id() const {
  const int id = processor_->bos_id();  // -1 when the model has none
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}
int32_t sentencepiece_tokenizer::vocab_size() const { return processor_->GetPieceSize(); }

std::vector<std::string> read_documents(const std::filesystem::path& path) {
  const std::string text = read_all(path);
  if (const size_t bad = unicode::find_invalid_utf8(text); bad != std::string::npos)
    throw token_file_error(fmt::format("{}: not UTF-8 text (ill-formed byte 0x{:02x} at byte offset {})", path.string(),
                                       static_cast<unsigned char>(text[bad]), bad));
  std::vector<std::string> docs;
  const std::string ext = path.extension().string();
  if (ext == ".jsonl") {
    std::istringstream lines(text);
    std::string line;
    for (int64_t n = 1; std::getline(lines, line); ++n) {
      if (strip(line).empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw token_file_error(fmt::format("{}:{}: not valid JSON ({})", path.string(), n, e.what()));
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw token_file_error(fmt::format("{}:{}: expected a JSON object with a string field \"text\"", path.string(), n));
      const std::string_view doc = strip(j["text"].get_ref<const std::string&>());
      if (!doc.empty()) docs.emplace_back(doc);
    }
  } else if (ext == ".txt") {
    static constexpr std::string_view kSeparator = "<|endoftext|>";
    for (size_t pos = 0; pos <= text.size();) {
      const size_t end = std::min(text.find(kSeparator, pos), text.size());
      const std::string_view doc = strip(std::string_view(text).substr(pos, end - pos));
      if (!doc.empty()) docs.emplace_back(doc);
      pos = end + kSeparator.size();
    }
  } else {
    throw token_file_error(fmt::format("{}: unknown text format '{}' (use .txt or .jsonl)", path.string(), ext));
  }
  if (docs.empty()) throw token_file_error(fmt::format("{}: no text in it", path.string()));
  return docs;
}

std::vector<int32_t> encode_document(const text_tokenizer& tokenizer, std::string_view document, int64_t max_tokens,
                                     size_t chunk_bytes) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  const auto is_letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  std::vector<int32_t> ids;
  for (size_t start = 0; start < document.size();) {
    size_t end = document.size();
    for (size_t p = start + std::max<size_t>(chunk_bytes, 1); p + 1 < document.size(); ++p)
      if (document[p] == ' ' && !is_space(document[p - 1]) && is_letter(document[p + 1])) {
        end = p;
        break;
      }
    const std::vector<int32_t> piece = tokenizer.encode(document.substr(start, end - start));
    ids.insert(ids.end(), piece.begin(), piece.end());
    if (max_tokens > 0 && int64_t(ids.size()) >= max_tokens) break;
    start = end;
  }
  return ids;
}

std::vector<int32_t> tokenize_documents(const text_tokenizer& tokenizer, const std::vector<std::string>& docs,
                                        int64_t max_tokens) {
  std::vector<int32_t> ids;
  const std::optional<int32_t> bos = tokenizer.bos_id();
  for (const auto& d : docs) {
    if (max_tokens > 0 && int64_t(ids.size()) >= max_tokens) break;
    if (bos) ids.push_back(*bos);
    const auto piece_ids = encode_document(tokenizer, d, max_tokens > 0 ? max_tokens - int64_t(ids.size()) : 0);
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  if (max_tokens > 0 && int64_t(ids.size()) > max_tokens) ids.resize(size_t(max_tokens));
  return ids;
}

std::vector<int32_t> read_token_stream(const std::filesystem::path& data, const std::filesystem::path& model_dir,
                                       int64_t vocab, token_dtype dtype, int64_t max_tokens) {
  if (std::filesystem::is_directory(data))
    throw token_file_error(fmt::format("{}: a directory; token data is one .txt, .jsonl, .u16.bin, .u32.bin or .npy "
                                       "file", data.string()));
  const std::string ext = data.extension().string();
  if (ext != ".txt" && ext != ".jsonl") {
    std::vector<int32_t> ids = read_token_file(data, vocab, dtype);
    if (max_tokens > 0 && int64_t(ids.size()) > max_tokens) ids.resize(size_t(max_tokens));
    return ids;
  }
  const auto tokenizer = open_text_tokenizer(model_dir);
  if (vocab > 0 && tokenizer->vocab_size() > vocab)
    throw token_file_error(fmt::format("{}: tokenizer has {} ids but the model's vocab is {}", tokenizer->path().string(),
                                       tokenizer->vocab_size(), vocab));
  return tokenize_documents(*tokenizer, read_documents(data), max_tokens);
}

std::unique_ptr<text_tokenizer> open_text_tokenizer(const std::filesystem::path& model_dir) {
  const std::filesystem::path json = model_dir / "tokenizer.json", sp = model_dir / "tokenizer.model";
  const bool have_sp = std::filesystem::exists(sp);
  if (std::filesystem::exists(json)) {
    try {
      return std::make_unique<bpe_tokenizer>(bpe_tokenizer::open(json));
    } catch (const unsupported_tokenizer_error&) {
      if (!have_sp) throw;
    }
  }
  if (!have_sp)
    throw token_file_error(fmt::format("{}: no tokenizer.json or tokenizer.model (text data needs one; or pass "
                                       "pre-tokenized .u16.bin / .u32.bin)",
                                       model_dir.string()));
  return std::make_unique<sentencepiece_tokenizer>(sentencepiece_tokenizer::open(sp));
}

}  // namespace mixq
