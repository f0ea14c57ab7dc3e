// Calibration statistics: bit-exact HDF5 round trips, atomic writes, readable errors for damaged
// files, the fingerprint hash and the --resume mismatch sentence.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <bit>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "calib/calibration_stats.hpp"
#include "calib/search_scores.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

// A scratch directory per test, removed at scope end.
struct scratch_dir {
  fs::path dir;
  scratch_dir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir = fs::temp_directory_path() / ("mixq-stats-" + std::string(info->name()) + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~scratch_dir() { fs::remove_all(dir); }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

calibration_stats sample_stats() {
  calibration_stats s;
  s.fingerprint = {"0123456789abcdef", "fedcba9876543210", "00000000deadbeef"};
  s.sequences = 512;
  s.tokens = int64_t(512) * 4096;
  s.input_amax = {{"backbone.layers.1.mixer.experts.3.up_proj", 3.25f},
                  {"backbone.layers.1.mixer.experts.3.down_proj", std::numeric_limits<float>::denorm_min()},
                  {"backbone.layers.0.mixer.in_proj", 0.0f},
                  {"backbone.layers.0.mixer.out_proj", std::numeric_limits<float>::max()},
                  {"model.layers.0.self_attn.q_proj", 1.0e-38f},
                  {"lm_head", 65504.0f}};
  s.k_amax = {{"model.layers.0.self_attn", 12.5f}, {"model.layers.1.self_attn", -0.0f}};
  s.v_amax = {{"model.layers.0.self_attn", 0.125f}, {"model.layers.1.self_attn", 7.0e-45f}};
  s.expert_tokens = {{"backbone.layers.1.mixer.experts.3", 123456789012},
                     {"backbone.layers.1.mixer.experts.0", 0}};
  return s;
}

template <class T>
void expect_bit_exact(const std::map<std::string, T>& want, const std::map<std::string, T>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [name, value] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    if constexpr (std::is_same_v<T, float>)
      EXPECT_EQ(std::bit_cast<uint32_t>(value), std::bit_cast<uint32_t>(got.at(name))) << name;
    else
      EXPECT_EQ(value, got.at(name)) << name;
  }
}

// The message of the error `f` throws; fails the test when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const token_file_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no token_file_error thrown";
  return "";
}

// Opens a written file with HDF5 directly, to damage it the way a test needs.
template <class F>
void edit_hdf5(const fs::path& file, F&& edit) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  edit(f);
  H5Fclose(f);
}

TEST(CalibrationStats, RoundTripIsBitExact) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  const calibration_stats want = sample_stats();
  write_calibration_stats(file, want);
  const calibration_stats got = read_calibration_stats(file);
  EXPECT_EQ(want.fingerprint, got.fingerprint);
  EXPECT_EQ(want.sequences, got.sequences);
  EXPECT_EQ(want.tokens, got.tokens);
  expect_bit_exact(want.input_amax, got.input_amax);
  expect_bit_exact(want.k_amax, got.k_amax);
  expect_bit_exact(want.v_amax, got.v_amax);
  expect_bit_exact(want.expert_tokens, got.expert_tokens);
}

TEST(CalibrationStats, EmptyMapsAndStringsRoundTrip) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  calibration_stats want;
  want.input_amax = {{"", 1.0f}};  // an empty name still has a slot
  write_calibration_stats(file, want);
  const calibration_stats got = read_calibration_stats(file);
  EXPECT_EQ(got.fingerprint, stats_fingerprint{});
  EXPECT_EQ(got.sequences, 0);
  EXPECT_EQ(got.input_amax, want.input_amax);
  EXPECT_TRUE(got.k_amax.empty());
  EXPECT_TRUE(got.v_amax.empty());
  EXPECT_TRUE(got.expert_tokens.empty());
}

TEST(CalibrationStats, WriteReplacesAtomically) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  write_calibration_stats(file, calibration_stats{});
  write_calibration_stats(file, sample_stats());  // over an existing file
  EXPECT_FALSE(fs::exists(tmp.dir / "stats.h5.tmp"));
  EXPECT_EQ(read_calibration_stats(file).sequences, 512);
}

TEST(CalibrationStats, FailedWriteThrowsAndLeavesNothing) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "missing-dir" / "stats.h5";
  const std::string msg = error_of([&] { write_calibration_stats(file, sample_stats()); });
  EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tmp.dir / "missing-dir"));

  // The rename fails when the target is a directory: the temporary goes too.
  const fs::path blocked = tmp.dir / "blocked.h5";
  fs::create_directories(blocked / "inside");
  const std::string msg2 = error_of([&] { write_calibration_stats(blocked, sample_stats()); });
  EXPECT_NE(msg2.find("blocked.h5"), std::string::npos) << msg2;
  EXPECT_FALSE(fs::exists(tmp.dir / "blocked.h5.tmp"));
}

TEST(CalibrationStats, MissingFileIsNamed) {
  const std::string msg = error_of([] { read_calibration_stats("/nonexistent/stats.h5"); });
  EXPECT_NE(msg.find("/nonexistent/stats.h5"), std::string::npos) << msg;
}

TEST(CalibrationStats, GarbageFileIsNamed) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  write_bytes(file, "this is not an HDF5 file, just some text that happens to be here\n");
  const std::string msg = error_of([&] { read_calibration_stats(file); });
  EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a readable HDF5 file"), std::string::npos) << msg;
}

TEST(CalibrationStats, TruncatedFileIsNamed) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  write_calibration_stats(file, sample_stats());
  const std::string bytes = read_bytes(file);
  for (size_t keep : {size_t(0), size_t(7), size_t(100), bytes.size() / 2, bytes.size() - 1}) {
    const fs::path cut = tmp.dir / ("cut-" + std::to_string(keep) + ".h5");
    write_bytes(cut, bytes.substr(0, keep));
    const std::string msg = error_of([&] { read_calibration_stats(cut); });
    EXPECT_NE(msg.find(cut.string()), std::string::npos) << msg;
  }
}

TEST(CalibrationStats, MissingGroupIsNamed) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  write_calibration_stats(file, sample_stats());
  edit_hdf5(file, [](hid_t f) { ASSERT_GE(H5Ldelete(f, "/k_amax", H5P_DEFAULT), 0); });
  const std::string msg = error_of([&] { read_calibration_stats(file); });
  EXPECT_EQ(msg, file.string() + ": missing group /k_amax");
}

TEST(CalibrationStats, MissingDatasetAndAttributeAreNamed) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  write_calibration_stats(file, sample_stats());
  edit_hdf5(file, [](hid_t f) { ASSERT_GE(H5Adelete_by_name(f, "/fingerprint", "data", H5P_DEFAULT), 0); });
  EXPECT_EQ(error_of([&] { read_calibration_stats(file); }),
            file.string() + ": missing attribute 'data' of /fingerprint");

  write_calibration_stats(file, sample_stats());
  edit_hdf5(file, [](hid_t f) { ASSERT_GE(H5Ldelete(f, "/expert_tokens/values", H5P_DEFAULT), 0); });
  EXPECT_EQ(error_of([&] { read_calibration_stats(file); }),
            file.string() + ": missing dataset /expert_tokens/values");
}

TEST(CalibrationStats, LengthMismatchIsNamed) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "stats.h5";
  calibration_stats s;
  s.input_amax = {{"a", 1.0f}, {"b", 2.0f}, {"c", 3.0f}, {"d", 4.0f}};
  write_calibration_stats(file, s);
  edit_hdf5(file, [](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "/input_amax/values", H5P_DEFAULT), 0);
    const hsize_t dims[1] = {3};
    const float values[3] = {1, 2, 3};
    const hid_t space = H5Screate_simple(1, dims, nullptr);
    const hid_t set =
        H5Dcreate2(f, "/input_amax/values", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), 0);
    H5Dclose(set);
    H5Sclose(space);
  });
  EXPECT_EQ(error_of([&] { read_calibration_stats(file); }),
            file.string() + ": /input_amax/values has 3 entries but names has 4");
}

TEST(CalibrationStats, WrongFormatOrVersionIsRefused) {
  scratch_dir tmp;
  const fs::path file = tmp.dir / "other.h5";
  {  // a valid HDF5 file of someone else's
    const hid_t f = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 5);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(f, "format", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, type, "other");
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    H5Fclose(f);
  }
  std::string msg = error_of([&] { read_calibration_stats(file); });
  EXPECT_NE(msg.find(file.string() + ": not a mixq calibration-statistics file (format 'other'"), std::string::npos)
      << msg;

  write_calibration_stats(file, sample_stats());
  edit_hdf5(file, [](hid_t f) {
    const int64_t version = 2;
    const hid_t attr = H5Aopen(f, "version", H5P_DEFAULT);
    ASSERT_GE(H5Awrite(attr, H5T_NATIVE_INT64, &version), 0);
    H5Aclose(attr);
  });
  msg = error_of([&] { read_calibration_stats(file); });
  EXPECT_NE(msg.find(file.string() + ": calibration-statistics version 2"), std::string::npos) << msg;
}

TEST(Fingerprint, Fnv1aKnownVectors) {
  EXPECT_EQ(fnv1a_hex("", 0), "cbf29ce484222325");
  EXPECT_EQ(fnv1a_hex("a", 1), "af63dc4c8601ec8c");
  EXPECT_EQ(fnv1a_hex("foobar", 6), "85944171f73967e8");
  // The seed continues a hash: hashing in two pieces equals hashing the whole.
  EXPECT_EQ(fnv1a_hex("bar", 3, std::stoull(fnv1a_hex("foo", 3), nullptr, 16)), "85944171f73967e8");
}

fs::path stories260k() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  const fs::path dir = fs::path(src ? src : ".") / ".." / "shared" / "models" / "stories260K";
  return fs::exists(dir / "config.json") ? dir : fs::path{};
}

TEST(Fingerprint, ModelFingerprintIsStableAndSeesTheConfig) {
  const fs::path model = stories260k();
  if (model.empty()) {
    const char* ci = std::getenv("CI");
    if (ci && std::string(ci) == "true") FAIL() << "../shared/models/stories260K is missing (CI needs ../shared)";
    GTEST_SKIP() << "../shared/models/stories260K not found through MIXQ_SOURCE_DIR";
  }
  const std::string fp = model_fingerprint(model);
  EXPECT_EQ(fp.size(), 16u);
  EXPECT_EQ(fp, model_fingerprint(model));

  scratch_dir tmp;
  fs::copy_file(model / "config.json", tmp.dir / "config.json");
  fs::copy_file(model / "model.safetensors", tmp.dir / "model.safetensors");
  fs::permissions(tmp.dir / "config.json", fs::perms::owner_write, fs::perm_options::add);
  EXPECT_EQ(model_fingerprint(tmp.dir), fp);  // other files in the directory do not count

  std::string config = read_bytes(tmp.dir / "config.json");
  config.insert(config.find('{') + 1, " ");
  write_bytes(tmp.dir / "config.json", config);
  EXPECT_NE(model_fingerprint(tmp.dir), fp);
}

// The same shapes with other weights (a fine-tuned checkpoint) are another model: every sample of
// the data sees them. Here one byte at the start, in the middle and at the end of the data.
TEST(Fingerprint, ModelFingerprintSeesTheWeights) {
  const fs::path model = stories260k();
  if (model.empty()) GTEST_SKIP() << "../shared/models/stories260K not found through MIXQ_SOURCE_DIR";
  scratch_dir tmp;
  fs::copy_file(model / "config.json", tmp.dir / "config.json");
  const std::string weights = read_bytes(model / "model.safetensors");
  write_bytes(tmp.dir / "model.safetensors", weights);
  const std::string fp = model_fingerprint(tmp.dir);
  uint64_t header_len = 0;
  for (int b = 0; b < 8; ++b) header_len |= uint64_t(uint8_t(weights[size_t(b)])) << (8 * b);
  const size_t data_start = 8 + header_len;
  for (const size_t at : {data_start, data_start + (weights.size() - data_start) / 2, weights.size() - 1}) {
    std::string edited = weights;
    edited[at] = char(edited[at] ^ 0x01);
    write_bytes(tmp.dir / "model.safetensors", edited);
    EXPECT_NE(model_fingerprint(tmp.dir), fp) << "byte " << at;
  }
  write_bytes(tmp.dir / "model.safetensors", weights);
  EXPECT_EQ(model_fingerprint(tmp.dir), fp);
}

TEST(Fingerprint, ModelFingerprintSeesShardHeaders) {
  scratch_dir tmp;
  write_bytes(tmp.dir / "config.json", "{}");
  const std::string bare = model_fingerprint(tmp.dir);
  const std::string header = "{}";
  std::string shard(8, '\0');
  shard[0] = char(header.size());
  write_bytes(tmp.dir / "model-00001-of-00001.safetensors", shard + header);
  const std::string with_shard = model_fingerprint(tmp.dir);
  EXPECT_NE(with_shard, bare);
  shard[0] = 3;
  write_bytes(tmp.dir / "model-00001-of-00001.safetensors", shard + "{ }");
  EXPECT_NE(model_fingerprint(tmp.dir), with_shard);

  shard[0] = 100;  // a header longer than the file
  write_bytes(tmp.dir / "model-00001-of-00001.safetensors", shard + "{}");
  const std::string msg = error_of([&] { model_fingerprint(tmp.dir); });
  EXPECT_NE(msg.find("model-00001-of-00001.safetensors"), std::string::npos) << msg;
}

TEST(Fingerprint, ModelFingerprintNeedsConfig) {
  scratch_dir tmp;
  const std::string msg = error_of([&] { model_fingerprint(tmp.dir); });
  EXPECT_NE(msg.find((tmp.dir / "config.json").string()), std::string::npos) << msg;
}

TEST(Fingerprint, MismatchNamesEveryDifferingPart) {
  const stats_fingerprint stored{"aaaa", "bbbb", "cccc"};
  EXPECT_EQ(describe_fingerprint_mismatch(stored, stored), "");

  EXPECT_EQ(describe_fingerprint_mismatch(stored, {"dddd", "bbbb", "eeee"}),
            "the stored statistics were computed for a different model and different calibration data "
            "(stored model aaaa, now dddd; stored data cccc, now eeee); rerun without --resume or point "
            "--run-dir elsewhere");
  const std::string all = describe_fingerprint_mismatch(stored, {"1", "2", "3"});
  EXPECT_NE(all.find("a different model, different calibration settings and different calibration data"),
            std::string::npos)
      << all;
  const std::string settings = describe_fingerprint_mismatch(stored, {"aaaa", "ffff", "cccc"});
  EXPECT_NE(settings.find("computed for different calibration settings (stored settings bbbb, now ffff)"),
            std::string::npos)
      << settings;
}

}  // namespace
}  // namespace mixq

namespace mixq {
namespace {

TEST(SearchScores, RoundTripsAndNamesDamage) {
  const std::filesystem::path file = std::filesystem::temp_directory_path() / ("mixq-scores-" + std::to_string(::getpid()) + ".h5");
  search_scores_table t;
  t.method = "fisher";
  t.fingerprint = "0123456789abcdef";
  t.budget_bits = 5.4;
  t.effective_bits = 5.3912;
  t.format_bits = {{"bf16", 16.0}, {"fp8", 8.0}, {"nvfp4", 4.5}};
  t.weights = {{"model.layers.0.self_attn", 8192}, {"model.layers.0.mlp.down_proj", 11008}};
  t.scores["bf16"] = {{"model.layers.0.self_attn", 0.0}, {"model.layers.0.mlp.down_proj", 0.0}};
  t.scores["fp8"] = {{"model.layers.0.self_attn", 1.5e-7}, {"model.layers.0.mlp.down_proj", 3.25e-5}};
  t.scores["nvfp4"] = {{"model.layers.0.self_attn", 2.0e-3}};  // down_proj cannot hold NVFP4
  t.chosen = {{"model.layers.0.self_attn", "nvfp4"}, {"model.layers.0.mlp.down_proj", "fp8"}};
  write_search_scores(file, t);
  const search_scores_table back = read_search_scores(file);
  EXPECT_EQ(back.method, t.method);
  EXPECT_EQ(back.fingerprint, t.fingerprint);
  EXPECT_EQ(back.budget_bits, t.budget_bits);
  EXPECT_EQ(back.effective_bits, t.effective_bits);
  EXPECT_EQ(back.format_bits, t.format_bits);
  EXPECT_EQ(back.weights, t.weights);
  EXPECT_EQ(back.scores, t.scores);
  EXPECT_EQ(back.chosen, t.chosen);
  EXPECT_FALSE(std::filesystem::exists(file.string() + ".tmp"));

  t.chosen["model.layers.0.self_attn"] = "mxfp4";
  try {
    write_search_scores(file, t);
    ADD_FAILURE() << "an unlisted format was written";
  } catch (const token_file_error& e) {
    EXPECT_NE(std::string(e.what()).find("chose 'mxfp4'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_search_scores(file).chosen.at("model.layers.0.self_attn"), "nvfp4");  // the old file survives
  std::ofstream(file, std::ios::trunc) << "not hdf5";
  EXPECT_THROW(read_search_scores(file), token_file_error);
  std::filesystem::remove(file);
}

}  // namespace
}  // namespace mixq
