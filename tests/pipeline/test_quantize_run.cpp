// mixq quantize end to end: real checkpoints through calibrate -> quantize -> export -> re-load, the
// run directory's statistics (resume, refused mismatches), uncalibrated experts, atomic exports.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/calibration_stats.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/run_paths.hpp"
#include "pipeline/plan/run_plan.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "tests/pipeline/model_test_support.hpp"
#include "tests/same_statistics.hpp"

namespace mixq {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

struct scratch_dir {
  fs::path path;
  explicit scratch_dir(const std::string& name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~scratch_dir() { fs::remove_all(path); }
};

recipe test_recipe(const std::string& rules, const std::string& extra = "") {
  return parse_recipe("name: test\ncalibration:\n  samples: 4\n  seq_len: 128\nquantize:\n  rules:\n" + rules + extra,
                      "test.yaml");
}

// run_quantize's error for rq, or "" where it ran through.
std::string refusal_of(const quantize_request& rq) {
  try {
    run_quantize(rq);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

struct export_view {
  checkpoint ckpt;
  explicit export_view(const fs::path& dir) : ckpt(checkpoint::open(dir)) {}
  const tensor_info* find(const std::string& name) const {
    for (const auto& s : ckpt.shards())
      if (const tensor_info* t = s.find(name)) return t;
    return nullptr;
  }
  float scalar(const std::string& name) const {
    for (const auto& s : ckpt.shards())
      if (const tensor_info* t = s.find(name)) {
        float v;
        std::memcpy(&v, s.bytes(*t).data(), 4);
        return v;
      }
    ADD_FAILURE() << name << " missing";
    return 0.0f;
  }
  std::span<const std::byte> bytes(const std::string& name) const {
    for (const auto& s : ckpt.shards())
      if (const tensor_info* t = s.find(name)) return s.bytes(*t);
    return {};
  }
};

// The export's tensor bytes as `mixq plan` predicts them, from config.json and the checkpoint's headers.
uint64_t planned_export_bytes(const quantize_request& rq) {
  const model_spec spec = model_spec_from_file(rq.model);
  const dtype_lookup dtypes = checkpoint_dtypes(checkpoint::open(rq.model), spec, dtype::bf16);
  return make_run_plan(spec, rq.rcp, dtypes).export_bytes;
}

const std::string kLlamaNvfp4Rules =
    "    - match: lm_head\n      format: bf16\n    - match: \"*\"\n      format: nvfp4\n      weights: four_over_six\n";

// model -> out under the NVFP4 Llama rules above.
quantize_request nvfp4_request(const fs::path& model, const fs::path& out) {
  quantize_request rq;
  rq.model = model;
  rq.out = out;
  rq.rcp = test_recipe(kLlamaNvfp4Rules);
  return rq;
}

TEST(quantize_run, stories260k_nvfp4_export_reloads_to_the_fake_quant_perplexity) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-s");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe(kLlamaNvfp4Rules);
  const quantize_report r = run_quantize(rq);
  EXPECT_EQ(r.exported.tensor_bytes, planned_export_bytes(rq));  // F32 source: the kept linears copied as F32

  // the verification ran (it throws on a mismatch) and quantization costs a little, not a lot
  EXPECT_NEAR(r.ppl_export, r.ppl_fake_quant, 1e-4 * r.ppl_fake_quant);
  EXPECT_GT(r.ppl_fake_quant, r.ppl_source);
  EXPECT_LT(r.ppl_fake_quant, 1.5 * r.ppl_source);
  EXPECT_EQ(r.calib_sequences, 4);
  EXPECT_EQ(r.calib_source, "built-in");

  // down_proj (K = 172) cannot be NVFP4: kept, with the reason, and copied unchanged
  const model_spec spec = model_spec_from_file(model);
  int kept = 0;
  for (size_t i = 0; i < spec.linears.size(); ++i)
    if (spec.linears[i].module.ends_with("down_proj")) {
      EXPECT_EQ(r.plan.linears[i].weight.format, format_id::bf16);
      EXPECT_THAT(r.plan.linears[i].note, HasSubstr("172"));
      ++kept;
    }
  EXPECT_EQ(kept, 5);
  // ... and reported as what they are: F32, 32 bits each (the budget's count, BF16 at 16, apart)
  int64_t linear_params = 0, f32_params = 0;
  for (const format_usage& u : r.usage) {
    linear_params += u.parameters;
    if (u.stored != "f32") continue;
    f32_params = u.parameters;
    EXPECT_EQ(u.bits, 32.0 * double(u.parameters));
  }
  EXPECT_GT(f32_params, 0);
  EXPECT_NEAR(r.stored_bits - r.effective_bits, 16.0 * double(f32_params) / double(linear_params), 1e-9);
  const export_view out(rq.out);
  const checkpoint src = checkpoint::open(model);
  const auto& down = src.shards()[0].at("model.layers.2.mlp.down_proj.weight");
  const auto got = out.bytes("model.layers.2.mlp.down_proj.weight");
  ASSERT_EQ(got.size(), src.shards()[0].bytes(down).size());
  EXPECT_EQ(std::memcmp(got.data(), src.shards()[0].bytes(down).data(), got.size()), 0);

  // NVFP4 tensors as the engines expect; q/k/v and gate/up share their global and input scales
  const tensor_info* q = out.find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, dtype::u8);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{64, 32}));
  for (const char* sib : {"k_proj", "v_proj"}) {
    const std::string p = std::string("model.layers.0.self_attn.") + sib;
    EXPECT_EQ(out.scalar(p + ".weight_scale_2"), out.scalar("model.layers.0.self_attn.q_proj.weight_scale_2"));
    EXPECT_EQ(out.scalar(p + ".input_scale"), out.scalar("model.layers.0.self_attn.q_proj.input_scale"));
  }
  EXPECT_EQ(out.scalar("model.layers.1.mlp.up_proj.weight_scale_2"),
            out.scalar("model.layers.1.mlp.gate_proj.weight_scale_2"));
  const nlohmann::json hq = testing::read_json(rq.out / "hf_quant_config.json");
  EXPECT_EQ(hq["quantization"]["quant_algo"], "NVFP4");
  EXPECT_EQ(hq["quantization"]["exclude_modules"].size(), 5u);
  const nlohmann::json cfg = testing::read_json(rq.out / "config.json");
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "modelopt");
  EXPECT_EQ(cfg["hidden_size"], 64);
  EXPECT_TRUE(fs::exists(rq.out / "tokenizer.model"));
  EXPECT_TRUE(fs::exists(r.run_dir / "summary.json"));

  // the export evaluates on its own, through the ordinary loader
  const auto reloaded = load_causal_lm(rq.out);
  EXPECT_EQ(reloaded->spec().architecture, "llama");
}

TEST(quantize_run, resume_reuses_matching_statistics_and_refuses_others) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-resume");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe("    - match: \"*proj\"\n      format: fp8\n");
  const quantize_report first = run_quantize(rq);
  EXPECT_FALSE(first.stats_reused);

  rq.resume = true;
  rq.overwrite = true;
  const quantize_report again = run_quantize(rq);
  EXPECT_TRUE(again.stats_reused);
  EXPECT_EQ(again.ppl_export, first.ppl_export);
  // the source's perplexity too: stored by the first run, the same bits
  EXPECT_FALSE(first.ppl_source_reused);
  EXPECT_TRUE(again.ppl_source_reused);
  EXPECT_EQ(again.ppl_source, first.ppl_source);
  rq.eval_ctx = 64;  // another window: evaluated again (and stored for it)
  const quantize_report other_window = run_quantize(rq);
  EXPECT_FALSE(other_window.ppl_source_reused);
  EXPECT_NE(other_window.ppl_source, first.ppl_source);
  EXPECT_TRUE(run_quantize(rq).ppl_source_reused);
  std::ofstream(again.run_dir / "source_perplexity.json") << "{\"key\": 3";  // damaged: evaluated again
  const quantize_report after_damage = run_quantize(rq);
  EXPECT_FALSE(after_damage.ppl_source_reused);
  EXPECT_EQ(after_damage.ppl_source, other_window.ppl_source);
  rq.eval_ctx = 0;

  rq.rcp.calibration.samples = 3;  // different calibration: the stored statistics no longer apply
  const std::string refused = refusal_of(rq);
  EXPECT_THAT(refused, HasSubstr("calibration.h5"));
  EXPECT_THAT(refused, HasSubstr("different calibration"));
}

TEST(quantize_run, an_existing_output_is_refused_and_left_alone) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-exists");
  fs::create_directories(tmp.path / "out");
  std::ofstream(tmp.path / "out" / "keep.txt") << "mine";
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe(kLlamaNvfp4Rules);
  EXPECT_THROW(run_quantize(rq), std::exception);
  EXPECT_TRUE(fs::exists(tmp.path / "out" / "keep.txt"));
}

TEST(quantize_run, paths_within_each_other_are_found_through_dots_and_links) {
  const scratch_dir tmp("mixq-qrun-within");
  fs::create_directories(tmp.path / "a" / "b");
  fs::create_directory_symlink(tmp.path / "a" / "b", tmp.path / "link");
  EXPECT_TRUE(path_within(tmp.path / "a" / "b", tmp.path / "a"));
  EXPECT_TRUE(path_within(tmp.path / "a", tmp.path / "a"));
  EXPECT_TRUE(path_within(tmp.path / "a" / "b" / ".." / "b", tmp.path / "a" / "b" / ""));
  EXPECT_TRUE(path_within(tmp.path / "link" / "c", tmp.path / "a"));
  EXPECT_TRUE(path_within(tmp.path / "a" / "new" / "x", tmp.path / "a" / "new"));  // (not there yet)
  EXPECT_FALSE(path_within(tmp.path / "a", tmp.path / "a" / "b"));
  EXPECT_FALSE(path_within(tmp.path / "ab", tmp.path / "a"));
  EXPECT_FALSE(path_within(tmp.path / "a" / ".." / "x", tmp.path / "a"));
}

// --force replaces --out whole, and the run directory is cleared: neither may hold what the run reads.
TEST(quantize_run, an_output_or_run_directory_holding_the_inputs_is_refused_before_any_work) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-nested");
  fs::create_directories(tmp.path / "parent" / "model");
  fs::copy(model, tmp.path / "parent" / "model", fs::copy_options::recursive);
  std::ofstream(tmp.path / "parent" / "tokens.txt") << "Once upon a time there was a cat.";
  const auto refused = [&](fs::path out, fs::path run_dir, fs::path calib, const std::string& why) {
    quantize_request rq;
    rq.model = tmp.path / "parent" / "model";
    rq.out = std::move(out);
    rq.run_dir = std::move(run_dir);
    rq.calib = std::move(calib);
    rq.overwrite = true;
    rq.rcp = test_recipe(kLlamaNvfp4Rules);
    EXPECT_THAT(refusal_of(rq), HasSubstr(why));
  };
  refused(tmp.path / "parent", "", "", "contains the source checkpoint");
  refused(tmp.path / "parent" / "model", "", "", "is the source checkpoint");
  refused(tmp.path / "parent" / "." / "model" / "..", "", "", "contains the source checkpoint");
  refused(tmp.path / "q", "", tmp.path / "q" / "tokens.txt", "contains the calibration data");
  refused(tmp.path / "q", tmp.path / "q", "", "is the export");
  refused(tmp.path / "q", tmp.path / "q" / "run", "", "lies inside the export");
  refused(tmp.path / "q", tmp.path / "parent", "", "holds the source checkpoint");
  EXPECT_TRUE(fs::exists(tmp.path / "parent" / "model" / "config.json"));
  EXPECT_TRUE(fs::exists(tmp.path / "parent" / "tokens.txt"));
  EXPECT_FALSE(fs::exists(tmp.path / "q"));
}

// A NaN where no quantizer looks (a norm) makes the source perplexity NaN: the error names the tensor
// instead of comparing NaN perplexities.
TEST(quantize_run, a_nonfinite_source_perplexity_names_the_tensor) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-nan");
  fs::create_directories(tmp.path / "model");
  fs::copy(model, tmp.path / "model", fs::copy_options::recursive);
  {
    std::fstream f(tmp.path / "model" / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    uint64_t header_len = 0;
    f.read(reinterpret_cast<char*>(&header_len), 8);
    std::string header(header_len, '\0');
    f.read(header.data(), std::streamsize(header_len));
    const auto offsets = nlohmann::json::parse(header)["model.norm.weight"]["data_offsets"];
    f.seekp(std::streamoff(8 + header_len + offsets[0].get<uint64_t>() + 4 * 3));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  const quantize_request rq = nvfp4_request(tmp.path / "model", tmp.path / "out");
  const std::string refused = refusal_of(rq);
  EXPECT_THAT(refused, HasSubstr("tensor 'model.norm.weight' (model.safetensors) holds NaN at flat index 3"));
  EXPECT_THAT(refused, HasSubstr("no quantization involved"));
  EXPECT_FALSE(fs::exists(rq.out));
}

// A run killed while exporting leaves its staging directory: the next export beside it removes it
// once that process is gone, and leaves a running process's and another host's alone.
TEST(quantize_run, staging_directories_of_killed_runs_are_removed_by_the_next_export) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-stale");
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // (a process id that has ended)
  const fs::path dead = tmp.path / fmt::format(".out.partial-{}-{}-0badcafe", host, child);
  const fs::path dead_old = tmp.path / fmt::format(".out.old-{}-{}-0badcafe", host, child);
  const fs::path alive = tmp.path / fmt::format(".out.partial-{}-{}-0badcafe", host, ::getpid());
  const fs::path elsewhere = tmp.path / fmt::format(".out.partial-{}x-{}-0badcafe", host, child);
  const fs::path other = tmp.path / fmt::format(".other.partial-{}-{}-0badcafe", host, child);
  for (const fs::path& d : {dead, dead_old, alive, elsewhere, other}) {
    fs::create_directories(d);
    std::ofstream(d / "model.safetensors") << "half";
  }
  const checkpoint src = checkpoint::open(model);
  const export_summary s = export_checkpoint(src, model_spec_from_file(model), {}, tmp.path / "out", {});
  EXPECT_EQ(s.abandoned_removed, 2);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(dead_old));
  for (const fs::path& d : {alive, elsewhere, other}) EXPECT_TRUE(fs::exists(d)) << d;
  EXPECT_TRUE(fs::exists(tmp.path / "out" / "model.safetensors"));
}

TEST(quantize_run, a_failed_verification_leaves_no_export) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-verify");
  const checkpoint src = checkpoint::open(model);
  const model_spec spec = model_spec_from_file(model);
  export_options o;
  o.verify = [](const fs::path& staged) {
    EXPECT_TRUE(fs::exists(staged / "model.safetensors"));
    throw std::runtime_error("verification failed");
  };
  EXPECT_THROW(export_checkpoint(src, spec, {}, tmp.path / "out", o), std::runtime_error);
  EXPECT_FALSE(fs::exists(tmp.path / "out"));
  EXPECT_TRUE(fs::is_empty(tmp.path)) << "a temporary directory was left behind";

  // replacing an existing export: the old one survives a failed verification
  fs::create_directories(tmp.path / "out");
  std::ofstream(tmp.path / "out" / "old.txt") << "old";
  o.overwrite = true;
  EXPECT_THROW(export_checkpoint(src, spec, {}, tmp.path / "out", o), std::runtime_error);
  EXPECT_TRUE(fs::exists(tmp.path / "out" / "old.txt"));
}

TEST(quantize_run, compressed_tensors_layout_reloads_identically) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-ct");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe(kLlamaNvfp4Rules, "kv_cache: fp8\nexport:\n  layout: compressed-tensors\n");
  const quantize_report r = run_quantize(rq);
  EXPECT_EQ(r.exported.tensor_bytes, planned_export_bytes(rq));
  EXPECT_EQ(r.ppl_export, r.ppl_fake_quant);  // the reciprocal scales decode to exactly the ones quantized with
  const export_view out(rq.out);
  EXPECT_NE(out.find("model.layers.0.self_attn.q_proj.weight_packed"), nullptr);
  EXPECT_EQ(out.find("model.layers.0.self_attn.q_proj.weight"), nullptr);
  EXPECT_GT(out.scalar("model.layers.0.self_attn.k_scale"), 0.0f);  // where transformers' loader looks
  EXPECT_EQ(out.find("model.layers.0.self_attn.k_scale")->shape, std::vector<int64_t>{1});  // its shape, too
  EXPECT_EQ(out.find("model.layers.0.self_attn.k_proj.k_scale"), nullptr);
  EXPECT_FALSE(fs::exists(rq.out / "hf_quant_config.json"));
  EXPECT_EQ(testing::read_json(rq.out / "config.json")["quantization_config"]["quant_method"], "compressed-tensors");
}

// A routed MoE turns a one-step change of a scale into other experts chosen: the export must decode
// to exactly what was evaluated, reciprocal scales and all.
TEST(quantize_run, compressed_tensors_moe_export_reloads_to_the_same_perplexity) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "nemotron-h-tiny");
  const scratch_dir tmp("mixq-qrun-ct-moe");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = load_recipe("moe_nvfp4");
  rq.rcp.output.layout = export_layout::compressed_tensors;
  const quantize_report r = run_quantize(rq);
  EXPECT_EQ(r.ppl_export, r.ppl_fake_quant);
}

TEST(quantize_run, nemotron_h_release_mix_with_fp8_kv_cache) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "nemotron-h-tiny");
  const scratch_dir tmp("mixq-qrun-nh");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = load_recipe("nemotron_super_nvfp4_release");
  rq.rcp.calibration.samples = 4;
  rq.rcp.calibration.seq_len = 128;
  const quantize_report r = run_quantize(rq);
  EXPECT_EQ(r.exported.tensor_bytes, planned_export_bytes(rq));  // NVFP4, FP8, BF16 and the KV scales
  EXPECT_NEAR(r.ppl_export, r.ppl_fake_quant, 1e-4 * r.ppl_fake_quant);
  EXPECT_LT(r.ppl_fake_quant, 1.2 * r.ppl_source);
  const nlohmann::json hq = testing::read_json(rq.out / "hf_quant_config.json");
  EXPECT_EQ(hq["quantization"]["quant_algo"], "MIXED_PRECISION");
  EXPECT_EQ(hq["quantization"]["kv_cache_quant_algo"], "FP8");
  EXPECT_EQ(hq["quantization"]["quantized_layers"]["backbone.layers.0.mixer.in_proj"]["quant_algo"], "FP8");
  EXPECT_EQ(hq["quantization"]["quantized_layers"]["backbone.layers.1.mixer.experts.0.up_proj"]["quant_algo"], "NVFP4");
  const export_view out(rq.out);
  EXPECT_GT(out.scalar("backbone.layers.3.mixer.k_proj.k_scale"), 0.0f);
  EXPECT_GT(out.scalar("backbone.layers.3.mixer.v_proj.v_scale"), 0.0f);
  EXPECT_EQ(out.find("backbone.layers.3.mixer.q_proj.weight")->type, dtype::bf16);  // attention stays BF16
}

TEST(quantize_run, experts_without_calibration_tokens_borrow_their_layers_input_scale) {
  const testing::synth_dir synth(synth_arch::mixtral);
  const scratch_dir tmp("mixq-qrun-experts");
  quantize_request rq;
  rq.model = synth.dir;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe("    - match: \"*experts*\"\n      format: nvfp4\n");
  rq.rcp.calibration.samples = 1;  // two tokens: most experts see none
  rq.rcp.calibration.seq_len = 2;
  const quantize_report r = run_quantize(rq);
  ASSERT_FALSE(r.uncalibrated_experts.empty());
  const export_view out(rq.out);
  const model_spec spec = model_spec_from_file(synth.dir);
  for (const std::string& e : r.uncalibrated_experts) {
    const std::string layer = e.substr(0, e.rfind('.'));
    for (const char* leaf : {"w1", "w2", "w3"}) {
      const float s = out.scalar(e + "." + leaf + ".input_scale");
      EXPECT_TRUE(std::isfinite(s) && s > 0.0f) << e;
      float others = 0.0f;  // the largest input scale among the layer's calibrated experts
      for (int x = 0; x < spec.dims.experts; ++x) {
        const std::string other = layer + "." + std::to_string(x);
        if (std::find(r.uncalibrated_experts.begin(), r.uncalibrated_experts.end(), other) ==
            r.uncalibrated_experts.end())
          others = std::max(others, out.scalar(other + "." + leaf + ".input_scale"));
      }
      EXPECT_EQ(s, others) << e << "." << leaf;
    }
  }
}

TEST(quantize_run, a_checkpoint_that_contradicts_its_config_is_refused) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const scratch_dir tmp("mixq-qrun-badcfg");
  fs::copy(model, tmp.path / "model");
  nlohmann::json cfg = testing::read_json(tmp.path / "model" / "config.json");
  cfg["intermediate_size"] = 176;
  std::ofstream(tmp.path / "model" / "config.json") << cfg.dump(2);
  const quantize_request rq = nvfp4_request(tmp.path / "model", tmp.path / "out");
  const std::string refused = refusal_of(rq);
  EXPECT_THAT(refused, HasSubstr("does not match its config.json"));
  EXPECT_THAT(refused, HasSubstr("mlp"));
  EXPECT_FALSE(fs::exists(rq.out));
}

}  // namespace
}  // namespace mixq

namespace mixq {
namespace {

TEST(quantize_run, mtp_attention_gets_the_largest_calibrated_kv_scales) {
  const testing::synth_dir synth(synth_arch::nemotron_h);  // has an MTP head with attention
  const scratch_dir tmp("mixq-qrun-mtp");
  quantize_request rq;
  rq.model = synth.dir;
  rq.out = tmp.path / "out";
  rq.rcp = test_recipe("    - match: \"*mixer.experts.*\"\n      format: nvfp4\n", "kv_cache: fp8\n");
  const quantize_report r = run_quantize(rq);
  ASSERT_EQ(r.uncalibrated_attention, std::vector<std::string>{"mtp.layers.0.mixer"});
  const export_view out(rq.out);
  float k_max = 0.0f, v_max = 0.0f;
  for (const auto& s : out.ckpt.shards())
    for (const tensor_info& t : s.tensors())
      if (!t.name.starts_with("mtp.")) {
        if (t.name.ends_with(".k_scale")) k_max = std::max(k_max, out.scalar(t.name));
        if (t.name.ends_with(".v_scale")) v_max = std::max(v_max, out.scalar(t.name));
      }
  EXPECT_GT(k_max, 0.0f);
  EXPECT_EQ(out.scalar("mtp.layers.0.mixer.k_proj.k_scale"), k_max);
  EXPECT_EQ(out.scalar("mtp.layers.0.mixer.v_proj.v_scale"), v_max);
}

TEST(quantize_run, a_search_lands_within_its_planned_bounds) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "nemotron-h-tiny");
  const scratch_dir tmp("mixq-qrun-plan");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = load_recipe("auto_nemotron_nvfp4_fp8_6p0bits");
  rq.rcp.calibration.samples = 4;
  rq.rcp.calibration.seq_len = 64;
  rq.rcp.search.score_samples = 2;
  rq.rcp.search.effective_bits = 7.0;  // (this small model cannot reach 6: its BF16 attention weighs too much)
  const model_spec spec = model_spec_from_file(rq.model);
  const run_plan p = make_run_plan(spec, rq.rcp, checkpoint_dtypes(checkpoint::open(rq.model), spec, dtype::bf16));
  ASSERT_GT(p.export_bytes_budget, 0u);
  const quantize_report r = run_quantize(rq);
  EXPECT_GE(r.exported.tensor_bytes, p.export_bytes_min);
  EXPECT_LE(r.exported.tensor_bytes, p.export_bytes_budget);
  EXPECT_LT(p.export_bytes_budget, p.export_bytes_max);
}

TEST(quantize_run, an_unreachable_budget_is_refused_before_any_work) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "nemotron-h-tiny");
  const scratch_dir tmp("mixq-qrun-budget");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = load_recipe("auto_nemotron_nvfp4_fp8_5p0bits");
  const model_spec spec = model_spec_from_file(rq.model);
  const run_plan p = make_run_plan(spec, rq.rcp, [](const std::string&) { return dtype::bf16; });
  EXPECT_GT(p.least_effective_bits, 5.0);  // the plan says so, and so does quantize, at once
  EXPECT_THAT(p.refused, HasSubstr("below what this model can reach"));
  EXPECT_THAT(refusal_of(rq), HasSubstr(fmt::format("{:.3f} bits", p.least_effective_bits)));
  EXPECT_FALSE(fs::exists(rq.out));
  EXPECT_FALSE(fs::exists(tmp.path / "out.run"));  // nothing calibrated, nothing written

  // A budget just under the least: the message shows the least with the digits that tell them apart.
  rq.rcp.search.effective_bits = std::nextafter(p.least_effective_bits, 0.0);
  const std::string near = refusal_of(rq);
  const size_t at = near.find("reach: ");
  ASSERT_NE(at, std::string::npos) << near;
  EXPECT_GT(std::stod(near.substr(at + 7)), rq.rcp.search.effective_bits) << near;
}

// Every file of an export, byte for byte.
void expect_same_files(const fs::path& a, const fs::path& b) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(a)) names.push_back(e.path().filename().string());
  ASSERT_FALSE(names.empty());
  for (const std::string& n : names) {
    std::ifstream fa(a / n, std::ios::binary), fb(b / n, std::ios::binary);
    ASSERT_TRUE(fb.good()) << n << " missing from " << b;
    const std::string ca((std::istreambuf_iterator<char>(fa)), {}), cb((std::istreambuf_iterator<char>(fb)), {});
    EXPECT_TRUE(ca == cb) << n << " differs";
  }
}

// Layer by layer (the default for fixed rules and hessian searches): one layer's weights at a time,
// and the same statistics, scores, perplexities and bytes as a run holding the whole model. Llama
// (dense, MoE) and Nemotron-H (Mamba-2, attention with FP8 KV scales, latent MoE).
TEST(quantize_run, layer_by_layer_writes_what_the_whole_model_writes) {
  MIXQ_REQUIRE_SHARED_MODEL(stories, "stories260K");
  MIXQ_REQUIRE_SHARED_MODEL(nemotron, "nemotron-h-tiny");
  const testing::synth_dir mixtral(synth_arch::mixtral);
  const scratch_dir tmp("mixq-qrun-lbl");
  recipe hessian_search = load_recipe("auto_nemotron_nvfp4_fp8_6p0bits");  // (hessian scores are layer-local)
  hessian_search.search.method = score_method::hessian;
  hessian_search.search.effective_bits = 7.5;
  const std::vector<std::pair<fs::path, recipe>> runs = {
      {stories, test_recipe(kLlamaNvfp4Rules)},
      {mixtral.dir, test_recipe("    - match: \"*experts*\"\n      format: nvfp4\n    - match: \"*proj\"\n      format: fp8\n",
                                "kv_cache: fp8\n")},
      {nemotron, load_recipe("nemotron_super_nvfp4_release")},
      {nemotron, hessian_search}};
  int k = 0;
  for (const auto& [model, rcp] : runs) {
    SCOPED_TRACE(model.string());
    quantize_request rq;
    rq.model = model;
    rq.rcp = rcp;
    rq.rcp.calibration.samples = 4;
    rq.rcp.calibration.seq_len = 96;
    const fs::path whole_out = tmp.path / fmt::format("whole{}", k), layers_out = tmp.path / fmt::format("layers{}", k);
    ++k;
    rq.out = whole_out;
    rq.weights = layer_weights::all;
    const quantize_report whole = run_quantize(rq);
    rq.weights = std::nullopt;  // fixed rules: layer by layer unless asked otherwise
    rq.out = layers_out;
    const quantize_report layers = run_quantize(rq);
    EXPECT_EQ(whole.weights, layer_weights::all);
    EXPECT_EQ(layers.weights, layer_weights::on_demand);
    EXPECT_EQ(layers.ppl_source, whole.ppl_source);
    EXPECT_EQ(layers.ppl_fake_quant, whole.ppl_fake_quant);
    EXPECT_EQ(layers.ppl_export, whole.ppl_export);
    EXPECT_NE(whole.ppl_fake_quant, whole.ppl_source);  // (the fake quantization did apply)
    testing::expect_same_statistics(whole.stats_file, layers.stats_file);
    expect_same_files(whole_out, layers_out);
    EXPECT_EQ(layers.searched, rq.rcp.search.enabled);
    if (rq.rcp.search.enabled) {
      EXPECT_EQ(layers.search.scores.score, whole.search.scores.score);
      EXPECT_EQ(layers.search.choice, whole.search.choice);
    }
  }
}

TEST(quantize_run, layer_by_layer_refuses_a_search) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "nemotron-h-tiny");
  const scratch_dir tmp("mixq-qrun-lbl-search");
  quantize_request rq;
  rq.model = model;
  rq.out = tmp.path / "out";
  rq.rcp = load_recipe("auto_nemotron_nvfp4_fp8_6p0bits");
  rq.rcp.search.effective_bits = 10.0;  // (reachable)
  rq.weights = layer_weights::on_demand;
  EXPECT_THAT([&] { run_quantize(rq); }, ::testing::ThrowsMessage<io_error>(HasSubstr("cannot run layer by layer")));
  EXPECT_FALSE(fs::exists(rq.out));
  const model_spec spec = model_spec_from_file(model);
  plan_setup setup;
  setup.weights = layer_weights::on_demand;
  EXPECT_THAT(make_run_plan(spec, rq.rcp, [](const std::string&) { return dtype::bf16; }, setup).refused,
              HasSubstr("cannot run layer by layer"));
  EXPECT_EQ(held_layers(rq.rcp, std::nullopt), layer_weights::all);  // a search holds the whole model
  EXPECT_EQ(held_layers(load_recipe("llama_fp8"), std::nullopt), layer_weights::on_demand);
  EXPECT_EQ(held_layers(load_recipe("llama_fp8"), layer_weights::all), layer_weights::all);
}

}  // namespace
}  // namespace mixq
