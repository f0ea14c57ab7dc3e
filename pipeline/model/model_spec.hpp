// ModelSpec: a model's structure from its Hugging Face config.json alone, no weights read. It lists the
// residual blocks in forward order and every tensor the checkpoint must hold: each linear with its
// role and quant group (shared/reference/autoquantize-numerics.md §1.6), and every other tensor
// (norms, embeddings, conv1d, SSM parameters, router biases). Names and shapes follow
// shared/reference/architecture.md §1-2. `mixq plan` works from this; loaders check weights against it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mixq {

// One residual sub-block: pre-norm, one mixer, residual add. A Llama-style decoder layer is two
// blocks (attention, then mlp or moe); a Nemotron-H layer is one.
enum class block_kind { attention, mlp, moe, mamba };

enum class linear_role {
  qkv,            // q_proj / k_proj / v_proj
  o,              // attention output
  gate_up,        // gated MLP (SwiGLU) gate_proj / up_proj
  up,             // ungated MLP (relu2) up_proj
  down,           // dense MLP down_proj
  expert,         // any projection of a routed expert
  shared_expert,  // any projection of an always-on shared expert
  mamba_in,
  mamba_out,
  latent,         // latent-MoE fc1_latent_proj / fc2_latent_proj
  router,         // MoE gate: [experts, hidden]
  mtp_fusion,     // MTP eh_proj: [hidden, 2 * hidden]
  lm_head,
};

enum class tensor_kind {
  embedding,
  norm,         // RMSNorm weight (block pre-norms, q/k norms, the Mamba gated norm, the final norm)
  linear_bias,
  conv_weight,  // Mamba depthwise conv1d [channels, 1, kernel]
  conv_bias,
  ssm_param,    // Mamba A_log, D, dt_bias: one value per head
  router_bias,  // e_score_correction_bias (selection only)
};

std::string_view to_string(block_kind k);
std::string_view to_string(linear_role r);
std::string_view to_string(tensor_kind k);

struct block_spec {
  int index = 0;         // position in model_spec::blocks
  int layer = 0;         // N in "...layers.N." of the tensor names
  block_kind kind = block_kind::attention;
  bool mtp = false;      // part of the multi-token-prediction head, not of the main forward pass
  std::string prefix;    // "model.layers.3", "backbone.layers.3", "mtp.layers.0"
};

struct linear_spec {
  std::string module;    // "model.layers.0.self_attn.q_proj"; the weight is module + ".weight"
  int64_t out_features = 0, in_features = 0;
  linear_role role = linear_role::qkv;
  // Linears with equal keys are fused at runtime and must share one format (numerics §1.6; the
  // key is the first matching rule's group(1), or the module name when no rule matches).
  std::string quant_group;
  bool quantizable = true;  // searched by default: false for routers, lm_head and MTP (kept BF16)
  bool has_bias = false;    // the bias tensor is listed in model_spec::tensors
  int block = -1;           // index into model_spec::blocks; -1 for lm_head
  int expert = -1;          // routed-expert number, -1 otherwise

  std::string weight_name() const { return module + ".weight"; }
  std::vector<int64_t> shape() const { return {out_features, in_features}; }
  int64_t numel() const { return out_features * in_features; }
};

struct tensor_spec {
  std::string name;
  std::vector<int64_t> shape;
  tensor_kind kind = tensor_kind::norm;
  int block = -1;                    // -1: embeddings, final norm
  std::vector<std::string> aliases;  // other on-disk spellings accepted ("backbone.embedding.weight")

  int64_t numel() const;
};

// The config values the shapes come from; 0 where the architecture has no such thing.
struct model_dims {
  int64_t hidden = 0, vocab = 0, layers = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t intermediate = 0;                       // dense MLP width
  int64_t experts = 0, experts_per_token = 0, moe_intermediate = 0;
  int64_t shared_intermediate = 0, moe_latent = 0;
  int64_t mamba_heads = 0, mamba_head_dim = 0, mamba_groups = 0, ssm_state = 0, conv_kernel = 0;
  int64_t mtp_layers = 0;                         // num_nextn_predict_layers
  bool tie_word_embeddings = false;
};

struct model_spec {
  std::string architecture;  // model_type: "llama", "mixtral", "qwen3_moe", "nemotron_h"
  std::string origin;        // the config file (or caller's label), for messages
  model_dims dims;
  std::vector<block_spec> blocks;    // backbone in forward order, then MTP blocks
  std::vector<linear_spec> linears;  // in forward order; lm_head last
  std::vector<tensor_spec> tensors;  // every non-linear-weight tensor, linear biases included
};

// The key fused siblings share (one weight_scale_2 and input_scale: the engines run them as one
// GEMM): "<prefix>.qkv" for q/k/v_proj, "<prefix>.gate_up" for gate/up_proj and Mixtral w1/w3; the
// module itself otherwise.
// (Inline: the recipe planner and its fuzz target use it without the rest of model_spec.cpp.)
inline std::string scale_sharing_key(const std::string& module) {
  const size_t dot = module.rfind('.');
  if (dot == std::string::npos) return module;
  const std::string leaf = module.substr(dot + 1), prefix = module.substr(0, dot);
  if (leaf == "q_proj" || leaf == "k_proj" || leaf == "v_proj") return prefix + ".qkv";
  if (leaf == "gate_proj" || leaf == "up_proj" || leaf == "w1" || leaf == "w3") return prefix + ".gate_up";
  return module;
}

// Builds the spec; `origin` names the config in error messages. Missing or ill-typed keys,
// unsupported architectures and options throw mixq::io_error naming origin and key.
model_spec model_spec_from_config(const nlohmann::json& config, std::string_view origin);
// Whether config names (in architectures or model_type) an architecture model_spec_from_config
// builds: where one does and the config still fails, the config is wrong, not merely foreign.
bool names_supported_architecture(const nlohmann::json& config);
// `path` is a config.json or a checkpoint directory holding one.
model_spec model_spec_from_file(const std::filesystem::path& path);

// Every tensor the checkpoint holds: linear weights, then model_spec::tensors.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const model_spec& spec);

int64_t parameter_count(const model_spec& spec);
// Parameters one token touches in the main forward pass: MTP blocks left out, k of E routed
// experts per MoE block; embeddings and lm_head counted whole.
int64_t active_parameter_count(const model_spec& spec);

// Messages naming each missing, unexpected or wrong-shaped tensor; empty when the checkpoint
// matches the spec. `files`, when given, holds each tensor's file (parallel to `tensors`): the
// messages about a present tensor then start with "<file>: ".
std::vector<std::string> check_against_tensors(
    const model_spec& spec, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
    const std::vector<std::string>& files = {});

}  // namespace mixq
