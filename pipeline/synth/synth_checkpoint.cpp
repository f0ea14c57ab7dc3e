#include "pipeline/synth/synth_checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "formats/minifloat.hpp"
#include "kernels/cpu/source_matrix.hpp"  // worth_threads
#include "pipeline/io/safetensors_writer.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/synth_weights.hpp"

namespace mixq {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string_view to_string(synth_arch a) {
  switch (a) {
    case synth_arch::llama: return "llama";
    case synth_arch::mixtral: return "mixtral";
    case synth_arch::qwen3_moe: return "qwen3_moe";
    case synth_arch::nemotron_h: return "nemotron_h";
  }
  return "?";
}

std::string_view to_string(synth_preset p) { return p == synth_preset::tiny ? "tiny" : "small"; }

std::optional<synth_arch> parse_synth_arch(std::string_view name) {
  for (auto a : {synth_arch::llama, synth_arch::mixtral, synth_arch::qwen3_moe, synth_arch::nemotron_h})
    if (to_string(a) == name) return a;
  return std::nullopt;
}

std::optional<synth_preset> parse_synth_preset(std::string_view name) {
  for (auto p : {synth_preset::tiny, synth_preset::small})
    if (to_string(p) == name) return p;
  return std::nullopt;
}

std::optional<uint64_t> parse_byte_size(std::string_view text) {
  uint64_t number = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec != std::errc() || end == text.data() || number == 0) return std::nullopt;
  std::string unit(end, text.data() + text.size());
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  struct suffix {
    std::string_view name;
    uint64_t bytes;
  };
  constexpr suffix kUnits[] = {{"", 1},           {"b", 1},
                               {"kb", 1'000},     {"kib", uint64_t(1) << 10},
                               {"mb", 1'000'000}, {"mib", uint64_t(1) << 20},
                               {"gb", 1'000'000'000}, {"gib", uint64_t(1) << 30},
                               {"tb", 1'000'000'000'000}, {"tib", uint64_t(1) << 40}};
  for (const auto& u : kUnits)
    if (u.name == unit) {
      if (number > UINT64_MAX / u.bytes) return std::nullopt;
      return number * u.bytes;
    }
  return std::nullopt;
}

namespace {

// ---- presets: config.json ---------------------------------------------------------------------

std::string_view torch_dtype_name(dtype type) {
  switch (type) {
    case dtype::bf16: return "bfloat16";
    case dtype::f16: return "float16";
    case dtype::f32: return "float32";
    default: throw std::invalid_argument(fmt::format("synth: dtype {} is not one of BF16, F16, F32", dtype_name(type)));
  }
}

// Fields every preset shares. Token ids are those of the shared tok512 (llama2.c) tokenizer, so a
// tiny model can be fed real text; vocab sizes are >= 512 for the same reason.
json base_config(std::string_view class_name, std::string_view model_type, dtype type) {
  return {{"architectures", {class_name}},
          {"model_type", model_type},
          {"torch_dtype", torch_dtype_name(type)},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"pad_token_id", 0},
          {"initializer_range", 0.02},
          {"tie_word_embeddings", false},  // a separate lm_head, as in every model the presets imitate
          {"use_cache", true},
          {"attention_dropout", 0.0}};
}

// Llama-style attention and the sizes around it.
struct decoder_dims {
  int64_t vocab, hidden, layers, heads, kv_heads, head_dim;
};

void add_decoder_fields(json& c, const decoder_dims& d, double rope_theta, double rms_norm_eps) {
  c.update({{"vocab_size", d.vocab},
            {"hidden_size", d.hidden},
            {"num_hidden_layers", d.layers},
            {"num_attention_heads", d.heads},
            {"num_key_value_heads", d.kv_heads},
            {"head_dim", d.head_dim},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"max_position_embeddings", 4096},
            {"rope_theta", rope_theta},
            {"rope_scaling", nullptr},
            {"rms_norm_eps", rms_norm_eps}});
}

// Llama 3 proportions (intermediate ~2.75x hidden, GQA 4:1).
json llama_config(bool tiny, dtype type) {
  json c = base_config("LlamaForCausalLM", "llama", type);
  add_decoder_fields(c, tiny ? decoder_dims{512, 64, 2, 4, 2, 16} : decoder_dims{16384, 1024, 8, 16, 4, 64}, 500000.0,
                     1e-5);
  c.update({{"intermediate_size", tiny ? 128 : 2816}, {"mlp_bias", false}, {"pretraining_tp", 1}});
  return c;
}

// Mixtral 8x7B proportions: 8 experts, top-2, expert width 3.5x hidden.
json mixtral_config(bool tiny, dtype type) {
  json c = base_config("MixtralForCausalLM", "mixtral", type);
  add_decoder_fields(c, tiny ? decoder_dims{512, 64, 2, 4, 2, 16} : decoder_dims{16384, 512, 6, 8, 2, 64}, 1000000.0,
                     1e-5);
  c.update({{"intermediate_size", tiny ? 128 : 1792},
            {"num_local_experts", tiny ? 4 : 8},
            {"num_experts_per_tok", 2},
            {"sliding_window", nullptr},
            {"output_router_logits", false},
            {"router_aux_loss_coef", 0.02},
            {"router_jitter_noise", 0.0}});
  return c;
}

// Qwen3-30B-A3B proportions: q width 2x hidden, many narrow experts, top-8. The tiny preset makes
// layer 0 dense (mlp_only_layers) so both feed-forward kinds are covered.
json qwen3_moe_config(bool tiny, dtype type) {
  json c = base_config("Qwen3MoeForCausalLM", "qwen3_moe", type);
  add_decoder_fields(c, tiny ? decoder_dims{512, 64, 3, 4, 2, 32} : decoder_dims{16384, 512, 8, 8, 2, 128}, 1000000.0,
                     1e-6);
  c.update({{"intermediate_size", tiny ? 128 : 1536},
            {"moe_intermediate_size", tiny ? 32 : 192},
            {"num_experts", tiny ? 8 : 64},
            {"num_experts_per_tok", tiny ? 2 : 8},
            {"decoder_sparse_step", 1},
            {"mlp_only_layers", tiny ? json::array({0}) : json::array()},
            {"norm_topk_prob", true},
            {"use_sliding_window", false},
            {"sliding_window", nullptr},
            {"max_window_layers", tiny ? 3 : 8},
            {"output_router_logits", false},
            {"router_aux_loss_coef", 0.001}});
  return c;
}

// Nemotron 3 Super in miniature: Mamba-2 / MoE pairs with sparse attention, latent MoE (latent =
// hidden / 4) with a shared expert, sigmoid routing with correction bias, a one-step MTP head.
// The tiny pattern also holds a dense '-' layer, which Super and Nano lack, to cover every block.
json nemotron_h_config(bool tiny, dtype type) {
  json c = base_config("NemotronHForCausalLM", "nemotron_h", type);
  const std::string pattern = tiny ? "MEM*E-" : "MEMEM*EMEMEM*EMEME";
  c.update({{"vocab_size", tiny ? 512 : 16384},
            {"hidden_size", tiny ? 64 : 768},
            {"hybrid_override_pattern", pattern},
            {"num_hidden_layers", pattern.size()},
            {"num_nextn_predict_layers", 1},
            {"mtp_hybrid_override_pattern", "*E"},
            // attention: GQA, no RoPE (rope_theta is present in the real configs but unused)
            {"num_attention_heads", tiny ? 4 : 12},
            {"num_key_value_heads", 2},
            {"head_dim", tiny ? 16 : 64},
            {"attention_bias", false},
            {"max_position_embeddings", 4096},
            {"rope_theta", 10000},
            {"partial_rotary_factor", 1.0},
            {"sliding_window", nullptr},
            // Mamba-2: intermediate = heads x head_dim = 2 x hidden
            {"mamba_num_heads", tiny ? 4 : 24},
            {"mamba_head_dim", tiny ? 16 : 64},
            {"n_groups", tiny ? 2 : 8},
            {"ssm_state_size", tiny ? 16 : 128},
            {"conv_kernel", 4},
            {"chunk_size", tiny ? 32 : 128},
            {"expand", 2},
            {"mamba_hidden_act", "silu"},
            {"mamba_proj_bias", false},
            {"use_bias", false},
            {"use_conv_bias", true},
            {"mamba_ssm_cache_dtype", "float32"},
            {"time_step_min", 0.001},
            {"time_step_max", 0.1},
            {"time_step_floor", 0.0001},
            {"use_mamba_kernels", true},
            // MoE and the dense MLP (relu2, no gate)
            {"n_routed_experts", tiny ? 8 : 64},
            {"num_experts_per_tok", tiny ? 2 : 6},
            {"moe_intermediate_size", tiny ? 32 : 384},
            {"moe_latent_size", tiny ? 32 : 192},
            {"n_shared_experts", 1},
            {"moe_shared_expert_intermediate_size", tiny ? 64 : 768},
            {"moe_shared_expert_overlap", false},
            {"routed_scaling_factor", tiny ? 2.5 : 5.0},
            {"norm_topk_prob", true},
            {"n_group", 1},
            {"topk_group", 1},
            {"intermediate_size", tiny ? 128 : 1536},
            {"mlp_hidden_act", "relu2"},
            {"mlp_bias", false},
            // norms and residual
            {"layer_norm_epsilon", 1e-5},
            {"norm_eps", 1e-5},
            {"residual_in_fp32", false},
            {"rescale_prenorm_residual", true},
            {"hidden_dropout", 0.0},
            {"num_logits_to_keep", 1}});
  return c;
}

}  // namespace

json synth_config(synth_arch arch, synth_preset preset, dtype type) {
  const bool tiny = preset == synth_preset::tiny;
  switch (arch) {
    case synth_arch::llama: return llama_config(tiny, type);
    case synth_arch::mixtral: return mixtral_config(tiny, type);
    case synth_arch::qwen3_moe: return qwen3_moe_config(tiny, type);
    case synth_arch::nemotron_h: return nemotron_h_config(tiny, type);
  }
  throw std::invalid_argument("synth: unknown architecture");
}

json synth_generation_config(const json& config) {
  json g = {{"_from_model_config", true}};
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
    if (config.contains(key) && !config[key].is_null()) g[key] = config[key];
  return g;
}

namespace {

// ---- values -------------------------------------------------------------------------------------

enum class value_rule { linear, embedding, norm, bias, conv_weight, conv_bias, a_log, d_skip, dt_bias, router_bias };

struct planned_tensor {
  std::string name;
  std::vector<int64_t> shape;
  dtype type = dtype::bf16;
  value_rule rule = value_rule::linear;
  synth_distribution distribution = synth_distribution::normal;  // linears only
  float scale = 1.0f;                                            // linears only

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Projections that read the normed residual stream (q/k/v, gate/up, in_proj, fc1_latent) inherit
// its few huge channels as outlier input columns, which is what activation-aware quantization has
// to handle; projections writing back into it get heavy-tailed values instead. Routers, lm_head
// and the MTP fusion stay plain Gaussian.
synth_distribution distribution_of(const linear_spec& l) {
  switch (l.role) {
    case linear_role::router:
    case linear_role::lm_head:
    case linear_role::mtp_fusion: return synth_distribution::normal;
    case linear_role::o:
    case linear_role::down:
    case linear_role::mamba_out: return synth_distribution::heavy_tailed;
    default: break;
  }
  const bool writes_back =
      ends_with(l.module, "down_proj") || ends_with(l.module, ".w2") || ends_with(l.module, "fc2_latent_proj");
  return writes_back ? synth_distribution::heavy_tailed : synth_distribution::outlier_channels;
}

value_rule rule_of(const tensor_spec& t) {
  switch (t.kind) {
    case tensor_kind::embedding: return value_rule::embedding;
    case tensor_kind::norm: return value_rule::norm;
    case tensor_kind::linear_bias: return value_rule::bias;
    case tensor_kind::conv_weight: return value_rule::conv_weight;
    case tensor_kind::conv_bias: return value_rule::conv_bias;
    case tensor_kind::router_bias: return value_rule::router_bias;
    case tensor_kind::ssm_param:
      if (ends_with(t.name, ".A_log")) return value_rule::a_log;
      if (ends_with(t.name, ".D")) return value_rule::d_skip;
      if (ends_with(t.name, ".dt_bias")) return value_rule::dt_bias;
      break;
  }
  throw std::logic_error(fmt::format("synth: no value rule for tensor '{}'", t.name));
}

// The runtimes compute with the SSM parameters and the routing bias in fp32 (the bias is in
// transformers' _keep_in_fp32_modules_strict), and checkpoints store them as F32
// (shared/models/nemotron-h-tiny does).
bool kept_in_f32(value_rule r) {
  return r == value_rule::a_log || r == value_rule::d_skip || r == value_rule::dt_bias || r == value_rule::router_bias;
}

// Every tensor of the spec in module order (embeddings, blocks, final norm, lm_head), as
// save_pretrained shards them; F32 tensors first so that each tensor starts aligned to its width.
std::vector<planned_tensor> plan_tensors(const model_spec& spec, dtype type) {
  constexpr float kRouterScale = 0.25f;  // routers are trained to give modest logits
  struct ordered {
    int position;
    planned_tensor tensor;
  };
  const int after_blocks = int(spec.blocks.size()) + 1;
  std::vector<ordered> all;
  for (const auto& l : spec.linears) {
    planned_tensor p{l.weight_name(), l.shape(), type, value_rule::linear, distribution_of(l),
                     l.role == linear_role::router ? kRouterScale : 1.0f};
    all.push_back({l.block >= 0 ? l.block + 1 : after_blocks + 1, std::move(p)});
  }
  for (const auto& t : spec.tensors) {
    const value_rule rule = rule_of(t);
    planned_tensor p{t.name, t.shape, kept_in_f32(rule) ? dtype::f32 : type, rule};
    const int position = t.kind == tensor_kind::embedding ? 0 : t.block >= 0 ? t.block + 1 : after_blocks;
    all.push_back({position, std::move(p)});
  }
  std::stable_sort(all.begin(), all.end(), [](const ordered& a, const ordered& b) {
    const int wa = dtype_bits(a.tensor.type), wb = dtype_bits(b.tensor.type);
    return wa != wb ? wa > wb : a.position < b.position;
  });
  std::vector<planned_tensor> plan;
  plan.reserve(all.size());
  for (auto& o : all) plan.push_back(std::move(o.tensor));
  return plan;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// FNV-1a: stable across platforms and releases, unlike std::hash.
uint64_t name_hash(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

uint64_t tensor_seed(uint64_t seed, std::string_view name) { return splitmix64(splitmix64(seed) ^ name_hash(name)); }

// Non-linear tensors, drawn as float: what trained checkpoints hold (architecture.md §1.5).
std::vector<float> draw_values(const planned_tensor& t, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<float> v(size_t(t.numel()));
  switch (t.rule) {
    case value_rule::embedding:
      for (float& x : v) x = 0.02f * normal(rng);
      break;
    case value_rule::norm:  // RMSNorm gains stay near their init of 1
      for (float& x : v) x = 1.0f + 0.02f * normal(rng);
      break;
    case value_rule::bias:
    case value_rule::conv_bias:
      for (float& x : v) x = 0.01f * normal(rng);
      break;
    case value_rule::conv_weight:
      for (float& x : v) x = 0.1f * normal(rng);
      break;
    case value_rule::a_log:  // A = -exp(A_log) with A uniform in [1, 16], the Mamba-2 init
      for (float& x : v) x = float(std::log(1.0 + 15.0 * uniform(rng)));
      break;
    case value_rule::d_skip:
      for (float& x : v) x = 1.0f + 0.05f * normal(rng);
      break;
    case value_rule::dt_bias:  // softplus(dt_bias) = dt, log-uniform in [time_step_min, time_step_max]
      for (float& x : v) {
        const double dt = std::max(std::exp(std::log(1e-3) + uniform(rng) * (std::log(1e-1) - std::log(1e-3))), 1e-4);
        x = float(dt + std::log(-std::expm1(-dt)));
      }
      break;
    case value_rule::router_bias:  // e_score_correction_bias: load-balancing nudges around 0
      for (float& x : v) x = 1e-3f * normal(rng);
      break;
    case value_rule::linear: throw std::logic_error("synth: linears are drawn by synth_make_weight");
  }
  return v;
}

template <class T>
std::vector<std::byte> as_bytes(const std::vector<T>& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());  // little-endian hosts only, as the writer
  return b;
}

std::vector<std::byte> encode(const std::vector<float>& v, dtype type) {
  if (type == dtype::f32) return as_bytes(v);
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = type == dtype::bf16 ? bf16_encode(v[i]) : fp16_encode(v[i]);
  return as_bytes(bits);
}

std::vector<std::byte> generate(const planned_tensor& t, uint64_t seed) {
  const uint64_t s = tensor_seed(seed, t.name);
  if (t.rule != value_rule::linear) return encode(draw_values(t, s), t.type);
  synth_weight w = synth_make_weight(t.name, t.shape[0], t.shape[1], t.distribution, s);
  if (t.scale == 1.0f && t.type == dtype::bf16) return as_bytes(w.bf16);
  std::vector<float> v(w.bf16.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = t.scale * bf16_decode(w.bf16[i]);
  return encode(v, t.type);
}

// Each tensor depends only on its own seed, so any thread count gives the same bytes.
std::vector<std::vector<std::byte>> generate_all(const std::vector<planned_tensor>& plan, uint64_t seed) {
  std::vector<size_t> largest_first(plan.size());
  int64_t total = 0;
  for (size_t i = 0; i < plan.size(); ++i) largest_first[i] = i, total += plan[i].numel();
  std::stable_sort(largest_first.begin(), largest_first.end(),
                   [&](size_t a, size_t b) { return plan[a].numel() > plan[b].numel(); });
  std::vector<std::vector<std::byte>> values(plan.size());
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) if (cpu::worth_threads(total))
  for (int64_t k = 0; k < int64_t(plan.size()); ++k) {
    const size_t i = largest_first[size_t(k)];
    try {
      values[i] = generate(plan[i], seed);
    } catch (...) {
#pragma omp critical(synth_first_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return values;
}

// ---- the output directory -----------------------------------------------------------------------

// "out/" and "out" name the same directory; the temporary siblings need its name.
fs::path clean_destination(const fs::path& out) {
  fs::path p = out.lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  if (p.empty() || p.filename() == "." || p.filename() == "..")
    throw io_error(fmt::format("synth: --out '{}' must name a directory to create", out.string()));
  return p;
}

bool holds_something(const fs::path& dir) { return fs::exists(dir) && !fs::is_empty(dir); }

void check_destination(const fs::path& out, bool force) {
  if (fs::exists(out) && !fs::is_directory(out))
    throw io_error(fmt::format("{}: exists and is not a directory", out.string()));
  if (holds_something(out) && !force)
    throw io_error(fmt::format("{}: exists and is not empty; choose another --out or pass --force to replace it",
                               out.string()));
}

// ".<name>.synth-<tag>-<pid>" next to out: same filesystem, so the final rename is atomic.
fs::path sibling(const fs::path& out, std::string_view tag) {
  return out.parent_path() / fmt::format(".{}.synth-{}-{}", out.filename().string(), tag, ::getpid());
}

void write_json(const fs::path& path, const json& j) {
  std::ofstream f(path);
  f << j.dump(2) << '\n';
  f.close();
  if (!f) throw io_error(fmt::format("{}: cannot write", path.string()));
}

// Renames the finished staging directory to out. An empty out is replaced by the rename itself;
// a non-empty one (--force) is moved aside first and deleted only once the new one is in place.
void move_into_place(const fs::path& staging, const fs::path& out, bool force) {
  if (!holds_something(out)) {
    fs::rename(staging, out);
    return;
  }
  if (!force) throw io_error(fmt::format("{}: was filled by someone else while generating; not replaced", out.string()));
  const fs::path old = sibling(out, "old");
  fs::rename(out, old);
  try {
    fs::rename(staging, out);
  } catch (...) {
    std::error_code ec;
    fs::rename(old, out, ec);
    throw;
  }
  fs::remove_all(old);
}

}  // namespace

synth_result synth_checkpoint(const synth_options& o) {
  const auto start = std::chrono::steady_clock::now();
  if (o.max_shard_bytes == 0) throw std::invalid_argument("synth: max_shard_bytes must be positive");
  const json config = synth_config(o.arch, o.preset, o.type);  // rejects dtypes other than BF16/F16/F32
  const fs::path out = clean_destination(o.out);
  check_destination(out, o.force);

  const model_spec spec =
      model_spec_from_config(config, fmt::format("synth {} {}", to_string(o.arch), to_string(o.preset)));
  const std::vector<planned_tensor> plan = plan_tensors(spec, o.type);
  const std::vector<std::vector<std::byte>> values = generate_all(plan, o.seed);

  synth_result r;
  r.dir = out;
  r.parameters = parameter_count(spec);
  std::vector<tensor_to_write> tensors;
  tensors.reserve(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    tensors.push_back({plan[i].name, plan[i].type, plan[i].shape, values[i]});
    r.tensor_bytes += values[i].size();
  }

  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  const fs::path staging = sibling(out, "tmp");
  fs::remove_all(staging);  // left by an earlier run of this process id that was killed
  fs::create_directory(staging);
  try {
    write_json(staging / "config.json", config);
    write_json(staging / "generation_config.json", synth_generation_config(config));
    r.files = {out / "config.json", out / "generation_config.json"};
    for (const auto& f : write_checkpoint_tensors(staging, tensors, o.max_shard_bytes))
      r.files.push_back(out / f.filename());
    move_into_place(staging, out, o.force);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    throw;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace mixq
