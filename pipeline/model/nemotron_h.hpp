// An FP32 Nemotron-H decoder (NemotronHForCausalLM, model_type nemotron_h; shared/reference/
// architecture.md §1.4-1.8, pitfalls §1.10): a hybrid stack of one-mixer blocks, each
// h = h + mixer(rmsnorm(h)), with the mixer one of
//   M  Mamba-2 (in_proj -> [z, xBC, dt]; causal depthwise conv1d + SiLU over xBC; exact SSD recurrence;
//      D skip; gated grouped RMSNorm y * silu(z); out_proj),
//   *  causal GQA attention with no positional encoding,
//   E  latent MoE (sigmoid router, correction bias for selection only; relu2 experts in the latent
//      width between fc1/fc2_latent_proj; a relu2 shared expert on the full width),
//   -  dense relu2 MLP;
// then backbone.norm_f and an untied lm_head. llm.c style as pipeline/model/llama.hpp, whose ops
// (rmsnorm_forward, attention_forward, linear_hooked) it reuses. Shapes in comments: T tokens,
// H hidden, Hm Mamba heads of P channels, I = Hm*P, G groups (R = Hm/G heads each), N state,
// K conv width, CD = I + 2GN conv channels, E experts, k per token, L latent width, V vocab.
// The MTP head (mtp.*) is not part of the forward pass and is not loaded.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "pipeline/model/llama.hpp"
#include "pipeline/model/model_spec.hpp"

namespace mixq {

struct nemotron_h_config {
  int64_t vocab = 0, hidden = 0, layers = 0;
  int64_t max_positions = 0;                    // max_position_embeddings
  float eps = 1e-5f;                            // layer_norm_epsilon: block norms, norm_f, the gated norm
  // attention (*)
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  // dense MLP (-)
  int64_t intermediate = 0;
  // Mamba-2 (M)
  int64_t mamba_heads = 0, mamba_head_dim = 0, mamba_groups = 0, ssm_state = 0, conv_kernel = 0;
  // dt clamp after the softplus: time_step_limit (legacy mamba_dt_limit) = [dt_min, dt_max], no clamp
  // ([0, inf)) unless the config sets it. Transformers' torch path clamps at [time_step_min, inf)
  // instead (architecture.md §1.5).
  float dt_min = 0.0f;
  float dt_max = std::numeric_limits<float>::infinity();
  // latent MoE (E)
  int64_t experts = 0, experts_per_token = 0, moe_intermediate = 0;
  int64_t shared_intermediate = 0;              // 0: no shared expert
  int64_t moe_latent = 0;                       // 0: no latent projections (experts run at H)
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// One routed expert, or the shared expert: down(relu2(up(x))), no gate.
struct relu2_mlp {
  llama_linear up, down;  // [I_e, in], [in, I_e]
};

struct nemotron_h_layer {
  block_kind kind = block_kind::mamba;
  std::vector<float> norm;                  // pre-norm [H]
  // M
  llama_linear in_proj, out_proj;           // [I + CD + Hm, H], [H, I]
  std::vector<float> conv_w, conv_b;        // [CD, K] (conv1d.weight [CD, 1, K]), [CD] (empty: no bias)
  std::vector<float> dt_bias, A_log, D;     // [Hm] each
  std::vector<float> gated_norm;            // mixer.norm [I]
  // *
  llama_linear q, k, v, o;                  // [nh*hd, H], [nkv*hd, H], [nkv*hd, H], [H, nh*hd]
  kv_cache_scales kv;                       // FP8 KV cache, when the checkpoint has k_scale / v_scale
  // -
  relu2_mlp mlp;                            // [I_mlp, H], [H, I_mlp]
  // E
  llama_linear router;                      // gate [E, H]
  std::vector<float> score_bias;            // gate.e_score_correction_bias [E]
  llama_linear fc1_latent, fc2_latent;      // [L, H], [H, L]; empty when moe_latent == 0
  std::vector<relu2_mlp> experts;           // [E]: [I_moe, L], [L, I_moe]
  relu2_mlp shared;                         // [I_sh, H], [H, I_sh]; empty when no shared expert
};

// ---- the ops ---------------------------------------------------------------------------------

// The backward functions follow llama.hpp: activation gradients only, and each says whether it
// overwrites or ACCUMULATES (+=) into its input gradients.

// x[n] = relu(x)^2, in place
void relu2(float* x, int64_t n);
// dx[n] = dout * 2 relu(x), x the forward input (overwritten)
void relu2_backward(float* dx, const float* dout, const float* x, int64_t n);
// out[T, C] = silu(b[c] + sum_k w[c, k] * x[t - (K-1) + k, c])  with x[<0] = 0; depthwise causal conv1d
// over time, then SiLU. w [C, K], b [C] or null. out must not alias x. x rows have stride x_stride.
void causal_conv1d_forward(float* out, const float* x, int64_t x_stride, const float* w, const float* b, int64_t T,
                           int64_t C, int64_t K);
// dx[T, C] += dloss/dx from dout [T, C] (the gradient at the SiLU output), x the forward input; the
// pre-activation is recomputed. dx rows have stride dx_stride. Accumulates (every tap adds).
void causal_conv1d_backward(float* dx, int64_t dx_stride, const float* dout, const float* x, int64_t x_stride,
                            const float* w, const float* b, int64_t T, int64_t C, int64_t K);
// The SSD recurrence itself is kernels/cpu/ssd_scan.hpp.
// out[T, I] = weight * rmsnorm_per_group(y * silu(z)), groups of I/G channels (norm_before_gate=False).
// z rows have stride z_stride. out may alias y.
void gated_rmsnorm_forward(float* out, const float* y, const float* z, int64_t z_stride, const float* weight,
                           int64_t T, int64_t I, int64_t G, float eps);
// dy [T, I] and dz (row stride z_stride) from dout [T, I], given the forward inputs y and z; the
// group rstd is recomputed. Overwrites both.
void gated_rmsnorm_backward(float* dy, float* dz, int64_t dz_stride, const float* dout, const float* y, const float* z,
                            int64_t z_stride, const float* weight, int64_t T, int64_t I, int64_t G, float eps);
// out[T, H] = out_proj(gated_norm(ssd(conv(xBC)), z)) with [z, xBC, dt] = in_proj(x); x [T, H].
void mamba2_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                    const forward_hooks& hook);
// out[T, H] = fc2(sum_j w_j * expert_j(fc1(x))) + shared(x), x [T, H] (pre-normed). Router: s = sigmoid(gate(x))
// in fp32; the k largest s + score_bias chosen; w = s (unbiased) / sum (when norm_topk_prob) * scaling.
// Each expert runs on its routed tokens only, [T_e, *], experts in ascending order.
void latent_moe_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                        const forward_hooks& hook);

// ---- the model -------------------------------------------------------------------------------

class nemotron_h_model : public causal_lm {
 public:
  // Reads config.json and the safetensors weights of a NemotronHForCausalLM directory (on-disk
  // names, backbone.*; embedding or embeddings). Throws io_error for another architecture, an
  // unsupported option (n_group or topk_group above 1, activations other than relu2 / silu), or
  // missing / ill-shaped / non-float tensors.
  // With a parallel layout it keeps this rank's share, as llama_model::load does: attention heads,
  // dense-MLP and shared-expert columns, and Mamba heads with their groups (in_proj's z, x, B, C and
  // dt rows, conv1d channels, dt_bias / A_log / D / norm, out_proj columns) split over tp; routed
  // experts over ep; router, latent projections, norms, embeddings and lm_head whole.
  // With layer_weights::on_demand it reads no layer until load_layer (llama_model::load).
  static nemotron_h_model load(const std::filesystem::path& dir, const parallel_context& parallel = {},
                               layer_weights weights = layer_weights::all);

  const nemotron_h_config& config() const { return config_; }
  const model_spec& spec() const override { return spec_; }
  int64_t vocab() const override { return config_.vocab; }
  int64_t max_positions() const override { return config_.max_positions; }
  void for_each_linear(const std::function<void(llama_linear&)>& f) override;
  void set_kv_cache_scales(const std::string& attention, const kv_cache_scales& scales) override;

  // The forward pass in pieces (causal_lm::forward: logits [T, V] for tokens [T], a fresh context).
  std::vector<float> embed(std::span<const int32_t> tokens) const override;
  void layer_forward(int64_t layer, float* h, int64_t T, const forward_hooks& hook = {}) const override;
  std::vector<float> head(const float* h, int64_t T, const forward_hooks& hook = {}) const override;
  int64_t layer_count() const override { return config_.layers; }
  int64_t hidden() const override { return config_.hidden; }

  // The loss and dloss/dY at the output of every linear, as llama_model::forward_backward (activation
  // gradients only; T in 2..max_positions). Through the Mamba-2 mixers (in_proj's dY assembles dz, the
  // conv input's gradient and ddt through the softplus, zero where the dt clamp is active), the
  // attention blocks, the relu2 MLPs and the latent MoE: the top-k choice (made with the correction
  // bias) is piecewise constant; the router's gradient flows through the selected sigmoid scores and
  // their normalization. A routed expert's linears get [T_e, out] over its tokens in the order the
  // hook sees them, empty when no token is routed to it.
  llama_grads forward_backward(std::span<const int32_t> tokens, const forward_hooks& hook = {},
                               activation_memory memory = activation_memory::keep) const override;

 private:
  model_spec spec_;
  nemotron_h_config config_;
  std::vector<float> embed_;        // backbone.embeddings [V, H]
  std::vector<nemotron_h_layer> layers_;
  std::vector<float> norm_f_;       // [H]
  llama_linear lm_head_;            // [V, H]
  parallel_context par_;
  nemotron_h_config local_;         // config_ with this rank's shares of the heads and widths

  void set_shares();                                  // local_: this rank's share of par_.layout
  void read_layer(const fp32_weight_reader& w, int64_t layer) override;  // its weights, then keep_share
  void clear_layer(int64_t layer) override;
  void keep_share(nemotron_h_layer& L) const;         // cuts a loaded layer down to this rank's share
  struct saved;  // the activations forward_backward keeps
};

}  // namespace mixq
