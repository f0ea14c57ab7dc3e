// The safetensors reader and writer: round trips (every dtype, 0-rank and empty tensors, sharded
// checkpoints, the real checkpoints byte for byte), and every validation rule with a crafted file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/io/safetensors_writer.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

struct temp_dir {
  fs::path path;
  temp_dir() {
    path = fs::temp_directory_path() / ("mixq-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

std::vector<char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A file from a literal header (not padded) and a data buffer; header_length overrides the prefix.
void write_raw(const fs::path& p, const std::string& header, const std::string& data, int64_t header_length = -1) {
  std::ofstream out(p, std::ios::binary);
  const uint64_t n = header_length < 0 ? header.size() : uint64_t(header_length);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

std::string error_of(const fs::path& p) {
  try {
    safetensors_file::open(p);
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

std::span<const std::byte> as_bytes(const std::vector<uint8_t>& v) { return std::as_bytes(std::span(v)); }

TEST(safetensors, round_trip_every_dtype) {
  temp_dir dir;
  std::mt19937 rng(3);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<tensor_to_write> tensors;
  const dtype all[] = {dtype::boolean, dtype::u8,  dtype::i8,  dtype::f8_e5m2, dtype::f8_e4m3, dtype::i16,
                       dtype::u16,     dtype::f16, dtype::bf16, dtype::i32,    dtype::u32,     dtype::f32,
                       dtype::f64,     dtype::i64, dtype::u64,  dtype::f4};
  for (dtype t : all) {
    const std::vector<int64_t> shape = {3, 4};
    storage.emplace_back(size_t(12 * dtype_bits(t) / 8));
    for (auto& b : storage.back()) b = uint8_t(rng());
    tensors.push_back({"t." + std::string(dtype_name(t)), t, shape, as_bytes(storage.back())});
  }
  storage.emplace_back(4);  // a 0-rank scalar
  tensors.push_back({"scalar", dtype::f32, {}, as_bytes(storage.back())});
  storage.emplace_back(0);  // an empty tensor
  tensors.push_back({"empty", dtype::bf16, {0, 7}, as_bytes(storage.back())});
  sort_for_alignment(tensors);

  const fs::path p = dir.path / "all.safetensors";
  write_safetensors(p, tensors, {{"format", "pt"}, {"note", "ünïcode \"quoted\""}});
  const auto f = safetensors_file::open(p);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const auto& t : tensors) {
    const tensor_info& r = f.at(t.name);
    EXPECT_EQ(r.type, t.type) << t.name;
    EXPECT_EQ(r.shape, t.shape) << t.name;
    const auto got = f.bytes(r);
    ASSERT_EQ(got.size(), t.bytes.size()) << t.name;
    EXPECT_TRUE(std::ranges::equal(got, t.bytes)) << t.name;  // (memcmp: not with the empty tensor's null data)
    EXPECT_EQ(r.begin % uint64_t(std::max(1, dtype_bits(r.type) / 8)), 0u) << t.name << " is not aligned";
  }
  EXPECT_EQ(f.metadata(), (safetensors_metadata{{"format", "pt"}, {"note", "ünïcode \"quoted\""}}));
  // Header length is a multiple of 8 and no temporary file is left behind.
  uint64_t n = 0;
  std::memcpy(&n, read_bytes(p).data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
}

fs::path shared_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return fs::path(src ? src : ".") / ".." / "shared";
}

void require_shared(const fs::path& p) {
  if (fs::exists(p)) return;
  const char* ci = std::getenv("CI");
  if (ci && std::string(ci) == "true") FAIL() << p << " is missing (CI needs ../shared beside the clone)";
  GTEST_SKIP() << p << " is absent; skipping the real-model check";
}

// Reading a real checkpoint and writing it back in the same order reproduces it byte for byte.
TEST(safetensors, real_checkpoints_rewrite_byte_identical) {
  for (const char* model : {"stories260K", "nemotron-h-tiny"}) {
    const fs::path src = shared_dir() / "models" / model / "model.safetensors";
    require_shared(src);
    if (::testing::Test::IsSkipped()) return;
    const auto f = safetensors_file::open(src);
    std::vector<tensor_to_write> tensors;
    for (const auto& t : f.tensors()) tensors.push_back({t.name, t.type, t.shape, f.bytes(t)});
    temp_dir dir;
    write_safetensors(dir.path / "copy.safetensors", tensors, f.metadata());
    EXPECT_EQ(read_bytes(dir.path / "copy.safetensors"), read_bytes(src)) << model;
  }
}

TEST(safetensors, sharded_checkpoint_round_trip_and_index_rules) {
  temp_dir dir;
  std::vector<std::vector<uint8_t>> storage;
  std::vector<tensor_to_write> tensors;
  for (int i = 0; i < 7; ++i) {
    storage.emplace_back(size_t(400 + 100 * i), uint8_t(i));
    tensors.push_back({"layer." + std::to_string(i) + ".weight", dtype::u8, {int64_t(storage.back().size())},
                       as_bytes(storage.back())});
  }
  const auto files = write_checkpoint_tensors(dir.path, tensors, 1200);
  ASSERT_GT(files.size(), 2u);
  EXPECT_EQ(files.front().filename(), fmt::format("model-00001-of-{:05d}.safetensors", files.size() - 1));
  EXPECT_EQ(files.back().filename(), "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(std::ifstream(files.back()));
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.bytes.size();
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);

  const checkpoint c = checkpoint::open(dir.path);
  ASSERT_EQ(c.tensors().size(), tensors.size());
  for (const auto& e : c.tensors()) EXPECT_EQ(e.shard->bytes(*e.tensor)[0], std::byte(std::stoi(e.tensor->name.substr(6))));

  // The index must name every tensor, each in the shard that holds it.
  auto broken = index;
  broken["weight_map"]["layer.0.weight"] = files[1].filename().string();
  std::ofstream(files.back()) << broken.dump();
  try {
    checkpoint::open(dir.path);
    FAIL() << "expected an error";
  } catch (const io_error& e) {
    EXPECT_NE(std::string(e.what()).find("'layer.0.weight' is indexed in"), std::string::npos) << e.what();
  }
  broken = index;
  broken["weight_map"]["ghost.weight"] = files[0].filename().string();
  std::ofstream(files.back()) << broken.dump();
  try {
    checkpoint::open(dir.path);
    FAIL() << "expected an error";
  } catch (const io_error& e) {
    EXPECT_NE(std::string(e.what()).find("'ghost.weight' is indexed"), std::string::npos) << e.what();
  }

  // A model.safetensors beside the (broken) index is what transformers loads, and so mixq.
  std::vector<uint8_t> single(8, 9);
  write_safetensors(dir.path / "model.safetensors", {{"only.weight", dtype::u8, {8}, as_bytes(single)}});
  const checkpoint both = checkpoint::open(dir.path);
  ASSERT_EQ(both.tensors().size(), 1u);
  EXPECT_EQ(both.tensors()[0].tensor->name, "only.weight");
}

// One file opened twice shares one mapping (its pages count once in the resident set); a file
// rewritten since is mapped afresh.
TEST(safetensors, opens_of_one_file_share_its_mapping) {
  temp_dir dir;
  std::vector<uint8_t> bytes(64, 7);
  const fs::path p = dir.path / "m.safetensors";
  write_safetensors(p, {{"w", dtype::u8, {64}, as_bytes(bytes)}});
  const safetensors_file a = safetensors_file::open(p), b = safetensors_file::open(p);
  EXPECT_EQ(a.bytes(a.tensors()[0]).data(), b.bytes(b.tensors()[0]).data());
  std::vector<uint8_t> other(128, 9);
  write_safetensors(p, {{"w", dtype::u8, {128}, as_bytes(other)}});  // (a new file under the name)
  const safetensors_file c = safetensors_file::open(p);
  ASSERT_EQ(c.bytes(c.tensors()[0]).size(), 128u);
  EXPECT_EQ(c.bytes(c.tensors()[0])[0], std::byte(9));
  EXPECT_EQ(a.bytes(a.tensors()[0])[0], std::byte(7));  // the first mapping still holds the old file
}

TEST(safetensors, writer_refuses_bad_tensors_and_leaves_nothing) {
  temp_dir dir;
  std::vector<uint8_t> bytes(10);
  const fs::path p = dir.path / "bad.safetensors";
  EXPECT_THROW(write_safetensors(p, {{"w", dtype::f32, {3}, as_bytes(bytes)}}), io_error);  // 12 bytes needed
  EXPECT_THROW(write_safetensors(p, {{"w", dtype::u8, {10}, as_bytes(bytes)}, {"w", dtype::u8, {10}, as_bytes(bytes)}}),
               io_error);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
  EXPECT_THROW(write_safetensors(dir.path / "no-such-dir" / "x.safetensors", {}), io_error);
}

struct bad_file {
  const char* what;
  std::string header;
  std::string data;
  int64_t header_length;
  const char* expect;  // a piece of the message
};

TEST(safetensors, every_validation_rule_names_file_and_tensor) {
  const std::string ok = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, 'x');
  const bad_file cases[] = {
      {"header length past the end", "{" + ok + "}", eight, 1000, "runs past the end"},
      {"header length over 100 MB", "{" + ok + "}", eight, 200'000'000, "exceeds the 100 MB limit"},
      {"not JSON", "{\"w\":", eight, -1, "not valid JSON"},
      {"number too large (found by fuzzing)", R"({"__metadata__":88888888888E39888888988})", "", -1, "not valid JSON"},
      {"not an object", "[1,2]", "", -1, "does not start with '{'"},
      {"unknown dtype", R"({"w":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}})", eight, -1, "unknown dtype 'F12'"},
      {"missing dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight, -1, "missing string field 'dtype'"},
      {"negative dimension", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight, -1, "non-negative"},
      {"size mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight, -1, "need 12 bytes but"},
      {"end before begin", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", eight, -1, "end 0 < begin 8"},
      {"overlap",
       R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
       eight, -1, "'b' overlaps"},
      {"hole", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", eight, -1, "hole in the data buffer"},
      {"trailing bytes", "{" + ok + "}", eight + "yy", -1, "2 trailing bytes"},
      {"truncated", "{" + ok + "}", "xxxx", -1, "truncated"},
      {"duplicate", "{" + ok + "," + ok + "}", eight, -1, "'w' appears twice"},
      {"metadata not strings", R"({"__metadata__":{"a":1},)" + ok + "}", eight, -1, "__metadata__['a'] is not a string"},
      {"unknown field", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", eight, -1, "unknown field 'x'"},
      {"offsets not a pair", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight, -1, "[begin, end]"},
      {"shape overflow", R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", eight, -1,
       "overflows"},
      {"sub-byte tensor", R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,8]}})", eight, -1, "whole number of bytes"},
  };
  temp_dir dir;
  for (const auto& c : cases) {
    const fs::path p = dir.path / "bad.safetensors";
    write_raw(p, c.header, c.data, c.header_length);
    const std::string msg = error_of(p);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.what << ": got '" << msg << "'";
    EXPECT_NE(msg.find(p.string()), std::string::npos) << c.what << ": the message must name the file";
  }
  // Too short for a header at all.
  std::ofstream(dir.path / "tiny.safetensors") << "abc";
  EXPECT_NE(error_of(dir.path / "tiny.safetensors").find("too short"), std::string::npos);
  EXPECT_NE(error_of(dir.path / "absent.safetensors").find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace mixq
