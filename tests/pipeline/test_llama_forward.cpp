// The FP32 Llama forward pass and perplexity against the references of the real stories260K
// (shared/models/stories260K/reference.json), plus token-file validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "calib/token_file.hpp"
#include "pipeline/eval/perplexity.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr double kLogitTol = 1e-4;
constexpr double kPplTol = 1e-4;

// The stories260K checkpoint directory, or skip (fail under CI=true).
#define REQUIRE_SHARED(dir) MIXQ_REQUIRE_SHARED_MODEL(dir, "stories260K")

// Loaded once for the suite: the model and its reference.json.
struct stories {
  llama_model model;
  json ref;
};
stories& stories260k(const fs::path& dir) {
  static stories s = [&] {
    std::ifstream in(dir / "reference.json");
    return stories{llama_model::load(dir), json::parse(in)};
  }();
  return s;
}

TEST(llama, logits_after_bos_match_reference) {
  REQUIRE_SHARED(model_dir);
  const stories& s = stories260k(model_dir);
  const std::vector<int32_t> bos = {1};
  const std::vector<float> logits = s.model.forward(bos);  // [1, V]
  const auto& want = s.ref.at("logits_after_bos_first8");
  ASSERT_EQ(want.size(), 8u);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(logits[i], want[i].get<double>(), kLogitTol) << "logit " << i;
}

TEST(llama, greedy_from_bos_matches_reference) {
  REQUIRE_SHARED(model_dir);
  const stories& s = stories260k(model_dir);
  const std::vector<int32_t> want = s.ref.at("greedy_from_bos").at("ids").get<std::vector<int32_t>>();
  ASSERT_EQ(want.size(), 65u);
  const int64_t V = s.model.config().vocab;
  std::vector<int32_t> ids = {1};
  while (ids.size() < want.size()) {  // no KV cache: recompute the whole prefix each step
    const std::vector<float> logits = s.model.forward(ids);
    const float* last = logits.data() + (int64_t(ids.size()) - 1) * V;
    int32_t best = 0;
    for (int32_t i = 1; i < int32_t(V); ++i)
      if (last[i] > last[best]) best = i;
    ids.push_back(best);
  }
  EXPECT_EQ(ids, want);
}

void check_perplexity(const fs::path& model_dir, int64_t ctx, const char* key) {
  stories& s = stories260k(model_dir);
  const std::vector<int32_t> tokens = read_token_file(
      testing::shared_data("tinystories/TinyStories-valid-reduced.tok512.u16.bin"), s.model.config().vocab);
  ASSERT_EQ(int64_t(tokens.size()), s.ref.at("perplexity").at("n_tokens").get<int64_t>());
  const perplexity_result r = evaluate_perplexity(s.model, tokens, ctx);
  const json& want = s.ref.at("perplexity").at(key);
  EXPECT_EQ(r.predicted, want.at("predicted").get<int64_t>());
  EXPECT_NEAR(r.ppl, want.at("ppl").get<double>(), kPplTol);
  EXPECT_NEAR(r.mean_nll, want.at("mean_nll").get<double>(), 1e-5);
  ::testing::Test::RecordProperty("mean_nll", std::to_string(r.mean_nll));
}

TEST(llama, perplexity_ctx128_matches_reference) {
  REQUIRE_SHARED(model_dir);
  check_perplexity(model_dir, 128, "ctx128");
}

TEST(llama, perplexity_ctx512_matches_reference) {
  REQUIRE_SHARED(model_dir);
  check_perplexity(model_dir, 512, "ctx512");
}

// A scratch token file, removed when the test ends.
struct temp_file {
  fs::path path;
  temp_file(const std::string& suffix, const std::vector<unsigned char>& bytes)
      : path(fs::temp_directory_path() / ("mixq_test_tokens_" + std::to_string(::getpid()) + suffix)) {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  ~temp_file() { fs::remove(path); }
};

std::string error_of(const fs::path& path, int64_t vocab, token_dtype dtype = token_dtype::from_extension) {
  try {
    read_token_file(path, vocab, dtype);
  } catch (const token_file_error& e) {
    return e.what();
  }
  return "";
}

TEST(llama, token_file_reads_u16_and_u32_little_endian) {
  const temp_file u16(".u16.bin", {1, 0, 0x03, 0x01, 0xff, 0x01});
  EXPECT_EQ(read_token_file(u16.path, 512), (std::vector<int32_t>{1, 259, 511}));
  const temp_file u32(".u32.bin", {1, 0, 0, 0, 0x00, 0x01, 0x01, 0x00});
  EXPECT_EQ(read_token_file(u32.path, 70000), (std::vector<int32_t>{1, 65792}));
  const temp_file plain(".bin", {7, 0});
  EXPECT_EQ(read_token_file(plain.path, 512, token_dtype::u16), (std::vector<int32_t>{7}));
  EXPECT_NE(error_of(plain.path, 512).find("*.u16.bin"), std::string::npos);
}

TEST(llama, token_file_rejects_id_at_or_above_vocab) {
  const temp_file f(".u16.bin", {1, 0, 5, 0, 0x00, 0x02, 2, 0});  // ids 1, 5, 512, 2
  const std::string e = error_of(f.path, 512);
  EXPECT_NE(e.find(f.path.string()), std::string::npos) << e;
  EXPECT_NE(e.find("token id 512 at index 2"), std::string::npos) << e;
  EXPECT_EQ(error_of(f.path, 513), "");
}

TEST(llama, token_file_rejects_partial_id_and_missing_file) {
  const temp_file f(".u32.bin", {1, 0, 0, 0, 2, 0});
  EXPECT_NE(error_of(f.path, 512).find("not a whole number"), std::string::npos);
  const fs::path missing = fs::temp_directory_path() / "mixq_no_such_tokens.u16.bin";
  EXPECT_NE(error_of(missing, 512).find("not found"), std::string::npos);
}

TEST(llama, forward_rejects_bad_input) {
  REQUIRE_SHARED(model_dir);
  stories& s = stories260k(model_dir);
  EXPECT_THROW(s.model.forward(std::vector<int32_t>{1, 512}), std::invalid_argument);
  EXPECT_THROW(s.model.forward(std::vector<int32_t>(513, 1)), std::invalid_argument);
  EXPECT_THROW(evaluate_perplexity(s.model, std::vector<int32_t>(10, 1), 1024), std::invalid_argument);
}

// A synthetic Llama (mixq synth --arch llama --preset tiny --seed 0) against the logits transformers
// computes on the same checkpoint (tests/interop/check_hf_loading.py wrote the golden file).
TEST(llama, synth_checkpoint_logits_match_transformers) {
  const json golden = testing::read_golden("synth_llama_tiny_logits.json");
  const testing::synth_dir d(synth_arch::llama);
  const llama_model model = llama_model::load(d.dir);
  const auto tokens = golden["tokens"].get<std::vector<int32_t>>();
  const std::vector<float> logits = model.forward(tokens);
  ASSERT_EQ(logits.size(), tokens.size() * golden["logits"][0].size());
  EXPECT_LT(testing::worst_logit_difference(logits, golden["logits"]), 1e-5)
      << "largest relative difference from transformers";
}

}  // namespace
}  // namespace mixq
