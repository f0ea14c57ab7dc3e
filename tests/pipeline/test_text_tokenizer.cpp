// Text into tokens: the held-out TinyStories text encoded with stories260K's SentencePiece model
// must give exactly the committed token stream (made by llama2.c's pretokenize rule); JSONL gives
// the same as the equivalent .txt; malformed input is named by file and line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace mixq
