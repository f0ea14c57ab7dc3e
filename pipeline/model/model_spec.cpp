#include "pipeline/model/model_spec.hpp"

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/model/hf_config.hpp"

namespace mixq {

using json = nlohmann::json;

std::string_view to_string(block_kind k) {
  switch (k) {
    case block_kind::attention: return "attention";
    case block_kind::mlp: return "mlp";
    case block_kind::moe: return "moe";
    case block_kind::mamba: return "mamba";
  }
  return "?";
}

std::string_view to_string(linear_role r) {
  switch (r) {
    case linear_role::qkv: return "qkv";
    case linear_role::o: return "o";
    case linear_role::gate_up: return "gate_up";
    case linear_role::up: return "up";
    case linear_role::down: return "down";
    case linear_role::expert: return "expert";
    case linear_role::shared_expert: return "shared_expert";
    case linear_role::mamba_in: return "mamba_in";
    case linear_role::mamba_out: return "mamba_out";
    case linear_role::latent: return "latent";
    case linear_role::router: return "router";
    case linear_role::mtp_fusion: return "mtp_fusion";
    case linear_role::lm_head: return "lm_head";
  }
  return "?";
}

std::string_view to_string(tensor_kind k) {
  switch (k) {
    case tensor_kind::embedding: return "embedding";
    case tensor_kind::norm: return "norm";
    case tensor_kind::linear_bias: return "linear_bias";
    case tensor_kind::conv_weight: return "conv_weight";
    case tensor_kind::conv_bias: return "conv_bias";
    case tensor_kind::ssm_param: return "ssm_param";
    case tensor_kind::router_bias: return "router_bias";
  }
  return "?";
}

int64_t tensor_spec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// ---- reading config values -------------------------------------------------------------------

// Typed access to config.json with messages that name the file and the key. A JSON null counts as
// absent (HF writes e.g. "head_dim": null). Where a key has aliases, the first present one is read.
class config_reader {
 public:
  static constexpr int64_t kMaxDim = int64_t(1) << 24;

  config_reader(const json& config, std::string_view origin) : config_(config), origin_(origin) {}

  [[noreturn]] void fail(const std::string& what) const { throw io_error(fmt::format("{}: {}", origin_, what)); }

  bool has(std::initializer_list<std::string_view> keys) const { return find(keys) != nullptr; }

  // A required integer > 0.
  int64_t positive(std::initializer_list<std::string_view> keys) const {
    const json* v = find(keys);
    if (!v) fail(fmt::format("config key {} is missing", describe(keys)));
    return checked_positive(*v, found_key(keys));
  }
  int64_t positive_or(std::initializer_list<std::string_view> keys, int64_t fallback) const {
    const json* v = find(keys);
    return v ? checked_positive(*v, found_key(keys)) : fallback;
  }
  // An optional integer >= 0.
  int64_t count_or(std::initializer_list<std::string_view> keys, int64_t fallback) const {
    const json* v = find(keys);
    if (!v) return fallback;
    if (!v->is_number_integer() || v->get<int64_t>() < 0)
      fail(fmt::format("config key '{}' must be a non-negative integer, got {}", found_key(keys), v->dump()));
    return v->get<int64_t>() == 0 ? 0 : checked_positive(*v, found_key(keys));
  }
  bool flag_or(std::initializer_list<std::string_view> keys, bool fallback) const {
    const json* v = find(keys);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(fmt::format("config key '{}' must be true or false, got {}", found_key(keys), v->dump()));
    return v->get<bool>();
  }
  // The raw value (nullptr when absent), for keys with more than one accepted form.
  const json* find(std::initializer_list<std::string_view> keys) const {
    for (std::string_view k : keys) {
      const auto it = config_.find(std::string(k));
      if (it != config_.end() && !it->is_null()) return &*it;
    }
    return nullptr;
  }
  std::string found_key(std::initializer_list<std::string_view> keys) const {
    for (std::string_view k : keys)
      if (find({k})) return std::string(k);
    return std::string(*keys.begin());
  }

 private:
  // "'n_groups' (or 'mamba_n_groups')"
  static std::string describe(std::initializer_list<std::string_view> keys) {
    std::string s = fmt::format("'{}'", *keys.begin());
    for (auto it = keys.begin() + 1; it != keys.end(); ++it) s += fmt::format(" (or '{}')", *it);
    return s;
  }
  int64_t checked_positive(const json& v, const std::string& key) const {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0)
      fail(fmt::format("config key '{}' must be a positive integer, got {}", key, v.dump()));
    // Bounded so that shape products and parameter sums cannot overflow int64.
    if (v.get<int64_t>() > kMaxDim) fail(fmt::format("config key '{}' is {}, above the limit {}", key, v.dump(), kMaxDim));
    return v.get<int64_t>();
  }

  const json& config_;
  std::string origin_;
};

// ---- building the spec ------------------------------------------------------------------------

// Parent module of a dotted name: "a.b.q_proj" -> "a.b".
std::string parent_of(const std::string& module) { return module.substr(0, module.rfind('.')); }

// Appends blocks, linears and tensors in forward order. Quant-group keys follow the rules of
// numerics §1.6, which callers pick by naming the fusion a linear takes part in.
class spec_builder {
 public:
  enum class fusion {
    none,          // its own decision: key = module name
    with_siblings, // q/k/v, gate/up: key = parent module
    all_experts,   // every routed expert of the layer: key = "...experts"
  };

  explicit spec_builder(model_spec& spec) : spec_(spec) {}

  void begin_block(int layer, block_kind kind, std::string prefix, bool mtp = false) {
    block_ = int(spec_.blocks.size());
    spec_.blocks.push_back({block_, layer, kind, mtp, std::move(prefix)});
  }
  void end_blocks() { block_ = -1; }  // what follows (final norm, lm_head) belongs to no block

  void linear(const std::string& module, int64_t out, int64_t in, linear_role role, fusion f, bool bias = false,
              int expert = -1) {
    linear_spec l;
    l.module = module;
    l.out_features = out;
    l.in_features = in;
    l.role = role;
    // all_experts: "...experts.7.up_proj" -> "...experts"
    l.quant_group = f == fusion::none            ? module
                    : f == fusion::with_siblings ? parent_of(module)
                                                 : parent_of(parent_of(module));
    const bool in_mtp = block_ >= 0 && spec_.blocks[size_t(block_)].mtp;
    // Routers steer the experts and lm_head decides every logit; both, and the MTP head, stay
    // BF16 in every NVIDIA recipe (numerics §5), so the search leaves them out by default.
    l.quantizable =
        role != linear_role::router && role != linear_role::lm_head && role != linear_role::mtp_fusion && !in_mtp;
    l.has_bias = bias;
    l.block = block_;
    l.expert = expert;
    spec_.linears.push_back(std::move(l));
    if (bias) tensor(module + ".bias", {out}, tensor_kind::linear_bias);
  }

  void tensor(std::string name, std::vector<int64_t> shape, tensor_kind kind, std::vector<std::string> aliases = {}) {
    spec_.tensors.push_back({std::move(name), std::move(shape), kind, block_, std::move(aliases)});
  }

 private:
  model_spec& spec_;
  int block_ = -1;
};

using fusion = spec_builder::fusion;

// ---- Llama-style decoders: Llama, Mixtral, Qwen3-MoE (architecture.md §2) ---------------------

struct attention_shape {
  int64_t heads, kv_heads, head_dim;
  bool bias;
  bool qk_norm;  // Qwen3: RMSNorm over head_dim on q and k
};

attention_shape read_attention(const config_reader& cfg, int64_t hidden) {
  attention_shape a{};
  a.heads = cfg.positive({"num_attention_heads"});
  a.kv_heads = cfg.positive_or({"num_key_value_heads"}, a.heads);
  if (a.heads % a.kv_heads != 0)
    cfg.fail(fmt::format("config key 'num_attention_heads' ({}) is not a multiple of 'num_key_value_heads' ({})", a.heads,
                         a.kv_heads));
  if (cfg.has({"head_dim"})) {
    a.head_dim = cfg.positive({"head_dim"});
  } else {
    if (hidden % a.heads != 0)
      cfg.fail(fmt::format("config key 'head_dim' is absent and 'hidden_size' ({}) is not a multiple of "
                           "'num_attention_heads' ({})", hidden, a.heads));
    a.head_dim = hidden / a.heads;
  }
  a.bias = cfg.flag_or({"attention_bias"}, false);
  return a;
}

void set_attention_dims(model_dims& d, const attention_shape& a) {
  d.heads = a.heads;
  d.kv_heads = a.kv_heads;
  d.head_dim = a.head_dim;
}

// q/k/v/o under `mixer` ("model.layers.3.self_attn" or "backbone.layers.3.mixer").
void add_attention(spec_builder& b, const std::string& mixer, int64_t hidden, const attention_shape& a) {
  const int64_t q = a.heads * a.head_dim, kv = a.kv_heads * a.head_dim;
  b.linear(mixer + ".q_proj", q, hidden, linear_role::qkv, fusion::with_siblings, a.bias);
  b.linear(mixer + ".k_proj", kv, hidden, linear_role::qkv, fusion::with_siblings, a.bias);
  b.linear(mixer + ".v_proj", kv, hidden, linear_role::qkv, fusion::with_siblings, a.bias);
  if (a.qk_norm) {
    b.tensor(mixer + ".q_norm.weight", {a.head_dim}, tensor_kind::norm);
    b.tensor(mixer + ".k_norm.weight", {a.head_dim}, tensor_kind::norm);
  }
  b.linear(mixer + ".o_proj", hidden, q, linear_role::o, fusion::none, a.bias);
}

// SwiGLU gate_proj / up_proj / down_proj under `mlp`; for a routed expert, `expert` >= 0.
void add_gated_mlp(spec_builder& b, const std::string& mlp, int64_t hidden, int64_t width, bool bias, int expert = -1) {
  const bool routed = expert >= 0;
  const linear_role in_role = routed ? linear_role::expert : linear_role::gate_up;
  const linear_role out_role = routed ? linear_role::expert : linear_role::down;
  const fusion in_fusion = routed ? fusion::all_experts : fusion::with_siblings;
  const fusion out_fusion = routed ? fusion::all_experts : fusion::none;
  b.linear(mlp + ".gate_proj", width, hidden, in_role, in_fusion, bias, expert);
  b.linear(mlp + ".up_proj", width, hidden, in_role, in_fusion, bias, expert);
  b.linear(mlp + ".down_proj", hidden, width, out_role, out_fusion, bias, expert);
}

enum class ffn_kind { dense, mixtral_moe, qwen3_moe };

// Embeddings, `layers` decoder layers (attention block + feed-forward block), final norm, lm_head.
// `ffn_of(i)` says which feed-forward layer i has.
template <typename FfnOf>
void build_decoder(spec_builder& b, model_spec& spec, const config_reader& cfg, attention_shape attn, FfnOf ffn_of) {
  const model_dims& d = spec.dims;
  const bool mlp_bias = cfg.flag_or({"mlp_bias"}, false);
  b.tensor("model.embed_tokens.weight", {d.vocab, d.hidden}, tensor_kind::embedding);
  for (int i = 0; i < int(d.layers); ++i) {
    const std::string layer = fmt::format("model.layers.{}", i);
    b.begin_block(i, block_kind::attention, layer);
    b.tensor(layer + ".input_layernorm.weight", {d.hidden}, tensor_kind::norm);
    add_attention(b, layer + ".self_attn", d.hidden, attn);

    const ffn_kind ffn = ffn_of(i);
    b.begin_block(i, ffn == ffn_kind::dense ? block_kind::mlp : block_kind::moe, layer);
    b.tensor(layer + ".post_attention_layernorm.weight", {d.hidden}, tensor_kind::norm);
    switch (ffn) {
      case ffn_kind::dense:
        add_gated_mlp(b, layer + ".mlp", d.hidden, d.intermediate, mlp_bias);
        break;
      case ffn_kind::mixtral_moe: {  // w1 = gate, w3 = up, w2 = down (conversion_mapping "mixtral")
        const std::string moe = layer + ".block_sparse_moe";
        b.linear(moe + ".gate", d.experts, d.hidden, linear_role::router, fusion::none);
        for (int e = 0; e < int(d.experts); ++e) {
          const std::string ex = fmt::format("{}.experts.{}", moe, e);
          b.linear(ex + ".w1", d.moe_intermediate, d.hidden, linear_role::expert, fusion::all_experts, false, e);
          b.linear(ex + ".w3", d.moe_intermediate, d.hidden, linear_role::expert, fusion::all_experts, false, e);
          b.linear(ex + ".w2", d.hidden, d.moe_intermediate, linear_role::expert, fusion::all_experts, false, e);
        }
        break;
      }
      case ffn_kind::qwen3_moe: {
        const std::string moe = layer + ".mlp";
        b.linear(moe + ".gate", d.experts, d.hidden, linear_role::router, fusion::none);
        for (int e = 0; e < int(d.experts); ++e)
          add_gated_mlp(b, fmt::format("{}.experts.{}", moe, e), d.hidden, d.moe_intermediate, false, e);
        break;
      }
    }
  }
  b.end_blocks();
  b.tensor("model.norm.weight", {d.hidden}, tensor_kind::norm);
  if (!d.tie_word_embeddings) b.linear("lm_head", d.vocab, d.hidden, linear_role::lm_head, fusion::none);
}

void read_common_dims(const config_reader& cfg, model_dims& d) {
  d.hidden = cfg.positive({"hidden_size"});
  d.vocab = cfg.positive({"vocab_size"});
  d.tie_word_embeddings = cfg.flag_or({"tie_word_embeddings"}, false);
}

void build_llama(const config_reader& cfg, model_spec& spec) {
  model_dims& d = spec.dims;
  read_common_dims(cfg, d);
  d.layers = cfg.positive({"num_hidden_layers"});
  d.intermediate = cfg.positive({"intermediate_size"});
  attention_shape attn = read_attention(cfg, d.hidden);
  set_attention_dims(d, attn);
  spec_builder b(spec);
  build_decoder(b, spec, cfg, attn, [](int) { return ffn_kind::dense; });
}

void build_mixtral(const config_reader& cfg, model_spec& spec) {
  model_dims& d = spec.dims;
  read_common_dims(cfg, d);
  d.layers = cfg.positive({"num_hidden_layers"});
  d.experts = cfg.positive({"num_local_experts"});
  d.experts_per_token = cfg.positive({"num_experts_per_tok"});
  d.moe_intermediate = cfg.positive({"intermediate_size"});  // Mixtral's intermediate_size is the expert width
  attention_shape attn = read_attention(cfg, d.hidden);
  set_attention_dims(d, attn);
  spec_builder b(spec);
  build_decoder(b, spec, cfg, attn, [](int) { return ffn_kind::mixtral_moe; });
}

void build_qwen3_moe(const config_reader& cfg, model_spec& spec) {
  model_dims& d = spec.dims;
  read_common_dims(cfg, d);
  d.layers = cfg.positive({"num_hidden_layers"});
  d.experts = cfg.count_or({"num_experts"}, 0);
  const int64_t sparse_step = cfg.positive_or({"decoder_sparse_step"}, 1);
  std::vector<bool> dense_only(size_t(d.layers), false);
  if (const json* only = cfg.find({"mlp_only_layers"})) {
    if (!only->is_array())
      cfg.fail(fmt::format("config key 'mlp_only_layers' must be a list of layer numbers, got {}", only->dump()));
    for (const json& v : *only) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= d.layers)
        cfg.fail(fmt::format("config key 'mlp_only_layers': {} is not a layer number below {}", v.dump(), d.layers));
      dense_only[v.get<size_t>()] = true;
    }
  }
  // Qwen3MoeDecoderLayer: MoE unless listed in mlp_only_layers or off the sparse step.
  const auto ffn_of = [&](int i) {
    const bool moe = d.experts > 0 && !dense_only[size_t(i)] && (i + 1) % sparse_step == 0;
    return moe ? ffn_kind::qwen3_moe : ffn_kind::dense;
  };
  bool any_moe = false, any_dense = false;
  for (int i = 0; i < int(d.layers); ++i) (ffn_of(i) == ffn_kind::dense ? any_dense : any_moe) = true;
  if (any_moe) {
    d.experts_per_token = cfg.positive({"num_experts_per_tok"});
    d.moe_intermediate = cfg.positive({"moe_intermediate_size"});
  }
  if (any_dense) d.intermediate = cfg.positive({"intermediate_size"});
  attention_shape attn = read_attention(cfg, d.hidden);
  attn.qk_norm = true;
  set_attention_dims(d, attn);
  spec_builder b(spec);
  build_decoder(b, spec, cfg, attn, ffn_of);
}

// ---- Nemotron-H (architecture.md §1.2-1.3) ----------------------------------------------------

// One block kind per layer from the legacy pattern string ("M*E-") or the list of block-type names.
std::vector<block_kind> read_pattern(const config_reader& cfg, std::initializer_list<std::string_view> keys) {
  const json* v = cfg.find(keys);
  if (!v) return {};
  const std::string key = cfg.found_key(keys);
  std::vector<block_kind> kinds;
  if (v->is_string()) {
    const std::string s = v->get<std::string>();
    for (size_t i = 0; i < s.size(); ++i) {
      switch (s[i]) {
        case 'M': kinds.push_back(block_kind::mamba); break;
        case '*': kinds.push_back(block_kind::attention); break;
        case '-': kinds.push_back(block_kind::mlp); break;
        case 'E': kinds.push_back(block_kind::moe); break;
        default:
          cfg.fail(fmt::format("config key '{}': character '{}' at position {} is not one of M (Mamba-2), * (attention), "
                               "- (MLP), E (MoE)", key, s[i], i));
      }
    }
  } else if (v->is_array()) {
    // transformers v5 renames mamba -> linear_attention and attention -> full_attention.
    for (const json& t : *v) {
      const std::string name = t.is_string() ? t.get<std::string>() : t.dump();
      if (name == "mamba" || name == "linear_attention") kinds.push_back(block_kind::mamba);
      else if (name == "attention" || name == "full_attention") kinds.push_back(block_kind::attention);
      else if (name == "mlp") kinds.push_back(block_kind::mlp);
      else if (name == "moe") kinds.push_back(block_kind::moe);
      else cfg.fail(fmt::format("config key '{}': unknown block type {}", key, t.dump()));
    }
  } else {
    cfg.fail(fmt::format("config key '{}' must be a pattern string or a list of block types, got {}", key, v->dump()));
  }
  if (kinds.empty()) cfg.fail(fmt::format("config key '{}' names no layers", key));
  return kinds;
}

struct nemotron_h_options {
  attention_shape attn{};
  bool mamba_proj_bias = false, conv_bias = true, mlp_bias = false;
};

void add_mamba(spec_builder& b, const std::string& mixer, const model_dims& d, const nemotron_h_options& o) {
  const int64_t inner = d.mamba_heads * d.mamba_head_dim;                 // I = H_m * P (not expand * hidden)
  const int64_t conv_channels = inner + 2 * d.mamba_groups * d.ssm_state;  // x, B, C go through the conv
  // in_proj rows: [z (I), xBC (I + 2GN), dt (H_m)]
  b.linear(mixer + ".in_proj", inner + conv_channels + d.mamba_heads, d.hidden, linear_role::mamba_in, fusion::none,
           o.mamba_proj_bias);
  b.tensor(mixer + ".conv1d.weight", {conv_channels, 1, d.conv_kernel}, tensor_kind::conv_weight);
  if (o.conv_bias) b.tensor(mixer + ".conv1d.bias", {conv_channels}, tensor_kind::conv_bias);
  b.tensor(mixer + ".dt_bias", {d.mamba_heads}, tensor_kind::ssm_param);
  b.tensor(mixer + ".A_log", {d.mamba_heads}, tensor_kind::ssm_param);
  b.tensor(mixer + ".D", {d.mamba_heads}, tensor_kind::ssm_param);
  b.tensor(mixer + ".norm.weight", {inner}, tensor_kind::norm);
  b.linear(mixer + ".out_proj", d.hidden, inner, linear_role::mamba_out, fusion::none, o.mamba_proj_bias);
}

void add_nemotron_moe(spec_builder& b, const std::string& mixer, const model_dims& d) {
  b.linear(mixer + ".gate", d.experts, d.hidden, linear_role::router, fusion::none);
  b.tensor(mixer + ".gate.e_score_correction_bias", {d.experts}, tensor_kind::router_bias);
  // Routed experts work in the latent width when there are latent projections.
  const int64_t width = d.moe_latent > 0 ? d.moe_latent : d.hidden;
  if (d.moe_latent > 0) b.linear(mixer + ".fc1_latent_proj", d.moe_latent, d.hidden, linear_role::latent, fusion::none);
  for (int e = 0; e < int(d.experts); ++e) {
    const std::string ex = fmt::format("{}.experts.{}", mixer, e);
    b.linear(ex + ".up_proj", d.moe_intermediate, width, linear_role::expert, fusion::all_experts, false, e);
    b.linear(ex + ".down_proj", width, d.moe_intermediate, linear_role::expert, fusion::all_experts, false, e);
  }
  if (d.moe_latent > 0) b.linear(mixer + ".fc2_latent_proj", d.hidden, d.moe_latent, linear_role::latent, fusion::none);
  if (d.shared_intermediate > 0) {  // reads the full-width x, not the latent one
    // up_proj matches the generic gate/up rule alone (key "...shared_experts"); down_proj is its own.
    b.linear(mixer + ".shared_experts.up_proj", d.shared_intermediate, d.hidden, linear_role::shared_expert,
             fusion::with_siblings);
    b.linear(mixer + ".shared_experts.down_proj", d.hidden, d.shared_intermediate, linear_role::shared_expert,
             fusion::none);
  }
}

void add_nemotron_block(spec_builder& b, const std::string& prefix, block_kind kind, const model_dims& d,
                        const nemotron_h_options& o) {
  b.tensor(prefix + ".norm.weight", {d.hidden}, tensor_kind::norm);
  const std::string mixer = prefix + ".mixer";
  switch (kind) {
    case block_kind::mamba: add_mamba(b, mixer, d, o); break;
    case block_kind::attention: add_attention(b, mixer, d.hidden, o.attn); break;
    case block_kind::mlp:  // relu2, no gate: up_proj alone matches the gate/up rule
      b.linear(mixer + ".up_proj", d.intermediate, d.hidden, linear_role::up, fusion::with_siblings, o.mlp_bias);
      b.linear(mixer + ".down_proj", d.hidden, d.intermediate, linear_role::down, fusion::none, o.mlp_bias);
      break;
    case block_kind::moe: add_nemotron_moe(b, mixer, d); break;
  }
}

void build_nemotron_h(const config_reader& cfg, model_spec& spec) {
  model_dims& d = spec.dims;
  read_common_dims(cfg, d);
  const std::vector<block_kind> pattern = read_pattern(cfg, {"hybrid_override_pattern", "layers_block_type"});
  if (pattern.empty()) cfg.fail("config key 'hybrid_override_pattern' (or 'layers_block_type') is missing");
  d.layers = int64_t(pattern.size());
  // num_hidden_layers is deprecated (derived from the pattern); a disagreeing value means a broken config.
  if (cfg.has({"num_hidden_layers"}) && cfg.positive({"num_hidden_layers"}) != d.layers)
    cfg.fail(fmt::format("config key 'num_hidden_layers' ({}) disagrees with the {} layers of '{}'",
                         cfg.positive({"num_hidden_layers"}), d.layers,
                         cfg.found_key({"hybrid_override_pattern", "layers_block_type"})));

  d.mtp_layers = cfg.count_or({"num_nextn_predict_layers"}, 0);
  std::vector<block_kind> mtp_pattern;
  if (d.mtp_layers > 0) {
    // vLLM (nemotron_h_mtp.py) asserts a single MTP step; the layout of more is unconfirmed.
    if (d.mtp_layers > 1)
      cfg.fail(fmt::format("config key 'num_nextn_predict_layers' is {}: only 1 MTP step is supported", d.mtp_layers));
    mtp_pattern = read_pattern(cfg, {"mtp_hybrid_override_pattern", "mtp_layers_block_type"});
    if (mtp_pattern.empty())
      cfg.fail("config key 'mtp_hybrid_override_pattern' (or 'mtp_layers_block_type') is missing "
               "(num_nextn_predict_layers > 0)");
  }
  const auto uses = [&](block_kind k) {
    return std::count(pattern.begin(), pattern.end(), k) + std::count(mtp_pattern.begin(), mtp_pattern.end(), k) > 0;
  };

  nemotron_h_options o;
  o.mlp_bias = cfg.flag_or({"mlp_bias"}, false);
  if (uses(block_kind::attention)) {
    o.attn = read_attention(cfg, d.hidden);
    set_attention_dims(d, o.attn);
  }
  if (uses(block_kind::mamba)) {
    d.mamba_heads = cfg.positive({"mamba_num_heads"});
    d.mamba_head_dim = cfg.positive({"mamba_head_dim"});
    d.mamba_groups = cfg.positive({"n_groups", "mamba_n_groups"});
    d.ssm_state = cfg.positive({"ssm_state_size"});
    d.conv_kernel = cfg.positive({"conv_kernel", "mamba_d_conv"});
    if (d.mamba_heads % d.mamba_groups != 0)
      cfg.fail(fmt::format("config key 'mamba_num_heads' ({}) is not a multiple of '{}' ({})", d.mamba_heads,
                           cfg.found_key({"n_groups", "mamba_n_groups"}), d.mamba_groups));
    o.conv_bias = cfg.flag_or({"use_conv_bias"}, true);
    o.mamba_proj_bias = cfg.flag_or({"mamba_proj_bias", "use_bias"}, false);
  }
  if (uses(block_kind::mlp)) d.intermediate = cfg.positive({"intermediate_size"});
  if (uses(block_kind::moe)) {
    d.experts = cfg.positive({"n_routed_experts", "num_local_experts"});
    d.experts_per_token = cfg.positive({"num_experts_per_tok"});
    d.moe_intermediate = cfg.positive({"moe_intermediate_size"});
    d.moe_latent = cfg.count_or({"moe_latent_size"}, 0);
    const int64_t shared = cfg.count_or({"n_shared_experts"}, 1);
    if (shared > 1)
      cfg.fail(fmt::format("config key 'n_shared_experts' is {}: only 0 or 1 shared expert is supported", shared));
    if (shared == 1) d.shared_intermediate = cfg.positive({"moe_shared_expert_intermediate_size"});
    // Which MoE projections would carry a bias is unconfirmed; refuse rather than guess.
    if (o.mlp_bias) cfg.fail("config key 'mlp_bias' is true: MoE layers with biases are not supported");
  }

  spec_builder b(spec);
  b.tensor("backbone.embeddings.weight", {d.vocab, d.hidden}, tensor_kind::embedding, {"backbone.embedding.weight"});
  for (int i = 0; i < int(pattern.size()); ++i) {
    const std::string prefix = fmt::format("backbone.layers.{}", i);
    b.begin_block(i, pattern[size_t(i)], prefix);
    add_nemotron_block(b, prefix, pattern[size_t(i)], d, o);
  }
  // MTP (vLLM NemotronHMultiTokenPredictor): the step's first layer fuses the normed embedding and
  // hidden state through eh_proj, its last ends with final_layernorm; embeddings and lm_head are shared.
  for (int i = 0; i < int(mtp_pattern.size()); ++i) {
    const std::string prefix = fmt::format("mtp.layers.{}", i);
    b.begin_block(i, mtp_pattern[size_t(i)], prefix, true);
    if (i == 0) {
      b.tensor(prefix + ".enorm.weight", {d.hidden}, tensor_kind::norm);
      b.tensor(prefix + ".hnorm.weight", {d.hidden}, tensor_kind::norm);
      b.linear(prefix + ".eh_proj", d.hidden, 2 * d.hidden, linear_role::mtp_fusion, fusion::none);
    }
    add_nemotron_block(b, prefix, mtp_pattern[size_t(i)], d, o);
    if (i + 1 == int(mtp_pattern.size())) b.tensor(prefix + ".final_layernorm.weight", {d.hidden}, tensor_kind::norm);
  }
  b.end_blocks();
  b.tensor("backbone.norm_f.weight", {d.hidden}, tensor_kind::norm);
  if (!d.tie_word_embeddings) b.linear("lm_head", d.vocab, d.hidden, linear_role::lm_head, fusion::none);
}

// ---- architecture dispatch --------------------------------------------------------------------

struct architecture {
  std::string_view class_name, model_type;
  void (*build)(const config_reader&, model_spec&);
};

constexpr architecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", build_llama},
    {"MixtralForCausalLM", "mixtral", build_mixtral},
    {"Qwen3MoeForCausalLM", "qwen3_moe", build_qwen3_moe},
    {"NemotronHForCausalLM", "nemotron_h", build_nemotron_h},
};

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchitectures) s += fmt::format("{}{} ({})", s.empty() ? "" : ", ", a.class_name, a.model_type);
  return s;
}

// The first entry of `architectures` we know, else `model_type`.
const architecture& pick_architecture(const config_reader& cfg) {
  std::vector<std::string> named;
  if (const json* list = cfg.find({"architectures"})) {
    if (!list->is_array())
      cfg.fail(fmt::format("config key 'architectures' must be a list of class names, got {}", list->dump()));
    for (const json& n : *list) {
      if (!n.is_string()) cfg.fail(fmt::format("config key 'architectures' holds {}, not a class name", n.dump()));
      named.push_back(n.get<std::string>());
      for (const auto& a : kArchitectures)
        if (a.class_name == named.back()) return a;
    }
  }
  if (const json* type = cfg.find({"model_type"})) {
    if (!type->is_string()) cfg.fail(fmt::format("config key 'model_type' must be a string, got {}", type->dump()));
    named.push_back(type->get<std::string>());
    for (const auto& a : kArchitectures)
      if (a.model_type == named.back()) return a;
  }
  if (named.empty())
    cfg.fail(fmt::format("config key 'architectures' (or 'model_type') is missing; supported: {}", supported_list()));
  cfg.fail(fmt::format("unsupported architecture {}; supported: {}", fmt::join(named, " / "), supported_list()));
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

bool names_supported_architecture(const json& config) {
  if (!config.is_object()) return false;
  try {
    (void)pick_architecture(config_reader(config, "config.json"));
    return true;
  } catch (const io_error&) {
    return false;
  }
}

model_spec model_spec_from_config(const json& config, std::string_view origin) {
  const config_reader cfg(config, origin);
  if (!config.is_object()) cfg.fail("config is not a JSON object");
  const architecture& arch = pick_architecture(cfg);
  model_spec spec;
  spec.architecture = std::string(arch.model_type);
  spec.origin = std::string(origin);
  arch.build(cfg, spec);
  return spec;
}

model_spec model_spec_from_file(const std::filesystem::path& path) {
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  return model_spec_from_config(read_hf_config(file), file.string());
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const model_spec& spec) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.reserve(spec.linears.size() + spec.tensors.size());
  for (const auto& l : spec.linears) out.emplace_back(l.weight_name(), l.shape());
  for (const auto& t : spec.tensors) out.emplace_back(t.name, t.shape);
  return out;
}

int64_t parameter_count(const model_spec& spec) {
  int64_t n = 0;
  for (const auto& l : spec.linears) n += l.numel();
  for (const auto& t : spec.tensors) n += t.numel();
  return n;
}

int64_t active_parameter_count(const model_spec& spec) {
  const auto in_mtp = [&](int block) { return block >= 0 && spec.blocks[size_t(block)].mtp; };
  int64_t n = 0;
  for (const auto& l : spec.linears)  // experts are equal in size: count the first k of each layer
    if (!in_mtp(l.block) && (l.expert < 0 || l.expert < spec.dims.experts_per_token)) n += l.numel();
  for (const auto& t : spec.tensors)
    if (!in_mtp(t.block)) n += t.numel();
  return n;
}

std::vector<std::string> check_against_tensors(
    const model_spec& spec, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
    const std::vector<std::string>& files) {
  struct expected {
    std::string name;
    std::vector<int64_t> shape;
    bool found = false;
  };
  std::vector<expected> want;
  std::unordered_map<std::string, size_t> by_name;  // spec names and their aliases -> want index
  for (auto& [name, shape] : expected_tensors(spec)) {
    by_name.emplace(name, want.size());
    want.push_back({std::move(name), std::move(shape)});
  }
  for (const auto& t : spec.tensors)
    for (const auto& alias : t.aliases) by_name.emplace(alias, by_name.at(t.name));

  std::vector<std::string> problems;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, shape] = tensors[i];
    const std::string in = i < files.size() ? files[i] + ": " : "";
    const auto it = by_name.find(name);
    if (it == by_name.end()) {
      problems.push_back(fmt::format("{}unexpected tensor '{}' {}: not in the {} model of {}", in, name,
                                     shape_string(shape), spec.architecture, spec.origin));
      continue;
    }
    expected& e = want[it->second];
    if (e.found) {
      problems.push_back(fmt::format("{}tensor '{}' appears twice (or under two spellings of '{}')", in, name, e.name));
      continue;
    }
    e.found = true;
    if (shape != e.shape)
      problems.push_back(fmt::format("{}tensor '{}' has shape {}, expected {}", in, name, shape_string(shape),
                                     shape_string(e.shape)));
  }
  for (const auto& e : want)
    if (!e.found) problems.push_back(fmt::format("missing tensor '{}' (expected shape {})", e.name, shape_string(e.shape)));
  return problems;
}

}  // namespace mixq
