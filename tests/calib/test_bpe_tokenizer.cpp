// The tokenizer.json byte-level BPE tokenizer against the Hugging Face `tokenizers` library: the ids
// of tests/golden/make_bpe_goldens.py for every text (held-out TinyStories lines and hard cases)
// and every committed tokenizer (Llama 3, GPT-2 and Qwen2 style) and variant, NFC, decoding;
// malformed files named by file and key; and read_token_stream choosing tokenizer.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/bpe_tokenizer.hpp"
#include "calib/builtin_calibration.hpp"
#include "calib/text_tokenizer.hpp"
#include "calib/token_file.hpp"
#include "calib/unicode_text.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path source_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return fs::path(src ? src : ".");
}
fs::path tokenizer_file(const std::string& name) { return source_dir() / "tests" / "data" / "bpe" / name / "tokenizer.json"; }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const json& goldens() {
  static const json g = json::parse(read_text(source_dir() / "tests" / "golden" / "data" / "bpe_goldens.json"));
  return g;
}

std::vector<std::string> texts() { return goldens().at("texts").get<std::vector<std::string>>(); }

// A readable form of a text for failure messages.
std::string show(const std::string& s) { return json(s).dump(); }

// Compares the ids of every text; reports the first few differences in full.
void expect_ids(const bpe_tokenizer& tok, const std::vector<std::string>& xs, const json& expected, const std::string& what) {
  ASSERT_GE(expected.size(), xs.size()) << what;
  int reported = 0, wrong = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto want = expected[i].get<std::vector<int32_t>>();
    const auto got = tok.encode(xs[i], false);
    if (got == want) continue;
    ++wrong;
    if (reported++ < 5)
      ADD_FAILURE() << what << " text " << i << " " << show(xs[i]) << "\n  got      " << json(got).dump()
                    << "\n  expected " << json(want).dump();
  }
  EXPECT_EQ(wrong, 0) << what << ": " << wrong << " of " << xs.size() << " texts differ";
}

TEST(bpe_tokenizer, every_text_gives_the_libraries_ids) {
  const auto xs = texts();
  ASSERT_GT(xs.size(), 300u);
  for (const std::string name : {"llama3", "gpt2", "qwen2"}) {
    SCOPED_TRACE(name);
    const json& g = goldens().at("tokenizers").at(name);
    const auto tok = bpe_tokenizer::open(tokenizer_file(name));
    EXPECT_EQ(tok.vocab_size(), g.at("vocab_size").get<int32_t>());
    expect_ids(tok, xs, g.at("ids"), name);
    const json& pre = g.at("pre_tokens");
    int wrong = 0;
    for (size_t i = 0; i < pre.size(); ++i) {
      const auto got = tok.pre_tokenize(xs[i]);
      if (got != pre[i].get<std::vector<std::string>>() && wrong++ < 5)
        ADD_FAILURE() << name << " pre-tokens of text " << i << " " << show(xs[i]) << "\n  got      " << json(got).dump()
                      << "\n  expected " << pre[i].dump();
    }
    EXPECT_EQ(wrong, 0);
    for (const auto& c : g.at("with_special_tokens"))
      EXPECT_EQ(tok.encode(c[0].get<std::string>(), true), c[1].get<std::vector<int32_t>>()) << show(c[0]);
  }
}

TEST(bpe_tokenizer, variants_give_the_libraries_ids) {
  const auto xs = texts();
  for (const auto& v : goldens().at("variants")) {
    const std::string name = v.at("name");
    SCOPED_TRACE(name);
    json j = json::parse(read_text(tokenizer_file(v.at("base"))));
    for (const auto& e : v.at("edits")) j[json::json_pointer(e[0].get<std::string>())] = e[1];
    const auto tok = bpe_tokenizer::parse(j.dump(), name + ".json");
    const size_t n = v.at("texts").get<size_t>();
    expect_ids(tok, std::vector<std::string>(xs.begin(), xs.begin() + long(n)), v.at("ids"), name);
    if (v.contains("pre_tokens")) {
      for (size_t i = 0; i < v["pre_tokens"].size(); ++i)
        EXPECT_EQ(tok.pre_tokenize(xs[i]), v["pre_tokens"][i].get<std::vector<std::string>>()) << show(xs[i]);
    }
    EXPECT_GT(v.at("differing_from_base").get<int>(), 0);  // the edit changes something
  }
}

TEST(bpe_tokenizer, bos_comes_from_the_template) {
  const auto llama3 = bpe_tokenizer::open(tokenizer_file("llama3"));
  ASSERT_TRUE(llama3.bos_id().has_value());
  EXPECT_EQ(*llama3.bos_id(), *llama3.token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(llama3.encode("", true), std::vector<int32_t>{*llama3.bos_id()});
  EXPECT_FALSE(bpe_tokenizer::open(tokenizer_file("gpt2")).bos_id().has_value());
  EXPECT_FALSE(bpe_tokenizer::open(tokenizer_file("qwen2")).bos_id().has_value());
}

// The split rules seen through the tokens themselves: no token crosses a pre-token boundary.
std::vector<std::string> pieces(const bpe_tokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (int32_t id : tok.encode(text)) out.push_back(tok.decode(std::vector<int32_t>{id}));
  return out;
}

// True when some prefix of the token sequence spells exactly `prefix`.
bool boundary_after(const std::vector<std::string>& ps, const std::string& prefix) {
  std::string acc;
  for (const auto& p : ps) {
    if (acc == prefix) return true;
    acc += p;
  }
  return acc == prefix;
}

// A few rules seen through the committed vocabularies, without the library: a pre-token boundary is
// always a token boundary, and a token never spans one.
TEST(bpe_tokenizer, pre_token_boundaries_follow_the_patterns) {
  const auto llama3 = bpe_tokenizer::open(tokenizer_file("llama3"));
  const auto qwen2 = bpe_tokenizer::open(tokenizer_file("qwen2"));
  const auto gpt2 = bpe_tokenizer::open(tokenizer_file("gpt2"));
  // \p{N}{1,3}: digits in threes (Llama 3; its vocab has "123"), one by one (Qwen2)
  const auto d = pieces(llama3, "1234567");
  EXPECT_EQ(d.front(), "123");
  EXPECT_TRUE(boundary_after(d, "123456")) << json(d).dump();
  EXPECT_EQ(pieces(qwen2, "1234567").size(), 7u);
  // \s+(?!\S): a space run before a word leaves its last space to the word
  for (const auto* t : {&llama3, &qwen2, &gpt2}) EXPECT_TRUE(boundary_after(pieces(*t, "hello   world"), "hello  "));
  // \s*[\r\n]+ (Llama 3) keeps a run to its last newline whole; GPT-2 splits it before the last one
  EXPECT_TRUE(boundary_after(pieces(gpt2, "a\n\n  \nb"), "a\n\n  "));
  EXPECT_FALSE(boundary_after(pieces(llama3, "a\n\n  \nb"), "a\n\n  "));
  EXPECT_TRUE(boundary_after(pieces(llama3, "a\n\n  \nb"), "a\n\n  \n"));
  // decoding token by token gives the text back
  std::string all;
  for (const auto& p : pieces(llama3, "Once upon a time, 123 cats.")) all += p;
  EXPECT_EQ(all, "Once upon a time, 123 cats.");
}

TEST(bpe_tokenizer, decode_inverts_encode) {
  const auto xs = texts();
  for (const std::string name : {"llama3", "gpt2", "qwen2"}) {
    SCOPED_TRACE(name);
    const auto tok = bpe_tokenizer::open(tokenizer_file(name));
    // Qwen2's file normalizes to NFC and has added tokens that swallow spaces (<tool>) or decode as
    // Latin-1 bytes (café), as the library's decoder does; texts using those are left out.
    std::vector<int32_t> lossy;
    for (const char* t : {"<tool>", "ony", "caf\u00e9"})
      if (const auto id = tok.token_to_id(t); id && name == "qwen2") lossy.push_back(*id);
    int checked = 0;
    for (const std::string& s : xs) {
      const auto ids = tok.encode(s);
      if (std::find_first_of(ids.begin(), ids.end(), lossy.begin(), lossy.end()) != ids.end()) continue;
      EXPECT_EQ(tok.decode(ids), name == "qwen2" ? unicode::nfc(s) : s) << show(s);
      ++checked;
    }
    EXPECT_GT(checked, 300);
  }
  for (const auto& c : goldens().at("decodes")) {
    const auto tok = bpe_tokenizer::open(tokenizer_file(c.at("tokenizer")));
    EXPECT_EQ(tok.decode(c.at("ids").get<std::vector<int32_t>>(), c.at("skip_special_tokens").get<bool>()),
              c.at("text").get<std::string>());
  }
  const auto gpt2 = bpe_tokenizer::open(tokenizer_file("gpt2"));
  EXPECT_THROW(gpt2.decode(std::vector<int32_t>{gpt2.vocab_size()}), token_file_error);
}

TEST(bpe_tokenizer, nfc_matches_the_library) {
  const json& cases = goldens().at("nfc");
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) EXPECT_EQ(unicode::nfc(c[0].get<std::string>()), c[1].get<std::string>()) << show(c[0]);
  EXPECT_EQ(unicode::nfc("plain ascii"), "plain ascii");
  EXPECT_STREQ(unicode::version(), "16.0.0");  // as the library's regex engine
}

TEST(bpe_tokenizer, invalid_utf8_is_refused_with_its_offset) {
  const auto tok = bpe_tokenizer::open(tokenizer_file("gpt2"));
  for (const std::string& bad : {std::string("ok\xff"), std::string("ab\xc3"), std::string("ab\xed\xa0\x80"),
                                std::string("ab\xc0\xaf"), std::string("ab\xf4\x90\x80\x80")}) {
    try {
      tok.encode(bad);
      ADD_FAILURE() << "expected an error for byte " << int(static_cast<unsigned char>(bad[2]));
    } catch (const token_file_error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("not valid UTF-8 (byte 2 of it)"), std::string::npos) << m;
    }
  }
  EXPECT_EQ(unicode::utf8_lossy("a\xe4" "b\xf0\x9f\x98" "c"), "a\ufffdb\ufffdc");  // one U+FFFD per maximal subpart
}

// ---- malformed files --------------------------------------------------------------------------

struct temp_dir {
  fs::path path;
  temp_dir() : path(fs::temp_directory_path() / ("mixq-bpe-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
};

std::string error_of(const fs::path& file, const std::string& content) {
  std::ofstream(file, std::ios::binary) << content;
  try {
    bpe_tokenizer::open(file);
  } catch (const token_file_error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_error(const fs::path& file, const std::string& content, const std::string& expected) {
  const std::string m = error_of(file, content);
  EXPECT_EQ(m.rfind(file.string() + ": ", 0), 0u) << m;  // names the file first
  EXPECT_NE(m.find(expected), std::string::npos) << m;
}

TEST(bpe_tokenizer, malformed_files_are_named_by_file_and_key) {
  temp_dir dir;
  const fs::path f = dir.path / "tokenizer.json";
  const json gpt2 = json::parse(read_text(tokenizer_file("gpt2")));
  const json qwen2 = json::parse(read_text(tokenizer_file("qwen2")));
  const auto edited = [](json j, const std::string& pointer, const json& value) {
    j[json::json_pointer(pointer)] = value;
    return j.dump();
  };

  expect_error(f, "{\"model\": {", "not JSON (at byte");
  expect_error(f, "{}", "model is missing");
  expect_error(f, "[1, 2]", "the top level should be a JSON object");
  expect_error(f, edited(gpt2, "/model/type", "WordPiece"), "model.type 'WordPiece' is not supported (only BPE)");
  json no_vocab = gpt2;
  no_vocab["model"].erase("vocab");
  expect_error(f, no_vocab.dump(), "model.vocab is missing");
  expect_error(f, edited(gpt2, "/model/merges/12", "qqq zzz"), "model.merges[12] names 'qqq', which is not in model.vocab");
  expect_error(f, edited(gpt2, "/model/merges/3", "a b c"), "model.merges[3] 'a b c' should be two tokens separated by one space");
  expect_error(f, edited(gpt2, "/model/merges/4", json::array({"a", 7})), "model.merges[4] should be \"a b\" or [\"a\", \"b\"]");
  expect_error(f, edited(gpt2, "/model/vocab/Ġt", -3), "model.vocab['Ġt'] should be a token id");
  expect_error(f, edited(gpt2, "/pre_tokenizer", json{{"type", "Metaspace"}, {"replacement", "▁"}}),
               "pre_tokenizer.type 'Metaspace' is not a supported pre-tokenizer");
  expect_error(f, edited(qwen2, "/pre_tokenizer/pretokenizers/0/pattern/Regex", "\\w+"),
               "pre_tokenizer.pretokenizers[0].pattern.Regex is not one of the supported split patterns (GPT-2, Llama 3, "
               "Qwen2): '\\w+'");
  expect_error(f, edited(qwen2, "/pre_tokenizer/pretokenizers/0/behavior", "MergedWithNext"),
               "pre_tokenizer.pretokenizers[0].behavior 'MergedWithNext' is not supported");
  expect_error(f, edited(qwen2, "/pre_tokenizer/pretokenizers/1", json{{"type", "Digits"}}),
               "pre_tokenizer has no ByteLevel step");
  expect_error(f, edited(qwen2, "/normalizer", json{{"type", "NFKC"}}), "normalizer.type 'NFKC' is not a supported normalizer");
  expect_error(f, edited(gpt2, "/model/byte_fallback", true), "model.byte_fallback true is not supported");
  expect_error(f, edited(gpt2, "/added_tokens/0/id", 5), "added_tokens[0] gives '<|endoftext|>' id 5, but model.vocab gives it 0");
  expect_error(f, edited(gpt2, "/added_tokens/0/content", json()), "added_tokens[0].content should be a string");
  const json llama3 = json::parse(read_text(tokenizer_file("llama3")));
  expect_error(f, edited(llama3, "/post_processor/processors/1/single/0/SpecialToken/id", "<s>"),
               "post_processor.processors[1].single[0] names '<s>', which is not in post_processor.processors[1].special_tokens");
  expect_error(dir.path / "empty.json", "", "not JSON");
  try {
    bpe_tokenizer::open(dir.path / "missing" / "tokenizer.json");
    ADD_FAILURE() << "expected an error";
  } catch (const token_file_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing/tokenizer.json: cannot open"), std::string::npos) << e.what();
  }
  // Unsupported kinds are told apart from malformed files (open_text_tokenizer falls back on them).
  std::ofstream(f) << edited(gpt2, "/normalizer", json{{"type", "Prepend"}, {"prepend", "▁"}});
  EXPECT_THROW(bpe_tokenizer::open(f), unsupported_tokenizer_error);
  std::ofstream(f) << edited(gpt2, "/model/merges/12", "qqq zzz");
  try {
    bpe_tokenizer::open(f);
  } catch (const unsupported_tokenizer_error&) {
    ADD_FAILURE() << "a malformed file is not merely unsupported";
  } catch (const token_file_error&) {
  }
}

// ---- the product path ---------------------------------------------------------------------------

fs::path shared_dir() { return source_dir() / ".." / "shared"; }
bool have_shared() {
  if (fs::exists(shared_dir() / "models" / "stories260K")) return true;
  const char* ci = std::getenv("CI");
  if (ci && std::string(ci) == "true") ADD_FAILURE() << shared_dir() << " is missing";
  return false;
}

uint64_t fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids)
    for (int k = 0; k < 4; ++k) h = (h ^ (uint32_t(id) >> (8 * k) & 0xFF)) * 0x100000001b3ull;
  return h;
}

TEST(bpe_tokenizer, read_token_stream_uses_tokenizer_json) {
  temp_dir dir;
  std::ofstream(dir.path / "a.txt") << "  Once upon a time.\n<|endoftext|>\n\n<|endoftext|>Tom ran home. ";
  const auto llama3 = bpe_tokenizer::open(tokenizer_file("llama3"));
  const int32_t bos = *llama3.bos_id();
  std::vector<int32_t> want{bos};
  for (int32_t id : llama3.encode("Once upon a time.")) want.push_back(id);
  want.push_back(bos);
  for (int32_t id : llama3.encode("Tom ran home.")) want.push_back(id);
  EXPECT_EQ(read_token_stream(dir.path / "a.txt", tokenizer_file("llama3").parent_path(), 4096), want);

  // No BOS in the GPT-2 style file: the documents' ids, back to back.
  const auto gpt2 = bpe_tokenizer::open(tokenizer_file("gpt2"));
  std::vector<int32_t> plain = gpt2.encode("Once upon a time.");
  for (int32_t id : gpt2.encode("Tom ran home.")) plain.push_back(id);
  EXPECT_EQ(read_token_stream(dir.path / "a.txt", tokenizer_file("gpt2").parent_path(), 4096), plain);

  // The model's vocabulary must hold every id.
  EXPECT_THROW(read_token_stream(dir.path / "a.txt", tokenizer_file("llama3").parent_path(), 1000), token_file_error);

  // Neither file: the error names both.
  try {
    read_token_stream(dir.path / "a.txt", dir.path, 4096);
    ADD_FAILURE() << "expected an error";
  } catch (const token_file_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("tokenizer.json"), std::string::npos) << m;
    EXPECT_NE(m.find("tokenizer.model"), std::string::npos) << m;
  }

  // Text that is not UTF-8 is refused with its byte offset.
  std::ofstream(dir.path / "bad.txt", std::ios::binary) << "Once upon\n a \xc3(time";
  try {
    read_token_stream(dir.path / "bad.txt", tokenizer_file("llama3").parent_path(), 4096);
    ADD_FAILURE() << "expected an error";
  } catch (const token_file_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.txt: not UTF-8 text (ill-formed byte 0xc3 at byte offset 13)"), std::string::npos)
        << e.what();
  }
}

TEST(bpe_tokenizer, builtin_calibration_text_uses_tokenizer_json) {
  const auto llama3 = bpe_tokenizer::open(tokenizer_file("llama3"));
  std::vector<std::string> docs;
  const std::string text(builtin_calibration_text());
  for (size_t at = 0; at <= text.size();) {
    const size_t next = std::min(text.find("<|endoftext|>", at), text.size());
    std::string doc = text.substr(at, next - at);
    const size_t b = doc.find_first_not_of(" \t\r\n"), e = doc.find_last_not_of(" \t\r\n");
    if (b != std::string::npos) docs.push_back(doc.substr(b, e - b + 1));
    at = next + 13;
  }
  ASSERT_GT(docs.size(), 1u);
  const auto ids = builtin_calibration_tokens(tokenizer_file("llama3").parent_path(), 4096);
  EXPECT_EQ(ids, tokenize_documents(llama3, docs));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *llama3.bos_id()), long(docs.size()));
}

TEST(bpe_tokenizer, tinystories_stream_matches_the_library) {
  if (!have_shared()) GTEST_SKIP() << "../shared is absent";
  const json& g = goldens().at("tinystories_llama3");
  const auto ids = read_token_stream(shared_dir() / "data" / "tinystories" / "TinyStories-valid-reduced.txt",
                                     tokenizer_file("llama3").parent_path(), 0);
  ASSERT_EQ(ids.size(), g.at("tokens").get<size_t>());
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 64), g.at("first").get<std::vector<int32_t>>());
  EXPECT_EQ(fmt::format("{:016x}", fnv1a64(ids)), g.at("fnv1a64_u32le").get<std::string>());
}

TEST(bpe_tokenizer, tokenizer_json_is_preferred_unless_unsupported) {
  if (!have_shared()) GTEST_SKIP() << "../shared is absent";
  temp_dir dir;
  const fs::path sp_model = shared_dir() / "models" / "stories260K" / "tokenizer.model";
  std::ofstream(dir.path / "a.txt") << "Once upon a time.";
  const auto sp_ids = read_token_stream(dir.path / "a.txt", sp_model.parent_path(), 512);

  const fs::path both = dir.path / "both";
  fs::create_directories(both);
  fs::copy_file(sp_model, both / "tokenizer.model");
  fs::copy_file(tokenizer_file("llama3"), both / "tokenizer.json");
  const auto llama3 = bpe_tokenizer::open(tokenizer_file("llama3"));
  std::vector<int32_t> want{*llama3.bos_id()};
  for (int32_t id : llama3.encode("Once upon a time.")) want.push_back(id);
  EXPECT_EQ(read_token_stream(dir.path / "a.txt", both, 4096), want);
  EXPECT_NE(want, sp_ids);

  // A SentencePiece-style tokenizer.json (byte fallback) beside tokenizer.model: the latter encodes.
  json j = json::parse(read_text(tokenizer_file("llama3")));
  j["model"]["byte_fallback"] = true;
  std::ofstream(both / "tokenizer.json") << j.dump();
  EXPECT_EQ(read_token_stream(dir.path / "a.txt", both, 4096), sp_ids);
  // ... but alone it is an error, and a malformed one is an error even beside tokenizer.model.
  fs::remove(both / "tokenizer.model");
  EXPECT_THROW(read_token_stream(dir.path / "a.txt", both, 4096), unsupported_tokenizer_error);
  fs::copy_file(sp_model, both / "tokenizer.model");
  std::ofstream(both / "tokenizer.json") << "{";
  EXPECT_THROW(read_token_stream(dir.path / "a.txt", both, 4096), token_file_error);
}

}  // namespace
}  // namespace mixq
