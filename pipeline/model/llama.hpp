// An FP32 Llama-family decoder (shared/reference/architecture.md §2.1-2.4): Llama, Mixtral and
// Qwen3-MoE (routed SwiGLU experts; Qwen3 q/k RMSNorm). llm.c style: the weights
// are widened to fp32 once at load, and the forward pass is a sequence of plain per-op functions
// over row-major fp32 buffers. Shapes in comments: T tokens, H hidden, nh / nkv query / KV heads,
// hd head_dim, I intermediate (dense MLP or one expert), V vocab, E experts, k experts per token.
//
// Every linear layer goes through linear_forward(), the one place where fake-quantization and
// activation observers will attach later.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "pipeline/parallel/comm.hpp"

#include "formats/format_traits.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/model/layer_weights.hpp"
#include "pipeline/model/model_spec.hpp"

namespace mixq {

// rope_type "llama3" (Llama 3.1+): per-band rescaling of the RoPE inverse frequencies, as
// transformers' _compute_llama3_parameters (its attention factor is always 1).
struct llama3_rope_scaling {
  double factor = 8.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  double original_max_positions = 8192.0;  // original_max_position_embeddings
};

struct llama_config {
  int64_t vocab = 0, hidden = 0, layers = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t intermediate = 0;
  int64_t max_positions = 0;   // max_position_embeddings
  float rms_norm_eps = 1e-6f;  // rms_norm_eps (HF LlamaConfig default)
  double rope_theta = 10000.0; // rope_theta, or rope_parameters.rope_theta
  std::optional<llama3_rope_scaling> rope_llama3;  // rope_scaling / rope_parameters with rope_type llama3
  bool tie_word_embeddings = false;
  // Mixture of experts (Mixtral, Qwen3-MoE); 0 / false for Llama.
  int64_t experts = 0, experts_per_token = 0;  // E (num_local_experts / num_experts), k (num_experts_per_tok)
  int64_t moe_intermediate = 0;                // one expert's width
  bool norm_topk_prob = false;                 // renormalise the top-k weights (always for Mixtral)
  bool qk_norm = false;                        // Qwen3: RMSNorm over head_dim on q and k, before RoPE
};

// How a quantized runtime rounds a linear's input before the GEMM (W8A8: FP8 per tensor; W4A4:
// NVFP4 with dynamic block scales under a static input_scale). bf16: the input is used as is.
struct input_quant {
  format_id format = format_id::bf16;
  float input_scale = 0.0f;
};

// One linear: y[T, out] = q(x)[T, in] @ w[out, in]^T (+ bias[out]), q the input fake-quant.
struct llama_linear {
  std::string name;           // module name, "model.layers.0.self_attn.q_proj"
  int64_t out = 0, in = 0;
  std::vector<float> w;       // [out, in] row-major (dequantized, for a quantized checkpoint)
  std::vector<float> bias;    // [out], empty when the layer has none
  input_quant act;            // from the checkpoint's input_scale, or set by a fake-quant run
};

// FP8 KV-cache scales of one attention block (k_proj.k_scale, v_proj.v_scale); 0: KV kept in full precision.
struct kv_cache_scales {
  float k = 0.0f, v = 0.0f;
};

// One routed SwiGLU expert: Mixtral w1 / w3 / w2, Qwen3-MoE gate_proj / up_proj / down_proj.
struct llama_expert {
  llama_linear gate, up, down;   // [I, H], [I, H], [H, I]
};

struct llama_layer {
  std::vector<float> attn_norm;  // input_layernorm [H]
  llama_linear q, k, v, o;       // [nh*hd, H], [nkv*hd, H], [nkv*hd, H], [H, nh*hd]
  std::vector<float> q_norm, k_norm;  // Qwen3 self_attn.{q,k}_norm [hd]; empty otherwise
  kv_cache_scales kv;            // FP8 KV cache, when the checkpoint has k_scale / v_scale
  std::vector<float> mlp_norm;   // post_attention_layernorm [H]
  bool moe = false;              // feed-forward: the routed experts below, else the dense MLP
  llama_linear gate, up, down;   // dense MLP [I, H], [I, H], [H, I]
  llama_linear router;           // MoE gate [E, H] ("...block_sparse_moe.gate", "...mlp.gate")
  std::vector<llama_expert> experts;  // [E]
};

// Called right after every linear (and lm_head) with its output y [T, out], which it may modify in
// place; everything downstream sees the modified output. The seam for fake-quant scoring and for
// the finite-difference tests (an additive perturbation at one module). For a routed expert, T is
// the number of tokens routed to it and the rows are those tokens in position order.
using linear_output_hook = std::function<void(const std::string& name, float* y, int64_t T, int64_t out)>;
// Called right before every linear with its input x [T, in] as the source model computes it (before
// any activation fake-quant): calibration observes input amax here.
using linear_input_observer = std::function<void(const std::string& name, const float* x, int64_t T, int64_t in)>;
// Called once per attention block with post-RoPE K and V, [T, kv_dim] each (before any KV fake-quant):
// the KV-cache scales come from here. `attention` is the module owning k_proj ("...self_attn", "...mixer").
using kv_observer =
    std::function<void(const std::string& attention, const float* k, const float* v, int64_t T, int64_t kv_dim)>;

// Called for every routed expert of each MoE block, before it runs: the tokens routed to it (ascending
// positions: the rows its linears see) and the weights its output is scaled by. Scoring a whole MoE
// layer at the block output needs them. `moe` is the block ("...block_sparse_moe", "...mixer").
using routing_observer = std::function<void(const std::string& moe, int64_t expert, const int64_t* tokens,
                                            const float* weights, int64_t n)>;

// Everything a forward pass lets callers see or change. Converts from a bare output hook, which is
// what most callers pass.
struct forward_hooks {
  linear_output_hook output;
  linear_input_observer input;
  kv_observer kv;
  routing_observer routing;

  forward_hooks() = default;
  template <class F>
    requires std::is_invocable_v<F&, const std::string&, float*, int64_t, int64_t>
  forward_hooks(F f) : output(std::move(f)) {}  // NOLINT: implicit on purpose
};

// What forward_backward keeps between its forward and its backward half.
enum class activation_memory {
  keep,       // every block's activations: the fastest
  recompute,  // only each block's input [T, H]: a block runs forward again right before its backward,
              // so activations take L·T·H plus one block. The re-run calls the output hook again (it
              // may rewrite Y, as fake-quant replays do, and must do it the same way both times) and
              // no observer: input / KV / routing observers see each block once.
};

// The hooks a recomputed block runs with.
inline forward_hooks recompute_hooks(const forward_hooks& hook) {
  forward_hooks replay;
  replay.output = hook.output;
  return replay;
}

struct llama_grads {
  // Mean next-token cross-entropy (nats) over positions 0..T-2 predicting tokens 1..T-1 (the HF
  // labels = input_ids convention), accumulated in double.
  double loss = 0.0;
  // Module name ("model.layers.0.self_attn.q_proj", ..., "lm_head") -> dloss/dY, [T, out] row-major
  // ([T_e, out] for a routed expert).
  std::map<std::string, std::vector<float>> dy;
};

class fp32_weight_reader;

// A causal language model as evaluation sees it (llama_model, nemotron_h_model): logits [T, V] for
// tokens [T] in a fresh context, every linear's output passed through `hook` when set.
class causal_lm {
 public:
  virtual ~causal_lm() = default;
  // embed(), layer_forward() of every layer in order, then head(). The pieces are public so that
  // calibration and evaluation can pass many sequences through one layer at a time (layer_stream.hpp).
  std::vector<float> forward(std::span<const int32_t> tokens, const forward_hooks& hook = {}) const;
  // The residual stream h [T, H] entering layer 0: the embeddings of tokens (checked: 1..max_positions
  // ids, each below vocab()).
  virtual std::vector<float> embed(std::span<const int32_t> tokens) const = 0;
  // h [T, H] through layer `layer` in place (its block added to the residual stream). std::logic_error
  // when the layer's weights are not held.
  virtual void layer_forward(int64_t layer, float* h, int64_t T, const forward_hooks& hook = {}) const = 0;
  // logits [T, V] from the residual stream after the last layer: the final norm, then lm_head.
  virtual std::vector<float> head(const float* h, int64_t T, const forward_hooks& hook = {}) const = 0;
  virtual int64_t layer_count() const = 0;
  virtual int64_t hidden() const = 0;
  // Layer weights on demand (a model loaded with layer_weights::on_demand): load_layer reads one
  // layer's weights (this rank's share) from the checkpoint, drop_layer frees them. load_layer of a
  // held layer does nothing.
  bool holds_layer(int64_t layer) const { return held_.at(size_t(layer)) != 0; }
  void load_layer(int64_t layer);
  void drop_layer(int64_t layer);
  virtual const model_spec& spec() const = 0;
  virtual int64_t vocab() const = 0;
  virtual int64_t max_positions() const = 0;  // the longest forward(): max_position_embeddings
  // The loss and dloss/dY at the output of every linear (activation gradients only), for
  // sensitivity scoring; T in 2..max_positions.
  virtual llama_grads forward_backward(std::span<const int32_t> tokens, const forward_hooks& hook = {},
                                       activation_memory memory = activation_memory::keep) const = 0;
  // Fake-quant runs rewrite the model in place: every linear (lm_head included) in forward order,
  // and each attention block's KV-cache scales by attention module name (io_error if unknown).
  virtual void for_each_linear(const std::function<void(llama_linear&)>& f) = 0;
  virtual void set_kv_cache_scales(const std::string& attention, const kv_cache_scales& scales) = 0;

 protected:
  // std::invalid_argument unless tokens has min_tokens..max_positions() ids, each below vocab();
  // `what` ("llama forward") starts the message.
  void check_tokens(std::span<const int32_t> tokens, int64_t min_tokens, const char* what) const;
  // The rows of an embedding table [V, H] for tokens (checked as check_tokens(.., 1, what)): h [T, H].
  std::vector<float> embedding_rows(const std::vector<float>& table, std::span<const int32_t> tokens,
                                    const char* what) const;

  // The loaders: `layers` layers, none held, read from `reader` by read_layer as they load (every
  // one at once for layer_weights::all, after which the reader is closed).
  void start_layers(const std::filesystem::path& dir, int64_t layers, std::shared_ptr<const fp32_weight_reader> reader,
                    layer_weights weights);
  const fp32_weight_reader& reader() const { return *reader_; }
  virtual void read_layer(const fp32_weight_reader& w, int64_t layer) = 0;  // its weights, this rank's share
  virtual void clear_layer(int64_t layer) = 0;                              // back to the empty shell
  // std::logic_error naming `what` unless the layer (every layer) is held.
  void require_layer(int64_t layer, const char* what) const;
  void require_every_layer(const char* what) const;

  causal_lm() = default;
  causal_lm(const causal_lm&) = default;
  causal_lm(causal_lm&&) = default;
  causal_lm& operator=(const causal_lm&) = default;
  causal_lm& operator=(causal_lm&&) = default;

 private:
  std::filesystem::path dir_;
  std::shared_ptr<const fp32_weight_reader> reader_;  // open while layers load on demand
  std::vector<char> held_;                            // per layer: its weights are loaded
};

// Reads a checkpoint's tensors widened to fp32, checking names and shapes (both model loaders use it).
class fp32_weight_reader {
 public:
  // Opens the checkpoint; a config.json quantization_config of a method it cannot read (GPTQ, AWQ,
  // bitsandbytes, ...) is an io_error naming config.json, the key and the value.
  explicit fp32_weight_reader(const std::filesystem::path& dir);
  ~fp32_weight_reader();
  fp32_weight_reader(const fp32_weight_reader&) = delete;
  fp32_weight_reader& operator=(const fp32_weight_reader&) = delete;

  bool has(const std::string& name) const;
  // The tensor widened to fp32; its shape must be `shape` (1-D, 2-D, or 3-D with unit middle dims).
  std::vector<float> load(const std::string& name, const std::vector<int64_t>& shape) const;
  // The weight (and bias, when the spec lists one) of one linear; a quantized weight (ModelOpt or
  // compressed-tensors NVFP4 / FP8) comes back dequantized, with its input fake-quant set.
  llama_linear linear(const linear_spec& l) const;
  // k_proj.k_scale / v_proj.v_scale of an attention module ("...self_attn"); 0 where absent.
  kv_cache_scales kv_scales(const std::string& attention) const;
  // The raw stored tensor, or nullopt.
  std::optional<stored_tensor> stored(const std::string& name) const;
  // After loading: io_error when the checkpoint holds a tensor that neither `spec` lists nor any
  // load() / stored() call read, other than a quantization scale (is_quantization_tensor) — a layer
  // or expert beyond the config's counts, a bias the config says is absent, lm_head with tied
  // embeddings: the checkpoint and its config.json disagree. The message names the file, the tensor,
  // its shape and how many more there are.
  void check_nothing_unexpected(const model_spec& spec) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// ---- the ops ---------------------------------------------------------------------------------

// The backward functions propagate activation gradients only (no weight gradients). Those that
// write an input gradient into a buffer shared by several consumers ACCUMULATE (+=) into it, llm.c
// style; the caller zeroes it first. Each says which.

// out[T, out] = q(x)[T, in] @ W.w^T (+ W.bias), q = W.act's input fake-quant. Every linear is called here.
void linear_forward(const std::string& name, const float* x, const llama_linear& W, float* out, int64_t T);
// hook.input on x, linear_forward, then hook.output on its output: how every model calls its linears.
void linear_hooked(const llama_linear& W, const float* x, float* out, int64_t T, const forward_hooks& hook);
// A tp share of a loaded linear: the given output rows in order (column-parallel; bias rows with
// them), or one range of input columns (row-parallel; the bias kept on the group's first rank only,
// so the sum adds it once).
void keep_rows(llama_linear& W, const std::vector<index_range>& ranges);
void keep_columns(llama_linear& W, index_range r, bool first_rank);
// A row-parallel linear (o_proj, down_proj, out_proj): each tp rank multiplies its share of the
// input columns, the group sums the partial outputs (parallel_context::tp_sum), and the output hook
// sees the whole Y, as in one process.
void row_parallel_hooked(const llama_linear& W, const float* x, float* out, int64_t T, const forward_hooks& hook,
                         const parallel_context& par);
// dx[T, in] += dout[T, out] @ W.w   (the input gradient; accumulates, as q/k/v share their input)
void linear_backward_input(float* dx, const float* dout, const llama_linear& W, int64_t T);
// Post-RoPE k and v [T, kv_dim] as the KV cache holds them: shown to hook.kv, then FP8
// fake-quantized in place when the scales are set. `attention` names the block for the observer.
void kv_cache_forward(const std::string& attention, float* k, float* v, int64_t T, int64_t kv_dim,
                      const kv_cache_scales& scales, const forward_hooks& hook);
// The attention module owning a k_proj: "model.layers.0.self_attn.k_proj" -> "model.layers.0.self_attn".
std::string attention_module_of(const llama_linear& k_proj);
// out[T, C] = x / sqrt(mean(x^2) + eps) * weight[C]   (normalised in fp32, as HF does)
void rmsnorm_forward(float* out, const float* x, const float* weight, int64_t T, int64_t C, float eps);
// logits [T, V] from the residual stream h [T, H] after the last layer: the final RMSNorm, then
// lm_head (hooked): every model's head.
std::vector<float> final_logits(const float* h, int64_t T, int64_t H, const std::vector<float>& norm, float eps,
                                const llama_linear& lm_head, int64_t vocab, const forward_hooks& hook);
// dx[T, C] += r * (g - xhat * mean(g * xhat)) with g = weight * dout, xhat = x * r, r = rstd(x);
// x is the forward input. Accumulates (dx is the residual-stream gradient).
void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* weight, int64_t T, int64_t C,
                      float eps);
// The hd/2 RoPE inverse frequencies theta^(-2i/hd), rescaled when c.rope_llama3 is set.
std::vector<double> rope_inverse_frequencies(const llama_config& c);
// In place on x[T, n_heads * hd]: HF rotate_half RoPE at positions 0..T-1; cos/sin are [max_pos, hd/2].
void rope_forward(float* x, const float* cos_table, const float* sin_table, int64_t T, int64_t n_heads, int64_t hd);
// In place on dx[T, n_heads * hd]: the gradient through RoPE, i.e. the inverse (transposed) rotation.
void rope_backward(float* dx, const float* cos_table, const float* sin_table, int64_t T, int64_t n_heads, int64_t hd);
// out[T, I] = silu(gate[T, I]) * up[T, I]
void swiglu_forward(float* out, const float* gate, const float* up, int64_t T, int64_t I);
// dgate = dout * up * silu'(gate), dup = dout * silu(gate)   (overwritten; [T, I] each)
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t T,
                     int64_t I);
// x[T, C] += y[T, C]
void residual_forward(float* x, const float* y, int64_t T, int64_t C);
// The mean next-token cross-entropy (nats, in double) of logits [T, V] over positions 0..T-2 predicting
// tokens 1..T-1, and its gradient dlogits [T, V] = (softmax - onehot(next token)) / (T-1), overwritten;
// row T-1 is zero. T >= 2, ids below V.
double cross_entropy_backward(float* dlogits, const float* logits, std::span<const int32_t> tokens, int64_t V);
// out[T, H] = sum over each token's top-k experts e of w_e * down_e(silu(gate_e(x)) * up_e(x)), with
// p = softmax(router(x)) over all E experts in fp32, the k largest p as w, divided by their sum when
// `renormalize` (§2.4). Each expert runs (through linear_forward and `hook`) on only its routed
// tokens, [T_e, *]; experts in ascending order, each adding into out (overwritten first).
void moe_forward(float* out, const float* x, const llama_linear& router, const std::vector<llama_expert>& experts,
                 int64_t k, bool renormalize, int64_t T, const forward_hooks& hook);

// ---- the model -------------------------------------------------------------------------------

// Loads a Llama / Mixtral / Qwen3-MoE or Nemotron-H checkpoint directory, by its config's model_type
// (on_demand: no layer until load_layer, the checkpoint kept open to read them).
std::unique_ptr<causal_lm> load_causal_lm(const std::filesystem::path& dir, const parallel_context& parallel = {},
                                          layer_weights weights = layer_weights::all);

class llama_model : public causal_lm {
 public:
  // Reads config.json and the safetensors weights of a Hugging Face LlamaForCausalLM,
  // MixtralForCausalLM or Qwen3MoeForCausalLM directory. Throws io_error for another architecture,
  // an unsupported option (a rope type other than default / llama3, a hidden_act other than silu, a
  // sliding window, num_experts_per_tok above the expert count), invalid llama3 rope parameters,
  // or missing / ill-shaped / non-float tensors.
  // With a parallel layout the model keeps only this rank's share (parallel_layout): the q / k / v
  // rows and o columns of its heads, the gate / up rows and down columns of its MLP columns, its ep
  // share of the routed experts (the others left empty); norms, router, embeddings and lm_head
  // whole. The forward and backward then combine partial results over the context's groups, which
  // must outlive the model. Hooks see this rank's share: its rows of column-parallel outputs, the
  // whole (summed) output of row-parallel ones but only its columns of their input, its KV heads,
  // only its own experts (each tp rank sees the same experts: tp-replicated); dY follows the same
  // shares. Observers that aggregate across ranks must reduce (amax by all_reduce_max) and count
  // replicated work once. for_each_linear skips the experts other ranks hold; a sharded model is for
  // forward / backward passes, not for fake-quantizing whole-model weights into it.
  // With layer_weights::on_demand it reads config.json, the embeddings, final norm and lm_head, and
  // no layer until load_layer.
  static llama_model load(const std::filesystem::path& dir, const parallel_context& parallel = {},
                          layer_weights weights = layer_weights::all);

  const llama_config& config() const { return config_; }
  const model_spec& spec() const override { return spec_; }
  int64_t vocab() const override { return config_.vocab; }
  int64_t max_positions() const override { return config_.max_positions; }
  void for_each_linear(const std::function<void(llama_linear&)>& f) override;
  void set_kv_cache_scales(const std::string& attention, const kv_cache_scales& scales) override;

  // The forward pass in pieces (causal_lm::forward: logits [T, V] for tokens at positions 0..T-1, a
  // fresh context); `hook`, when set, sees (and may modify) every linear's output.
  std::vector<float> embed(std::span<const int32_t> tokens) const override;
  void layer_forward(int64_t layer, float* h, int64_t T, const forward_hooks& hook = {}) const override;
  std::vector<float> head(const float* h, int64_t T, const forward_hooks& hook = {}) const override;
  int64_t layer_count() const override { return config_.layers; }
  int64_t hidden() const override { return config_.hidden; }

  // The loss and dloss/dY at the output of every linear (activation gradients only, no weight
  // gradients). T must be in 2..max_positions. The forward saves every activation the backward needs.
  // Llama, Mixtral and Qwen3-MoE (through q_norm / k_norm, the routed experts and the router: the
  // top-k selection is piecewise constant, the gradient flows through the selected probabilities).
  // A routed expert's linears get [T_e, out] over its tokens in the order the hook sees them
  // (ascending positions), empty when no token is routed to it.
  llama_grads forward_backward(std::span<const int32_t> tokens, const forward_hooks& hook = {},
                               activation_memory memory = activation_memory::keep) const override;

 private:
  model_spec spec_;
  llama_config config_;
  std::vector<float> embed_;       // embed_tokens [V, H]
  std::vector<llama_layer> layers_;
  std::vector<float> final_norm_;  // model.norm [H]
  llama_linear lm_head_;           // [V, H]; a copy of embed_tokens when tied
  std::vector<float> rope_cos_, rope_sin_;  // [max_positions, hd/2]
  parallel_context par_;
  int64_t heads_here_ = 0, kv_heads_here_ = 0, intermediate_here_ = 0;  // this rank's shares

  void read_layer(const fp32_weight_reader& w, int64_t layer) override;  // its weights, then keep_share
  void clear_layer(int64_t layer) override;
  void keep_share(llama_layer& L) const;  // cuts a loaded layer down to this rank's share of par_.layout
};

}  // namespace mixq
