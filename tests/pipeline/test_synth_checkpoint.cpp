// mixq synth: every architecture's tiny checkpoint holds exactly what its config.json describes and
// opens as a checkpoint; the same seed gives the same bytes (whatever the thread count), another
// seed other weights; values have trained-like statistics; large checkpoints are sharded with an
// index; a non-empty --out is never touched without --force; the small presets have the real
// structure at a few hundred MB with NVFP4-compatible K dims.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "formats/minifloat.hpp"
#include "pipeline/inspect/checkpoint_inspection.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr synth_arch kArchs[] = {synth_arch::llama, synth_arch::mixtral, synth_arch::qwen3_moe, synth_arch::nemotron_h};

// A fresh directory under /tmp, removed with everything in it.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("mixq-synth-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

synth_result synth_tiny(synth_arch arch, const fs::path& out, uint64_t seed = 0, dtype type = dtype::bf16,
                        uint64_t max_shard_bytes = 5'000'000'000) {
  synth_options o;
  o.arch = arch;
  o.seed = seed;
  o.type = type;
  o.max_shard_bytes = max_shard_bytes;
  o.out = out;
  return synth_checkpoint(o);
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Every tensor of a checkpoint decoded to float, by name.
struct tensor_values {
  dtype type;
  std::vector<int64_t> shape;
  std::vector<float> v;
};
std::map<std::string, tensor_values> read_all(const fs::path& dir) {
  const checkpoint c = checkpoint::open(dir);
  std::map<std::string, tensor_values> out;
  for (const auto& e : c.tensors()) {
    const auto bytes = e.shard->bytes(*e.tensor);
    tensor_values t{e.tensor->type, e.tensor->shape, std::vector<float>(size_t(e.tensor->numel()))};
    for (size_t i = 0; i < t.v.size(); ++i) {
      uint16_t h = 0;
      switch (t.type) {
        case dtype::f32: std::memcpy(&t.v[i], bytes.data() + 4 * i, 4); break;
        case dtype::bf16: std::memcpy(&h, bytes.data() + 2 * i, 2), t.v[i] = bf16_decode(h); break;
        case dtype::f16: std::memcpy(&h, bytes.data() + 2 * i, 2), t.v[i] = fp16_decode(h); break;
        default: ADD_FAILURE() << e.tensor->name << ": unexpected dtype " << dtype_name(t.type);
      }
    }
    out.emplace(e.tensor->name, std::move(t));
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

double mean(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / double(v.size());
}
double stddev(const std::vector<float>& v) {
  const double m = mean(v);
  double s = 0;
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size()));
}
double kurtosis(const std::vector<float>& v) {  // 3 for a Gaussian
  const double m = mean(v), sd = stddev(v);
  double s = 0;
  for (float x : v) s += std::pow((x - m) / sd, 4);
  return s / double(v.size());
}
// max over columns of max |w| in the column, divided by the median of those maxima.
double outlier_column_ratio(const tensor_values& t) {
  const int64_t rows = t.shape[0], cols = t.shape[1];
  std::vector<double> col_max(size_t(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      col_max[size_t(c)] = std::max(col_max[size_t(c)], double(std::fabs(t.v[size_t(r * cols + c)])));
  std::vector<double> sorted = col_max;
  std::sort(sorted.begin(), sorted.end());
  return sorted.back() / sorted[sorted.size() / 2];
}

TEST(synth, tiny_checkpoint_of_every_arch_matches_its_config) {
  for (synth_arch arch : kArchs) {
    SCOPED_TRACE(std::string(to_string(arch)));
    temp_dir tmp;
    const fs::path out = tmp.path / "model";
    const synth_result r = synth_tiny(arch, out);

    const checkpoint_inspection inspection = inspect_checkpoint(out);
    EXPECT_TRUE(inspection.problems.empty()) << inspection.problems.size() << " problems, first: "
                                             << (inspection.problems.empty() ? "" : inspection.problems[0]);
    const model_spec spec = model_spec_from_file(out);
    EXPECT_EQ(spec.architecture, to_string(arch));
    EXPECT_EQ(checkpoint::open(out).tensors().size(), expected_tensors(spec).size());
    EXPECT_EQ(r.parameters, parameter_count(spec));
    EXPECT_EQ(listing(out), (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
    EXPECT_EQ(listing(tmp.path), std::vector<std::string>{"model"});  // no staging directory left behind
    for (const auto& f : r.files) EXPECT_TRUE(fs::exists(f)) << f;

    const json config = json::parse(file_bytes(out / "config.json"));
    EXPECT_EQ(config["torch_dtype"], "bfloat16");
    EXPECT_EQ(config["vocab_size"], 512);  // the shared tok512 tokenizer fits
    EXPECT_EQ(json::parse(file_bytes(out / "generation_config.json"))["eos_token_id"], config["eos_token_id"]);

    // Every block kind of the architecture is present.
    std::set<block_kind> kinds;
    for (const auto& b : spec.blocks) kinds.insert(b.kind);
    const std::set<block_kind> want =
        arch == synth_arch::llama       ? std::set{block_kind::attention, block_kind::mlp}
        : arch == synth_arch::mixtral   ? std::set{block_kind::attention, block_kind::moe}
                                        : std::set{block_kind::attention, block_kind::mlp, block_kind::moe};
    if (arch == synth_arch::nemotron_h) {
      EXPECT_EQ(kinds, (std::set{block_kind::attention, block_kind::mlp, block_kind::moe, block_kind::mamba}));
      EXPECT_GT(spec.dims.mtp_layers, 0);
      EXPECT_GT(spec.dims.moe_latent, 0);
      EXPECT_GT(spec.dims.shared_intermediate, 0);
    } else {
      EXPECT_EQ(kinds, want);
    }
  }
}

TEST(synth, same_seed_gives_identical_bytes_whatever_the_thread_count) {
  temp_dir tmp;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  synth_tiny(synth_arch::nemotron_h, tmp.path / "a", 5);
  omp_set_num_threads(2);
  synth_tiny(synth_arch::nemotron_h, tmp.path / "b", 5);
  omp_set_num_threads(threads);
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"}) {
    const std::string a = file_bytes(tmp.path / "a" / f);
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == file_bytes(tmp.path / "b" / f)) << f << " differs";
  }
}

TEST(synth, another_seed_gives_other_weights_and_the_same_config) {
  temp_dir tmp;
  synth_tiny(synth_arch::qwen3_moe, tmp.path / "a", 1);
  synth_tiny(synth_arch::qwen3_moe, tmp.path / "b", 2);
  EXPECT_EQ(file_bytes(tmp.path / "a" / "config.json"), file_bytes(tmp.path / "b" / "config.json"));
  const auto a = read_all(tmp.path / "a"), b = read_all(tmp.path / "b");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_NE(t.v, b.at(name).v) << name << " did not change with the seed";
}

TEST(synth, values_have_trained_statistics) {
  temp_dir tmp;
  synth_tiny(synth_arch::nemotron_h, tmp.path / "m");
  const model_spec spec = model_spec_from_file(tmp.path / "m");
  const auto all = read_all(tmp.path / "m");
  for (const auto& [name, t] : all)
    for (float x : t.v) ASSERT_TRUE(std::isfinite(x)) << name;

  int norms = 0;
  for (const auto& s : spec.tensors) {
    const tensor_values& t = all.at(s.name);
    SCOPED_TRACE(s.name);
    const auto [lo, hi] = std::minmax_element(t.v.begin(), t.v.end());
    switch (s.kind) {
      case tensor_kind::norm:
        ++norms;
        EXPECT_GT(*lo, 0.85f);
        EXPECT_LT(*hi, 1.15f);
        EXPECT_NEAR(mean(t.v), 1.0, 0.02);
        break;
      case tensor_kind::embedding: EXPECT_NEAR(stddev(t.v), 0.02, 0.002); break;
      case tensor_kind::router_bias:
        EXPECT_EQ(t.type, dtype::f32);
        EXPECT_LT(std::max(-*lo, *hi), 0.01f);
        break;
      case tensor_kind::ssm_param:
        EXPECT_EQ(t.type, dtype::f32);
        for (float x : t.v) {
          if (ends_with(s.name, ".A_log")) {
            EXPECT_TRUE(x >= 0 && x <= std::log(16.0f) + 1e-6f) << x;
          } else if (ends_with(s.name, ".D")) {
            EXPECT_NEAR(x, 1.0f, 0.3f);
          } else {
            const double dt = std::log1p(std::exp(double(x)));  // softplus(dt_bias)
            EXPECT_TRUE(dt >= 0.999e-3 && dt <= 0.1001) << s.name << ": dt " << dt;
          }
        }
        break;
      case tensor_kind::conv_weight:
      case tensor_kind::conv_bias:
      case tensor_kind::linear_bias: EXPECT_LT(stddev(t.v), 0.2); break;
    }
  }
  EXPECT_GT(norms, 10);

  // Linears: fan-in scaled; outlier input columns where they read the residual stream, heavy
  // tails where they write back, neither on lm_head; routers smaller.
  int readers = 0, readers_with_outliers = 0;
  for (const auto& l : spec.linears) {
    const tensor_values& t = all.at(l.weight_name());
    SCOPED_TRACE(l.module);
    const double fan_in_sigma = 1.0 / std::sqrt(double(l.in_features));
    const bool writes_back = ends_with(l.module, "o_proj") || ends_with(l.module, "down_proj") ||
                             ends_with(l.module, "out_proj") || ends_with(l.module, "fc2_latent_proj");
    if (l.role == linear_role::lm_head) {
      EXPECT_NEAR(stddev(t.v), fan_in_sigma, 0.05 * fan_in_sigma);
      EXPECT_LT(outlier_column_ratio(t), 3.0);
      EXPECT_LT(kurtosis(t.v), 3.3);
    } else if (l.role == linear_role::router) {
      EXPECT_LT(stddev(t.v), 0.5 * fan_in_sigma);
    } else if (writes_back) {
      EXPECT_GT(kurtosis(t.v), 4.0);
    } else if (l.role != linear_role::mtp_fusion) {
      ++readers;
      readers_with_outliers += outlier_column_ratio(t) >= 5.0;
    }
  }
  EXPECT_GT(readers, 20);
  EXPECT_GE(readers_with_outliers * 4, readers) << readers_with_outliers << " of " << readers;
}

TEST(synth, dtype_sets_storage_and_torch_dtype_and_keeps_values) {
  temp_dir tmp;
  synth_tiny(synth_arch::nemotron_h, tmp.path / "bf16", 3);
  synth_tiny(synth_arch::nemotron_h, tmp.path / "f32", 3, dtype::f32);
  synth_tiny(synth_arch::nemotron_h, tmp.path / "f16", 3, dtype::f16);
  EXPECT_EQ(json::parse(file_bytes(tmp.path / "f32" / "config.json"))["torch_dtype"], "float32");
  EXPECT_EQ(json::parse(file_bytes(tmp.path / "f16" / "config.json"))["torch_dtype"], "float16");
  const auto bf16 = read_all(tmp.path / "bf16"), f32 = read_all(tmp.path / "f32"), f16 = read_all(tmp.path / "f16");
  for (const auto& [name, t] : f32) EXPECT_EQ(t.type, dtype::f32) << name;
  // Linears are drawn as BF16 (synth_make_weight) whatever the storage type.
  for (const auto& l : model_spec_from_file(tmp.path / "f32").linears)
    EXPECT_EQ(f32.at(l.weight_name()).v, bf16.at(l.weight_name()).v) << l.module << ": not the BF16 values widened";
  for (const auto& [name, t] : f16) {
    const bool kept_f32 = ends_with(name, "A_log") || ends_with(name, ".D") || ends_with(name, "dt_bias") ||
                          ends_with(name, "e_score_correction_bias");
    EXPECT_EQ(t.type, kept_f32 ? dtype::f32 : dtype::f16) << name;
  }
}

TEST(synth, shards_with_an_index_above_max_shard_size) {
  temp_dir tmp;
  const fs::path out = tmp.path / "sharded";
  const uint64_t max_shard = 100'000;
  const synth_result r = synth_tiny(synth_arch::nemotron_h, out, 0, dtype::bf16, max_shard);
  ASSERT_GT(r.tensor_bytes, 3 * max_shard);
  const json index = json::parse(file_bytes(out / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], r.tensor_bytes);
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  EXPECT_GE(shards.size(), 3u);
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  EXPECT_TRUE(shards.count(fmt::format("model-00001-of-{:05d}.safetensors", shards.size())));

  const checkpoint c = checkpoint::open(out);
  EXPECT_EQ(c.shards().size(), shards.size());
  for (const auto& s : c.shards()) {
    uint64_t payload = 0;
    for (const auto& t : s.tensors()) payload += t.end - t.begin;
    EXPECT_TRUE(payload <= max_shard || s.tensors().size() == 1) << s.path();
  }
  EXPECT_TRUE(inspect_checkpoint(out).problems.empty());
  // Same tensors, same values as the unsharded checkpoint.
  synth_tiny(synth_arch::nemotron_h, tmp.path / "single", 0);
  const auto sharded = read_all(out), single = read_all(tmp.path / "single");
  ASSERT_EQ(sharded.size(), single.size());
  for (const auto& [name, t] : single) EXPECT_EQ(t.v, sharded.at(name).v) << name;
}

TEST(synth, refuses_a_non_empty_out_and_leaves_it_untouched) {
  temp_dir tmp;
  const fs::path out = tmp.path / "taken";
  fs::create_directories(out);
  std::ofstream(out / "keep.txt") << "precious";
  EXPECT_THROW(synth_tiny(synth_arch::llama, out), io_error);
  EXPECT_EQ(listing(out), std::vector<std::string>{"keep.txt"});
  EXPECT_EQ(file_bytes(out / "keep.txt"), "precious");
  EXPECT_EQ(listing(tmp.path), std::vector<std::string>{"taken"});

  std::ofstream(tmp.path / "a-file") << "x";  // not a directory
  EXPECT_THROW(synth_tiny(synth_arch::llama, tmp.path / "a-file"), io_error);
  EXPECT_EQ(file_bytes(tmp.path / "a-file"), "x");

  fs::create_directories(tmp.path / "empty");  // an empty directory is fine
  EXPECT_NO_THROW(synth_tiny(synth_arch::llama, tmp.path / "empty" / ""));
  EXPECT_TRUE(fs::exists(tmp.path / "empty" / "model.safetensors"));

  synth_options forced;  // --force replaces the contents
  forced.out = out;
  forced.force = true;
  synth_checkpoint(forced);
  EXPECT_EQ(listing(out), (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
  EXPECT_EQ(listing(tmp.path), (std::vector<std::string>{"a-file", "empty", "taken"}));
}

TEST(synth, presets_have_the_real_structure_at_their_size) {
  for (synth_arch arch : kArchs)
    for (synth_preset preset : {synth_preset::tiny, synth_preset::small}) {
      SCOPED_TRACE(fmt::format("{} {}", to_string(arch), to_string(preset)));
      const json config = synth_config(arch, preset);
      EXPECT_EQ(config["model_type"], to_string(arch));
      EXPECT_EQ(config["architectures"].size(), 1u);
      const model_spec spec = model_spec_from_config(config, "preset");
      const int64_t params = parameter_count(spec);
      if (preset == synth_preset::tiny) {
        EXPECT_LT(params, 1'000'000);
      } else {
        EXPECT_GE(2 * params, 200'000'000);  // 200-400 MB as BF16
        EXPECT_LE(2 * params, 400'000'000);
      }
      for (const auto& l : spec.linears) EXPECT_EQ(l.in_features % 16, 0) << l.module << ": K not NVFP4-blockable";
      if (arch == synth_arch::nemotron_h && preset == synth_preset::small) {
        std::map<block_kind, int> kinds;
        for (const auto& b : spec.blocks) kinds[b.kind] += !b.mtp;
        EXPECT_GE(kinds[block_kind::mamba], 8);
        EXPECT_GE(kinds[block_kind::moe], 8);
        EXPECT_GE(kinds[block_kind::attention], 2);
        EXPECT_GE(spec.dims.experts, 64);
        EXPECT_GT(spec.dims.shared_intermediate, 0);
        EXPECT_GT(spec.dims.moe_latent, 0);
        EXPECT_EQ(spec.dims.mtp_layers, 1);
      }
    }
}

TEST(synth, names_and_sizes_parse_like_the_cli_expects) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("500mb"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("4GiB"), uint64_t(4) << 30);
  EXPECT_EQ(parse_byte_size("100KB"), 100'000u);
  EXPECT_EQ(parse_byte_size("123"), 123u);
  for (const char* bad : {"", "GB", "0GB", "5 GB", "5XB", "-1GB", "99999999999999TB"})
    EXPECT_FALSE(parse_byte_size(bad).has_value()) << bad;
  for (synth_arch a : kArchs) EXPECT_EQ(parse_synth_arch(to_string(a)), a);
  EXPECT_FALSE(parse_synth_arch("gpt2").has_value());
  EXPECT_EQ(parse_synth_preset("small"), synth_preset::small);
  EXPECT_THROW(synth_config(synth_arch::llama, synth_preset::tiny, dtype::f8_e4m3), std::invalid_argument);
}

}  // namespace
}  // namespace mixq
