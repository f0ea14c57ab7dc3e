// Text into tokens: the held-out TinyStories text encoded with stories260K's SentencePiece model
// must give exactly the committed token stream (made by llama2.c's pretokenize rule); JSONL gives
// the same as the equivalent .txt; malformed input is named by file and line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "calib/text_tokenizer.hpp"
#include "calib/token_file.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path shared_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return fs::path(src ? src : ".") / ".." / "shared";
}

bool have_shared() {
  if (fs::exists(shared_dir() / "models" / "stories260K")) return true;
  const char* ci = std::getenv("CI");
  if (ci && std::string(ci) == "true") ADD_FAILURE() << shared_dir() << " is missing";
  return false;
}

TEST(text_tokenizer, tinystories_text_gives_the_committed_token_stream) {
  if (!have_shared()) GTEST_SKIP() << "../shared is absent";
  const fs::path data = shared_dir() / "data" / "tinystories";
  const fs::path model = shared_dir() / "models" / "stories260K";
  const auto from_text = read_token_stream(data / "TinyStories-valid-reduced.txt", model, 512);
  const auto from_bin = read_token_file(data / "TinyStories-valid-reduced.tok512.u16.bin", 512);
  EXPECT_EQ(from_text.size(), 74322u);
  EXPECT_EQ(from_text, from_bin);
  EXPECT_EQ(read_documents(data / "TinyStories-valid-reduced.txt").size(), 201u);
}

TEST(text_tokenizer, jsonl_matches_txt_and_errors_name_the_line) {
  if (!have_shared()) GTEST_SKIP() << "../shared is absent";
  const fs::path model = shared_dir() / "models" / "stories260K";
  const fs::path dir = fs::temp_directory_path() / ("mixq-text-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "a.txt") << "  Once upon a time.\n<|endoftext|>\n\n<|endoftext|>Tom ran home. ";
  std::ofstream(dir / "a.jsonl") << R"({"text": "Once upon a time."})" << "\n\n" << R"({"text": " Tom ran home. "})" << "\n";
  const auto txt = read_token_stream(dir / "a.txt", model, 512);
  EXPECT_EQ(txt, read_token_stream(dir / "a.jsonl", model, 512));
  EXPECT_EQ(std::count(txt.begin(), txt.end(), 1), 2);  // one BOS per (non-empty) document
  EXPECT_EQ(txt.front(), 1);

  std::ofstream(dir / "bad.jsonl") << R"({"text": "ok"})" << "\n" << R"({"txt": "no"})" << "\n";
  try {
    read_token_stream(dir / "bad.jsonl", model, 512);
    ADD_FAILURE() << "expected an error";
  } catch (const token_file_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2:"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "empty.txt") << " \n<|endoftext|>\n";
  EXPECT_THROW(read_token_stream(dir / "empty.txt", model, 512), token_file_error);
  EXPECT_THROW(read_token_stream(dir / "a.txt", dir, 512), token_file_error);  // no tokenizer.model there
  fs::remove_all(dir);
}

// A document with no breaks is encoded in pieces (encode_document): the same ids as the whole, for
// SentencePiece (stories260K) and the byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 patterns);
// and a token limit stops at exactly that prefix.
TEST(text_tokenizer, long_documents_encode_in_pieces_to_the_same_ids) {
  if (!have_shared()) GTEST_SKIP() << "../shared is absent";
  std::string text;
  for (const std::string& d : read_documents(shared_dir() / "data" / "tinystories" / "TinyStories-valid-reduced.txt"))
    text += (text.empty() ? "" : " ") + d;
  ASSERT_GT(text.size(), 150000u);
  std::vector<std::unique_ptr<text_tokenizer>> tokenizers;
  tokenizers.push_back(open_text_tokenizer(shared_dir() / "models" / "stories260K"));
  const fs::path bpe = fs::path(std::getenv("MIXQ_SOURCE_DIR") ? std::getenv("MIXQ_SOURCE_DIR") : ".") / "tests" / "data" / "bpe";
  for (const char* name : {"gpt2", "llama3", "qwen2"}) tokenizers.push_back(open_text_tokenizer(bpe / name));
  for (const auto& t : tokenizers) {
    const std::vector<int32_t> whole = t->encode(text);
    EXPECT_EQ(encode_document(*t, text, 0, 1000), whole) << t->path();  // ~150 pieces
    EXPECT_EQ(encode_document(*t, text), whole) << t->path();          // one: shorter than a piece
    const std::vector<int32_t> first = tokenize_documents(*t, {text}, 5000);
    ASSERT_EQ(first.size(), 5000u) << t->path();
    const size_t bos = t->bos_id() ? 1 : 0;
    EXPECT_TRUE(std::equal(first.begin() + std::ptrdiff_t(bos), first.end(), whole.begin())) << t->path();
  }
}

}  // namespace
}  // namespace mixq
