#include "pipeline/model/llama.hpp"

#include "pipeline/model/hf_config.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numbers>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <Eigen/Core>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kernels/cpu/fake_quant_activations.hpp"
#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/row_math.hpp"
#include "kernels/cpu/source_matrix.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

namespace {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_map = Eigen::Map<const row_matrix>;
using map = Eigen::Map<row_matrix>;

}  // namespace

// ---- the ops ---------------------------------------------------------------------------------

void linear_forward(const std::string& name, const float* x, const llama_linear& W, float* out, int64_t T) {
  (void)name;
  std::vector<float> xq;  // the input as the quantized runtime sees it
  if (W.act.format != format_id::bf16) {
    xq.resize(size_t(T * W.in));
    const std::span<const float> src(x, xq.size());
    if (W.act.format == format_id::nvfp4)
      cpu::nvfp4_fake_quant_activations(src, W.in, W.act.input_scale, xq);
    else
      cpu::fp8_fake_quant_activations(src, W.act.input_scale, xq);
    x = xq.data();
  }
  const_map X(x, T, W.in);           // [T, in]
  const_map Wm(W.w.data(), W.out, W.in);  // [out, in]
  map Y(out, T, W.out);              // [T, out]
  Y.noalias() = X * Wm.transpose();
  if (!W.bias.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < W.out; ++o) out[t * W.out + o] += W.bias[size_t(o)];
}

void linear_backward_input(float* dx, const float* dout, const llama_linear& W, int64_t T) {
  const_map dY(dout, T, W.out);            // [T, out]
  const_map Wm(W.w.data(), W.out, W.in);   // [out, in]
  map dX(dx, T, W.in);                     // [T, in]
  dX.noalias() += dY * Wm;                 // the bias has no effect on the input gradient
}

void rmsnorm_forward(float* out, const float* x, const float* weight, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * C;
    float* ot = out + t * C;
    float ss = 0.0f;
    for (int64_t c = 0; c < C; ++c) ss += xt[c] * xt[c];
    const float rstd = 1.0f / std::sqrt(ss / float(C) + eps);
    for (int64_t c = 0; c < C; ++c) ot[c] = xt[c] * rstd * weight[c];
  }
}

void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* weight, int64_t T, int64_t C,
                      float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * C;
    const float* dt = dout + t * C;
    float* dxt = dx + t * C;
    // first: recompute rstd exactly as the forward did
    float ss = 0.0f;
    for (int64_t c = 0; c < C; ++c) ss += xt[c] * xt[c];
    const float rstd = 1.0f / std::sqrt(ss / float(C) + eps);
    // then the one reduction: mean(g * xhat) with g = weight * dout
    double dot = 0.0;
    for (int64_t c = 0; c < C; ++c) dot += double(weight[c] * dt[c]) * double(xt[c] * rstd);
    const float mean_gx = float(dot / double(C));
    // now accumulate dx = rstd * (g - xhat * mean(g * xhat))
    for (int64_t c = 0; c < C; ++c) dxt[c] += rstd * (weight[c] * dt[c] - xt[c] * rstd * mean_gx);
  }
}

std::vector<double> rope_inverse_frequencies(const llama_config& c) {
  std::vector<double> inv_freq(size_t(c.head_dim / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double f = std::pow(c.rope_theta, -double(2 * i) / double(c.head_dim));
    inv_freq[i] = f;
    if (!c.rope_llama3) continue;
    // Llama 3: wavelengths shorter than original / high_freq_factor are kept, longer than
    // original / low_freq_factor are stretched by `factor`, and the band between is interpolated.
    const llama3_rope_scaling& s = *c.rope_llama3;
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen > s.original_max_positions / s.low_freq_factor) {
      inv_freq[i] = f / s.factor;
    } else if (!(wavelen < s.original_max_positions / s.high_freq_factor)) {
      const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      inv_freq[i] = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv_freq;
}

void rope_forward(float* x, const float* cos_table, const float* sin_table, int64_t T, int64_t n_heads, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos_table + t * half;
    const float* s = sin_table + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* xh = x + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {  // rotate_half: pairs (i, i + hd/2)
        const float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c[i] - x2 * s[i];
        xh[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void rope_backward(float* dx, const float* cos_table, const float* sin_table, int64_t T, int64_t n_heads, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos_table + t * half;
    const float* s = sin_table + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* dh = dx + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {  // the transpose of [[c, -s], [s, c]]: rotate by -angle
        const float d1 = dh[i], d2 = dh[i + half];
        dh[i] = d1 * c[i] + d2 * s[i];
        dh[i + half] = d2 * c[i] - d1 * s[i];
      }
    }
  }
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t T, int64_t I) {
  cpu::swiglu(out, gate, up, T * I);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t T,
                     int64_t I) {
  cpu::swiglu_backward(dgate, dup, dout, gate, up, T * I);
}

void residual_forward(float* x, const float* y, int64_t T, int64_t C) {
  for (int64_t i = 0; i < T * C; ++i) x[i] += y[i];
}

double cross_entropy_backward(float* dlogits, const float* logits, std::span<const int32_t> tokens, int64_t V) {
  const int64_t T = int64_t(tokens.size()), n = T - 1;
  std::fill_n(dlogits + n * V, V, 0.0f);  // the last position predicts nothing
  double nll = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const float* row = logits + t * V;
    float* drow = dlogits + t * V;
    const int32_t target = tokens[size_t(t + 1)];
    const double lse = cpu::log_sum_exp(row, V);
    nll += lse - double(row[target]);
    cpu::exp_shift_scale(drow, row, V, lse, float(1.0 / double(n)));  // softmax / n
    drow[target] -= float(1.0 / double(n));
  }
  return nll / double(n);
}

void linear_hooked(const llama_linear& W, const float* x, float* out, int64_t T, const forward_hooks& hook) {
  if (hook.input) hook.input(W.name, x, T, W.in);
  linear_forward(W.name, x, W, out, T);
  if (hook.output) hook.output(W.name, out, T, W.out);
}

void row_parallel_hooked(const llama_linear& W, const float* x, float* out, int64_t T, const forward_hooks& hook,
                         const parallel_context& par) {
  if (hook.input) hook.input(W.name, x, T, W.in);
  linear_forward(W.name, x, W, out, T);
  par.tp_sum({out, size_t(T * W.out)});
  if (hook.output) hook.output(W.name, out, T, W.out);
}

std::string attention_module_of(const llama_linear& k_proj) {
  const size_t dot = k_proj.name.rfind('.');
  return dot == std::string::npos ? k_proj.name : k_proj.name.substr(0, dot);
}

void kv_cache_forward(const std::string& attention, float* k, float* v, int64_t T, int64_t kv_dim,
                      const kv_cache_scales& scales, const forward_hooks& hook) {
  if (hook.kv) hook.kv(attention, k, v, T, kv_dim);
  const size_t n = size_t(T * kv_dim);
  if (scales.k > 0.0f) cpu::fp8_fake_quant_activations({k, n}, scales.k, {k, n});
  if (scales.v > 0.0f) cpu::fp8_fake_quant_activations({v, n}, scales.v, {v, n});
}

namespace {

// What the MoE backward needs from one moe_forward (router outputs after the hook; per expert, its
// tokens and linear outputs after the hook), filled when moe_forward_impl is given one.
struct moe_saved {
  std::vector<float> logits;                     // router output [T, E]
  std::vector<float> probs;                      // softmax(logits) [T, E]
  std::vector<int64_t> topk;                     // each token's k experts, by descending p [T, k]
  std::vector<std::vector<int64_t>> tokens_of;   // expert -> its tokens, ascending
  std::vector<std::vector<float>> weights_of;    // expert -> the matching routing weights
  std::vector<std::vector<float>> g, u, s, y;    // expert -> gate, up [T_e, I], silu(g) * u [T_e, I], down [T_e, H]
};

// Experts whose weights are empty live on another ep rank: this rank adds the share of the experts
// it holds, and the ep group sums the shares.
void moe_forward_impl(float* out, const float* x, const llama_linear& router, const std::vector<llama_expert>& experts,
                      int64_t k, bool renormalize, int64_t T, const forward_hooks& hook, moe_saved* save,
                      const parallel_context& par) {
  const int64_t E = int64_t(experts.size()), H = router.in;
  // first: the router. logits [T, E] -> p = softmax (fp32) -> the k largest per token
  std::vector<float> logits(size_t(T * E));
  linear_hooked(router, x, logits.data(), T, hook);
  const size_t nE = experts.size();
  if (save) {
    save->logits = logits;
    save->probs.assign(size_t(T * E), 0.0f);
    save->topk.assign(size_t(T * k), 0);
    for (auto* v : {&save->g, &save->u, &save->s, &save->y}) v->assign(nE, {});
  }
  std::vector<std::vector<int64_t>> tokens_of(nE);  // expert -> its tokens, ascending
  std::vector<std::vector<float>> weights_of(nE);   // expert -> the matching routing weights
  std::vector<float> p(nE);
  std::vector<int64_t> order(nE);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * E;
    float maxv = -INFINITY;
    for (int64_t e = 0; e < E; ++e) maxv = std::max(maxv, row[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      p[size_t(e)] = std::exp(row[e] - maxv);
      sum += p[size_t(e)];
    }
    for (int64_t e = 0; e < E; ++e) p[size_t(e)] /= sum;
    // top-k by probability, descending (ties: the lower expert number first)
    for (int64_t e = 0; e < E; ++e) order[size_t(e)] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
      return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
    });
    if (save) {
      std::copy(p.begin(), p.end(), save->probs.begin() + t * E);
      std::copy_n(order.begin(), k, save->topk.begin() + t * k);
    }
    float wsum = 0.0f;
    for (int64_t j = 0; j < k; ++j) wsum += p[size_t(order[size_t(j)])];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = order[size_t(j)];
      tokens_of[size_t(e)].push_back(t);
      weights_of[size_t(e)].push_back(renormalize ? p[size_t(e)] / wsum : p[size_t(e)]);
    }
  }
  if (hook.routing) {
    const std::string moe = attention_module_of(router);  // the block owning the gate
    for (size_t e = 0; e < nE; ++e)
      if (!experts[e].gate.w.empty())
        hook.routing(moe, int64_t(e), tokens_of[e].data(), weights_of[e].data(), int64_t(tokens_of[e].size()));
  }
  // then each expert on its own tokens: gather [T_e, H] -> SwiGLU expert -> out[t] += w * y
  std::fill_n(out, T * H, 0.0f);
  std::vector<float> xe, g, u, ye;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int64_t>& toks = tokens_of[size_t(e)];
    const llama_expert& X = experts[size_t(e)];
    if (toks.empty() || X.gate.w.empty()) continue;
    const int64_t Te = int64_t(toks.size()), I = X.gate.out;
    xe.resize(size_t(Te * H));
    g.resize(size_t(Te * I));
    u.resize(size_t(Te * I));
    ye.resize(size_t(Te * H));
    for (int64_t i = 0; i < Te; ++i) std::copy_n(x + toks[size_t(i)] * H, H, xe.data() + i * H);
    linear_hooked(X.gate, xe.data(), g.data(), Te, hook);  // [T_e, I]
    linear_hooked(X.up, xe.data(), u.data(), Te, hook);    // [T_e, I]
    if (save) {
      save->g[size_t(e)] = g;
      save->u[size_t(e)] = u;
    }
    swiglu_forward(g.data(), g.data(), u.data(), Te, I);
    linear_hooked(X.down, g.data(), ye.data(), Te, hook);  // [T_e, H]
    if (save) {
      save->s[size_t(e)] = g;
      save->y[size_t(e)] = ye;
    }
    for (int64_t i = 0; i < Te; ++i) {
      const float w = weights_of[size_t(e)][size_t(i)];
      float* ot = out + toks[size_t(i)] * H;
      const float* yt = ye.data() + i * H;
      for (int64_t c = 0; c < H; ++c) ot[c] += yt[c] * w;
    }
  }
  par.ep_sum({out, size_t(T * H)});
  if (save) {
    save->tokens_of = std::move(tokens_of);
    save->weights_of = std::move(weights_of);
  }
}

}  // namespace

void moe_forward(float* out, const float* x, const llama_linear& router, const std::vector<llama_expert>& experts,
                 int64_t k, bool renormalize, int64_t T, const forward_hooks& hook) {
  moe_forward_impl(out, x, router, experts, k, renormalize, T, hook, nullptr, parallel_context{});
}

// ---- loading ---------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::filesystem::path& dir, const std::string& what) {
  throw io_error(fmt::format("{}: {}", dir.string(), what));
}


// A llama3 parameter in `holder` (the rope section, or the top level when section is empty): a
// positive number; its absence is an error, as transformers cannot do without it either.
double llama3_key(const std::filesystem::path& dir, const json& holder, const std::string& section, const char* key) {
  const std::string name = section.empty() ? key : section + "." + key;
  const auto it = holder.find(key);
  if (it == holder.end() || it->is_null())
    config_error(dir, fmt::format("config key '{}' is missing (needed by rope type llama3)", name));
  if (!it->is_number() || it->get<double>() <= 0.0)
    config_error(dir, fmt::format("config key '{}' must be a positive number, got {}", name, it->dump()));
  return it->get<double>();
}

// rope_theta and the rope type from the old (rope_theta + rope_scaling) or the transformers-v5
// (rope_parameters) form. original_max_position_embeddings is resolved as transformers'
// standardize_rope_params does: a top-level key wins, then the rope section's, then
// max_position_embeddings.
void read_rope(const json& cfg, const std::filesystem::path& dir, llama_config& c) {
  c.rope_theta = config_number_or(dir, cfg, "rope_theta", 10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) continue;
    if (!it->is_object()) config_error(dir, fmt::format("config key '{}' must be an object, got {}", key, it->dump()));
    std::string type = "default";
    for (const char* tkey : {"type", "rope_type"})  // rope_type wins when both are given
      if (it->contains(tkey) && (*it)[tkey].is_string()) type = (*it)[tkey].get<std::string>();
    if (type != "default" && type != "llama3")
      config_error(dir, fmt::format("unsupported option: config key '{}' has rope type '{}' (only 'default' and "
                                    "'llama3' RoPE are implemented)", key, type));
    c.rope_theta = config_number_or(dir, *it, "rope_theta", c.rope_theta);
    if (type != "llama3") continue;
    llama3_rope_scaling s;
    s.factor = llama3_key(dir, *it, key, "factor");
    s.low_freq_factor = llama3_key(dir, *it, key, "low_freq_factor");
    s.high_freq_factor = llama3_key(dir, *it, key, "high_freq_factor");
    if (s.low_freq_factor >= s.high_freq_factor)
      config_error(dir, fmt::format("config key '{}.low_freq_factor' ({}) must be below '{}.high_freq_factor' ({})", key,
                            s.low_freq_factor, key, s.high_freq_factor));
    const char* omp = "original_max_position_embeddings";
    s.original_max_positions = cfg.contains(omp)   ? llama3_key(dir, cfg, "", omp)
                               : it->contains(omp) ? llama3_key(dir, *it, key, omp)
                                                   : double(c.max_positions);
    c.rope_llama3 = s;
  }
  if (c.rope_theta <= 0.0) config_error(dir, fmt::format("config key 'rope_theta' must be positive, got {}", c.rope_theta));
  if (const double f = config_number_or(dir, cfg, "partial_rotary_factor", 1.0); f != 1.0)
    config_error(dir, fmt::format("unsupported option: config key 'partial_rotary_factor' is {} (only 1, RoPE over "
                                  "the whole head, is implemented)", f));
}

}  // namespace

struct fp32_weight_reader::impl {
  checkpoint ckpt;
  std::unordered_map<std::string, checkpoint::entry> by_name;
  mutable std::mutex read_mutex;
  mutable std::unordered_set<std::string> read;  // names load() / stored() returned
  void mark_read(const std::string& name) const {
    const std::lock_guard<std::mutex> lock(read_mutex);
    read.insert(name);
  }
};

fp32_weight_reader::fp32_weight_reader(const std::filesystem::path& dir)
    : impl_(new impl{checkpoint::open(dir), {}, {}, {}}) {
  for (const auto& e : impl_->ckpt.tensors()) impl_->by_name.emplace(e.tensor->name, e);
  // Quantized weights are read as ModelOpt or compressed-tensors NVFP4 / FP8 lay them out; other
  // methods store weights under other names (qweight, scales, ...) and would only show up as
  // missing tensors.
  const json cfg = read_hf_config(dir);
  if (const auto qc = cfg.find("quantization_config"); qc != cfg.end() && !qc->is_null()) {
    const auto method = qc->is_object() ? qc->find("quant_method") : qc->end();
    const std::string m = qc->is_object() && method != qc->end() && method->is_string() ? method->get<std::string>() : "";
    if (m != "modelopt" && m != "compressed-tensors")
      config_error(dir, fmt::format("unsupported option: config key 'quantization_config.quant_method' is {} (mixq "
                                    "reads unquantized checkpoints and ModelOpt / compressed-tensors NVFP4 and FP8 "
                                    "exports)",
                                    qc->is_object() && method != qc->end() ? method->dump() : "absent"));
  }
}

fp32_weight_reader::~fp32_weight_reader() = default;

bool fp32_weight_reader::has(const std::string& name) const { return impl_->by_name.count(name) != 0; }

std::vector<float> fp32_weight_reader::load(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto it = impl_->by_name.find(name);
  if (it == impl_->by_name.end())
    fail(impl_->ckpt.dir(),
         fmt::format("tensor '{}' is missing: config.json describes it, no file of the checkpoint holds it", name));
  const tensor_info& t = *it->second.tensor;
  if (t.shape != shape)
    fail(it->second.shard->path(), fmt::format("tensor '{}' has shape [{}], config.json implies [{}]", name,
                                               fmt::join(t.shape, ", "), fmt::join(shape, ", ")));
  impl_->mark_read(name);
  tensor_info as_2d = t;  // 1-D tensors are read as one row; 3-D and up as [dim 0, the rest]
  if (as_2d.shape.size() == 1) as_2d.shape = {1, t.shape[0]};
  if (as_2d.shape.size() > 2) {
    int64_t rest = 1;
    for (size_t i = 1; i < t.shape.size(); ++i) rest *= t.shape[i];
    as_2d.shape = {t.shape[0], rest};
  }
  const auto m = checkpoint::as_matrix({it->second.shard, &as_2d});
  if (!m)
    fail(impl_->ckpt.dir(),
         fmt::format("tensor '{}' is {}; only F32, BF16 and F16 are read", name, dtype_name(t.type)));
  std::vector<float> out(size_t(m->size()));
  const int64_t chunk = int64_t(1) << 20;
  for (int64_t i = 0; i < m->size(); i += chunk)
    cpu::load_f32(*m, i, int(std::min(chunk, m->size() - i)), out.data() + i, false);
  return out;
}

std::optional<stored_tensor> fp32_weight_reader::stored(const std::string& name) const {
  const auto it = impl_->by_name.find(name);
  if (it == impl_->by_name.end()) return std::nullopt;
  impl_->mark_read(name);
  const tensor_info& t = *it->second.tensor;
  return stored_tensor{t.type, t.shape, it->second.shard->bytes(t)};
}

void fp32_weight_reader::check_nothing_unexpected(const model_spec& spec) const {
  std::unordered_set<std::string> listed;
  for (const auto& [name, shape] : expected_tensors(spec)) listed.insert(name);
  for (const tensor_spec& t : spec.tensors) listed.insert(t.aliases.begin(), t.aliases.end());
  const checkpoint::entry* first = nullptr;
  int64_t count = 0;
  const std::vector<checkpoint::entry> all = impl_->ckpt.tensors();  // in file order: the first one is stable
  for (const checkpoint::entry& e : all) {
    const std::string& name = e.tensor->name;
    if (listed.count(name) || impl_->read.count(name) || is_quantization_tensor(name)) continue;
    if (!first) first = &e;
    ++count;
  }
  if (!first) return;
  fail(first->shard->path(),
       fmt::format("unexpected tensor '{}' [{}]: config.json describes a {} model of {} layers without it; the "
                   "checkpoint and its config.json disagree{}",
                   first->tensor->name, fmt::join(first->tensor->shape, ", "), spec.architecture, spec.dims.layers,
                   count > 1 ? fmt::format(" ({} unexpected tensors in all)", count) : ""));
}

llama_linear fp32_weight_reader::linear(const linear_spec& l) const {
  llama_linear W;
  W.name = l.module;
  W.out = l.out_features;
  W.in = l.in_features;
  std::optional<decoded_linear> q;
  try {
    q = decode_quantized_linear(l.module, l.out_features, l.in_features,
                                [this](const std::string& name) { return stored(name); });
  } catch (const std::exception& e) {
    fail(impl_->ckpt.dir(), e.what());
  }
  if (q) {  // a quantized checkpoint: the weights the runtime computes with, and its input rounding
    W.w = std::move(q->w);
    const bool act_quant = q->input_scale > 0.0f &&
                           (q->format == format_id::nvfp4 || q->format == format_id::fp8_per_tensor);
    if (act_quant) W.act = {q->format, q->input_scale};
  } else {
    W.w = load(l.weight_name(), {l.out_features, l.in_features});
  }
  if (l.has_bias) W.bias = load(l.module + ".bias", {l.out_features});
  return W;
}

kv_cache_scales fp32_weight_reader::kv_scales(const std::string& attention) const {
  kv_cache_scales s;
  try {
    const auto one = [this](const std::string& name) -> float {
      const auto t = stored(name);
      if (!t) return 0.0f;
      if (t->type != dtype::f32 || t->bytes.size() != 4)
        throw std::runtime_error(fmt::format("tensor '{}' must be one F32 value", name));
      float v;
      std::memcpy(&v, t->bytes.data(), 4);
      if (!(v > 0.0f) || !std::isfinite(v))
        throw std::runtime_error(fmt::format("tensor '{}' holds {}, not a positive finite scale", name, v));
      return v;
    };
    for (export_layout layout : {export_layout::modelopt, export_layout::compressed_tensors}) {
      const auto [k_name, v_name] = kv_scale_names(attention, layout);
      if (const float k = one(k_name); k > 0.0f) s.k = k;
      if (const float v = one(v_name); v > 0.0f) s.v = v;
    }
  } catch (const std::runtime_error& e) {
    fail(impl_->ckpt.dir(), e.what());
  }
  return s;
}

llama_model llama_model::load(const std::filesystem::path& dir, const parallel_context& parallel, layer_weights weights) {
  parallel.check_model_share(dir.string());
  llama_model m;
  m.par_ = parallel;
  m.spec_ = model_spec_from_file(dir);
  const std::string& arch = m.spec_.architecture;
  if (arch != "llama" && arch != "mixtral" && arch != "qwen3_moe")
    config_error(dir, fmt::format("unsupported architecture '{}': the FP32 forward pass runs llama, mixtral and "
                                  "qwen3_moe only for now", arch));
  const json cfg = read_hf_config(dir);
  llama_config& c = m.config_;
  const model_dims& d = m.spec_.dims;
  c.vocab = d.vocab;
  c.hidden = d.hidden;
  c.layers = d.layers;
  c.heads = d.heads;
  c.kv_heads = d.kv_heads;
  c.head_dim = d.head_dim;
  c.intermediate = d.intermediate;
  c.tie_word_embeddings = d.tie_word_embeddings;
  c.experts = d.experts;
  c.experts_per_token = d.experts_per_token;
  c.moe_intermediate = d.moe_intermediate;
  c.qk_norm = arch == "qwen3_moe";
  if (arch == "mixtral") {
    c.norm_topk_prob = true;  // MixtralTopKRouter always renormalises
  } else if (arch == "qwen3_moe") {
    const auto it = cfg.find("norm_topk_prob");  // Qwen3MoeConfig default: false
    if (it != cfg.end() && !it->is_null() && !it->is_boolean())
      config_error(dir, fmt::format("config key 'norm_topk_prob' must be true or false, got {}", it->dump()));
    c.norm_topk_prob = it != cfg.end() && it->is_boolean() && it->get<bool>();
  }
  if (c.experts_per_token > c.experts)
    config_error(dir, fmt::format("unsupported option: config key 'num_experts_per_tok' is {}, more than the {} experts",
                                  c.experts_per_token, c.experts));
  // A sliding window changes the attention mask; only full causal attention is implemented.
  const auto sliding = cfg.find("sliding_window");
  const auto use_sliding = cfg.find("use_sliding_window");  // Qwen3: the window applies only when true
  const bool sliding_used = arch == "mixtral" || (arch == "qwen3_moe" && use_sliding != cfg.end() &&
                                                  use_sliding->is_boolean() && use_sliding->get<bool>());
  if (sliding_used && sliding != cfg.end() && !sliding->is_null())
    config_error(dir, fmt::format("unsupported option: config key 'sliding_window' is {} (only full causal attention "
                                  "is implemented)", sliding->dump()));
  c.max_positions = config_max_positions(dir, cfg, arch);  // (transformers' default where absent)
  c.rms_norm_eps = float(config_number_or(dir, cfg, "rms_norm_eps", 1e-6));
  read_rope(cfg, dir, c);
  if (const auto act = cfg.find("hidden_act"); act != cfg.end() && !act->is_null() && *act != "silu")
    config_error(dir, fmt::format("unsupported option: config key 'hidden_act' is {} (only silu is implemented)",
                                  act->dump()));
  if (c.head_dim % 2 != 0)
    config_error(dir, fmt::format("unsupported option: config key 'head_dim' is {}: RoPE needs an even head size",
                                  c.head_dim));

  const auto reader = std::make_shared<const fp32_weight_reader>(dir);
  const fp32_weight_reader& w = *reader;
  m.embed_ = w.load("model.embed_tokens.weight", {c.vocab, c.hidden});
  m.final_norm_ = w.load("model.norm.weight", {c.hidden});
  m.layers_.resize(size_t(c.layers));
  for (const block_spec& b : m.spec_.blocks)
    if (b.kind == block_kind::moe) {
      llama_layer& L = m.layers_.at(size_t(b.layer));
      L.moe = true;
      L.experts.resize(size_t(c.experts));
    }
  bool have_lm_head = false;
  for (const linear_spec& l : m.spec_.linears)
    if (l.role == linear_role::lm_head) {
      m.lm_head_ = w.linear(l);
      have_lm_head = true;
    }
  if (!have_lm_head) {
    if (!c.tie_word_embeddings) fail(dir, "no lm_head in the spec and tie_word_embeddings is false");
    m.lm_head_.name = "lm_head";  // tied: the embedding matrix, [V, H]
    m.lm_head_.out = c.vocab;
    m.lm_head_.in = c.hidden;
    m.lm_head_.w = m.embed_;
  }

  // this rank's shares (parallel_layout)
  const parallel_layout& p = m.par_.layout;
  m.heads_here_ = p.tensor_share(c.heads, "attention heads").size();
  m.kv_heads_here_ = p.tensor_share(c.kv_heads, "KV heads").size();
  m.intermediate_here_ = p.tensor_share(c.intermediate, "MLP columns (intermediate_size)").size();
  (void)p.expert_share(c.experts);  // (an error now, not at the first layer, when ep does not divide)

  // RoPE tables: angle = pos * inv_freq[i], i < hd/2.
  const int64_t half = c.head_dim / 2;
  const std::vector<double> inv_freq = rope_inverse_frequencies(c);
  m.rope_cos_.resize(size_t(c.max_positions * half));
  m.rope_sin_.resize(size_t(c.max_positions * half));
  for (int64_t pos = 0; pos < c.max_positions; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(pos) * inv_freq[size_t(i)];
      m.rope_cos_[size_t(pos * half + i)] = float(std::cos(angle));
      m.rope_sin_[size_t(pos * half + i)] = float(std::sin(angle));
    }
  m.start_layers(dir, c.layers, reader, weights);
  return m;
}

// One layer's norms, KV scales and linears as the spec lists them: "model.layers.N.{self_attn,mlp}.X_proj",
// the MoE router ("...block_sparse_moe.gate", "...mlp.gate") and experts ("...experts.E.{w1,w3,w2}"
// or "...experts.E.{gate,up,down}_proj").
void llama_model::read_layer(const fp32_weight_reader& w, int64_t i) {
  const llama_config& c = config_;
  const std::string p = fmt::format("model.layers.{}", i);
  llama_layer& L = layers_.at(size_t(i));
  L.attn_norm = w.load(p + ".input_layernorm.weight", {c.hidden});
  L.mlp_norm = w.load(p + ".post_attention_layernorm.weight", {c.hidden});
  L.kv = w.kv_scales(p + ".self_attn");
  if (c.qk_norm) {
    L.q_norm = w.load(p + ".self_attn.q_norm.weight", {c.head_dim});
    L.k_norm = w.load(p + ".self_attn.k_norm.weight", {c.head_dim});
  }
  const std::string& arch = spec_.architecture;
  for (const linear_spec& l : spec_.linears) {
    if (l.role == linear_role::lm_head || spec_.blocks.at(size_t(l.block)).layer != i) continue;
    const size_t dot = l.module.rfind('.');
    const std::string leaf = l.module.substr(dot + 1);
    if (l.role == linear_role::router || l.expert >= 0) {
      if (!L.moe) fail(spec_.origin, fmt::format("linear '{}' outside a MoE block", l.module));
      llama_linear* slot = nullptr;
      if (l.role == linear_role::router) {
        slot = &L.router;
      } else if (size_t(l.expert) < L.experts.size()) {
        llama_expert& X = L.experts[size_t(l.expert)];
        slot = leaf == "w1" || leaf == "gate_proj"   ? &X.gate
               : leaf == "w3" || leaf == "up_proj"   ? &X.up
               : leaf == "w2" || leaf == "down_proj" ? &X.down
                                                     : nullptr;
      }
      if (!slot) fail(spec_.origin, fmt::format("unexpected linear '{}' in a {} model", l.module, arch));
      *slot = w.linear(l);
      continue;
    }
    llama_linear* slot = leaf == "q_proj"      ? &L.q
                         : leaf == "k_proj"    ? &L.k
                         : leaf == "v_proj"    ? &L.v
                         : leaf == "o_proj"    ? &L.o
                         : leaf == "gate_proj" ? &L.gate
                         : leaf == "up_proj"   ? &L.up
                         : leaf == "down_proj" ? &L.down
                                               : nullptr;
    if (!slot) fail(spec_.origin, fmt::format("unexpected linear '{}' in a {} model", l.module, arch));
    *slot = w.linear(l);
  }
  keep_share(L);
}

void llama_model::clear_layer(int64_t layer) {
  llama_layer& L = layers_.at(size_t(layer));
  llama_layer shell;
  shell.moe = L.moe;
  shell.experts.resize(L.experts.size());
  L = std::move(shell);
}

void keep_rows(llama_linear& W, const std::vector<index_range>& ranges) {
  int64_t rows = 0;
  for (const index_range& r : ranges) rows += r.size();
  if (W.w.empty() || rows == W.out) return;
  std::vector<float> w, bias;
  for (const index_range& r : ranges) {
    w.insert(w.end(), W.w.begin() + r.begin * W.in, W.w.begin() + r.end * W.in);
    if (!W.bias.empty()) bias.insert(bias.end(), W.bias.begin() + r.begin, W.bias.begin() + r.end);
  }
  W.w = std::move(w);
  W.bias = std::move(bias);
  W.out = rows;
}

void keep_columns(llama_linear& W, index_range r, bool first_rank) {
  if (W.w.empty() || r.size() == W.in) return;
  std::vector<float> w(size_t(W.out * r.size()));
  for (int64_t o = 0; o < W.out; ++o)
    std::copy_n(W.w.begin() + o * W.in + r.begin, r.size(), w.begin() + o * r.size());
  W.w = std::move(w);
  W.in = r.size();
  if (!first_rank) W.bias.clear();
}

void llama_model::keep_share(llama_layer& L) const {
  const llama_config& c = config_;
  const parallel_layout& p = par_.layout;
  if (p.single()) return;
  const index_range heads = p.tensor_share(c.heads, "attention heads");
  const index_range kv_heads = p.tensor_share(c.kv_heads, "KV heads");
  const index_range mlp = p.tensor_share(c.intermediate, "MLP columns (intermediate_size)");
  const index_range experts = p.expert_share(c.experts);
  const int64_t hd = c.head_dim;
  const auto times = [](index_range r, int64_t n) { return index_range{r.begin * n, r.end * n}; };
  keep_rows(L.q, {times(heads, hd)});
  keep_rows(L.k, {times(kv_heads, hd)});
  keep_rows(L.v, {times(kv_heads, hd)});
  keep_columns(L.o, times(heads, hd), p.tp_rank == 0);
  keep_rows(L.gate, {mlp});
  keep_rows(L.up, {mlp});
  keep_columns(L.down, mlp, p.tp_rank == 0);
  for (int64_t e = 0; e < int64_t(L.experts.size()); ++e)
    if (!experts.contains(e))
      for (llama_linear* W : {&L.experts[size_t(e)].gate, &L.experts[size_t(e)].up, &L.experts[size_t(e)].down})
        W->w = {};
}

// ---- forward ---------------------------------------------------------------------------------

void causal_lm::check_tokens(std::span<const int32_t> tokens, int64_t min_tokens, const char* what) const {
  const int64_t T = int64_t(tokens.size()), max_T = max_positions(), V = vocab();
  if (T > max_T)
    throw std::invalid_argument(fmt::format("{}: {} tokens, more than the model allows: max_position_embeddings is {} "
                                            "in {}",
                                            what, T, max_T, spec().origin));
  if (T < min_tokens)
    throw std::invalid_argument(fmt::format("{}: {} tokens; needs at least {}", what, T, min_tokens));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[size_t(t)];
    if (id < 0 || id >= V)
      throw std::invalid_argument(
          fmt::format("{}: token id {} at position {} is outside the vocabulary (vocab_size {})", what, id, t, V));
  }
}

void causal_lm::start_layers(const std::filesystem::path& dir, int64_t layers,
                             std::shared_ptr<const fp32_weight_reader> reader, layer_weights weights) {
  dir_ = dir;
  reader_ = std::move(reader);
  held_.assign(size_t(layers), 0);
  if (weights == layer_weights::all) {
    for (int64_t l = 0; l < layers; ++l) load_layer(l);
    reader_->check_nothing_unexpected(spec());
    reader_.reset();
  } else {  // (the spec lists every layer's tensors: none is unexpected for not being read yet)
    reader_->check_nothing_unexpected(spec());
  }
}

void causal_lm::load_layer(int64_t layer) {
  if (holds_layer(layer)) return;
  if (!reader_)
    throw std::logic_error(fmt::format("{}: layer {} was dropped from a model loaded whole", dir_.string(), layer));
  read_layer(*reader_, layer);
  held_[size_t(layer)] = 1;
}

void causal_lm::drop_layer(int64_t layer) {
  clear_layer(layer);
  held_.at(size_t(layer)) = 0;
}

void causal_lm::require_layer(int64_t layer, const char* what) const {
  if (!holds_layer(layer)) throw std::logic_error(fmt::format("{}: layer {}'s weights are not loaded", what, layer));
}

void causal_lm::require_every_layer(const char* what) const {
  for (size_t l = 0; l < held_.size(); ++l)
    if (!held_[l])
      throw std::logic_error(fmt::format("{}: layer {}'s weights are not loaded (a model loaded layer by layer)", what, l));
}

std::vector<float> causal_lm::forward(std::span<const int32_t> tokens, const forward_hooks& hook) const {
  std::vector<float> h = embed(tokens);
  const int64_t T = int64_t(tokens.size());
  for (int64_t l = 0; l < layer_count(); ++l) layer_forward(l, h.data(), T, hook);
  return head(h.data(), T, hook);
}

std::vector<float> causal_lm::embedding_rows(const std::vector<float>& table, std::span<const int32_t> tokens,
                                             const char* what) const {
  check_tokens(tokens, 1, what);
  const int64_t T = int64_t(tokens.size()), H = hidden();
  std::vector<float> h(size_t(T * H));  // h = Emb[ids]
  for (int64_t t = 0; t < T; ++t) std::copy_n(table.data() + int64_t(tokens[size_t(t)]) * H, H, h.data() + t * H);
  return h;
}

std::vector<float> llama_model::embed(std::span<const int32_t> tokens) const {
  return embedding_rows(embed_, tokens, "llama forward");
}

void llama_model::layer_forward(int64_t layer, float* h, int64_t T, const forward_hooks& hook) const {
  require_layer(layer, "llama forward");
  const llama_config& c = config_;
  const llama_layer& L = layers_[size_t(layer)];
  const int64_t H = c.hidden, I = intermediate_here_;  // I: dense MLP layers (0 if none)
  // this rank's heads (all of them in one process; see parallel_layout)
  const int64_t nh = heads_here_, nkv = kv_heads_here_, QD = nh * c.head_dim, KVD = nkv * c.head_dim;
  std::vector<float> a(size_t(T * H));    // normed input [T, H]
  std::vector<float> q(size_t(T * QD));   // [T, nh*hd]
  std::vector<float> k(size_t(T * KVD));  // [T, nkv*hd]
  std::vector<float> v(size_t(T * KVD));  // [T, nkv*hd]
  std::vector<float> att(size_t(T * QD)); // attention output [T, nh*hd]
  std::vector<float> y(size_t(T * H));    // block output [T, H]

  // attention block
  rmsnorm_forward(a.data(), h, L.attn_norm.data(), T, H, c.rms_norm_eps);
  linear_hooked(L.q, a.data(), q.data(), T, hook);
  linear_hooked(L.k, a.data(), k.data(), T, hook);
  linear_hooked(L.v, a.data(), v.data(), T, hook);
  if (c.qk_norm) {  // Qwen3: RMSNorm over each head's hd values, in place, before RoPE
    rmsnorm_forward(q.data(), q.data(), L.q_norm.data(), T * nh, c.head_dim, c.rms_norm_eps);
    rmsnorm_forward(k.data(), k.data(), L.k_norm.data(), T * nkv, c.head_dim, c.rms_norm_eps);
  }
  rope_forward(q.data(), rope_cos_.data(), rope_sin_.data(), T, nh, c.head_dim);
  rope_forward(k.data(), rope_cos_.data(), rope_sin_.data(), T, nkv, c.head_dim);
  kv_cache_forward(attention_module_of(L.k), k.data(), v.data(), T, KVD, L.kv, hook);
  cpu::attention_forward(att.data(), q.data(), k.data(), v.data(), T, nh, nkv, c.head_dim);
  row_parallel_hooked(L.o, att.data(), y.data(), T, hook, par_);
  residual_forward(h, y.data(), T, H);
  // feed-forward block: routed experts or the dense MLP
  rmsnorm_forward(a.data(), h, L.mlp_norm.data(), T, H, c.rms_norm_eps);
  if (L.moe) {
    moe_forward_impl(y.data(), a.data(), L.router, L.experts, c.experts_per_token, c.norm_topk_prob, T, hook, nullptr,
                     par_);
  } else {
    std::vector<float> g(size_t(T * I));  // gate [T, I]
    std::vector<float> u(size_t(T * I));  // up [T, I]
    linear_hooked(L.gate, a.data(), g.data(), T, hook);
    linear_hooked(L.up, a.data(), u.data(), T, hook);
    swiglu_forward(g.data(), g.data(), u.data(), T, I);
    row_parallel_hooked(L.down, g.data(), y.data(), T, hook, par_);
  }
  residual_forward(h, y.data(), T, H);
}

std::vector<float> final_logits(const float* h, int64_t T, int64_t H, const std::vector<float>& norm, float eps,
                                const llama_linear& lm_head, int64_t vocab, const forward_hooks& hook) {
  std::vector<float> a(size_t(T * H));
  rmsnorm_forward(a.data(), h, norm.data(), T, H, eps);
  std::vector<float> logits(size_t(T * vocab));  // [T, V]
  linear_hooked(lm_head, a.data(), logits.data(), T, hook);
  return logits;
}

std::vector<float> llama_model::head(const float* h, int64_t T, const forward_hooks& hook) const {
  return final_logits(h, T, config_.hidden, final_norm_, config_.rms_norm_eps, lm_head_, config_.vocab, hook);
}

// ---- forward + backward ----------------------------------------------------------------------

namespace {

// What the backward needs from one layer's forward, [T, *] each.
struct layer_acts {
  std::vector<float> h_in;    // residual stream entering the layer (input of input_layernorm) [T, H]
  std::vector<float> a1;      // attention-normed [T, H]
  std::vector<float> q, k, v; // after RoPE (q, k) [T, nh*hd], [T, nkv*hd]
  std::vector<float> att;     // attention output [T, nh*hd]
  std::vector<float> h_mid;   // residual after the attention block [T, H]
  std::vector<float> a2;      // mlp-normed [T, H]
  std::vector<float> g, u;    // gate / up outputs [T, I]
  std::vector<float> s;       // silu(g) * u [T, I]
  std::vector<float> q_raw, k_raw;  // Qwen3: q_proj / k_proj outputs, before q_norm / k_norm
  moe_saved moe;              // MoE layers: the router and expert activations
};

// The MoE block backward: dy = dloss/d(block output) [T, H]; writes dloss/dx into dx [T, H] (x: the
// block input; dx zero on entry) and stores dloss/dY of the router and of every expert linear held
// here ([T_e, *] over its routed tokens, ascending; empty when no token is routed to it). The top-k choice is piecewise
// constant: no gradient flows through the selection, only through the selected probabilities.
void moe_backward(float* dx, const float* dy, const llama_layer& L, const moe_saved& S, int64_t k, bool renormalize,
                  int64_t T, std::map<std::string, std::vector<float>>& grads, const parallel_context& par) {
  const int64_t E = int64_t(L.experts.size()), H = L.router.in;
  std::vector<float> dw(size_t(T * E), 0.0f);  // dloss/d(routing weight) of (token, expert), selected only
  for (int64_t e = 0; e < E; ++e) {
    const llama_expert& X = L.experts[size_t(e)];
    if (X.gate.w.empty()) continue;  // on another ep rank
    const std::vector<int64_t>& toks = S.tokens_of[size_t(e)];
    const int64_t Te = int64_t(toks.size()), I = X.gate.out;
    if (Te == 0) {
      grads[X.gate.name] = {};
      grads[X.up.name] = {};
      grads[X.down.name] = {};
      continue;
    }
    const std::vector<float>& ye = S.y[size_t(e)];
    // out[t] += w * ye[i]:  dye[i] = w * dy[t],  dw = <dy[t], ye[i]>
    std::vector<float> dye(size_t(Te * H));
    for (int64_t i = 0; i < Te; ++i) {
      const int64_t t = toks[size_t(i)];
      const float w = S.weights_of[size_t(e)][size_t(i)];
      double dot = 0.0;
      for (int64_t c = 0; c < H; ++c) {
        dye[size_t(i * H + c)] = w * dy[t * H + c];
        dot += double(dy[t * H + c]) * double(ye[size_t(i * H + c)]);
      }
      dw[size_t(t * E + e)] = float(dot);
    }
    std::vector<float> ds(size_t(Te * I), 0.0f), dg(size_t(Te * I)), du(size_t(Te * I)), dxe(size_t(Te * H), 0.0f);
    linear_backward_input(ds.data(), dye.data(), X.down, Te);
    swiglu_backward(dg.data(), du.data(), ds.data(), S.g[size_t(e)].data(), S.u[size_t(e)].data(), Te, I);
    linear_backward_input(dxe.data(), dg.data(), X.gate, Te);
    linear_backward_input(dxe.data(), du.data(), X.up, Te);
    for (int64_t i = 0; i < Te; ++i) {
      float* dxt = dx + toks[size_t(i)] * H;
      for (int64_t c = 0; c < H; ++c) dxt[c] += dxe[size_t(i * H + c)];
    }
    grads[X.gate.name] = std::move(dg);
    grads[X.up.name] = std::move(du);
    grads[X.down.name] = std::move(dye);
  }
  // the experts' shares of dx and of the routing-weight gradients, from every ep rank (dx held only
  // the experts' contributions so far: the caller passes it zeroed)
  par.ep_sum({dx, size_t(T * H)});
  par.ep_sum(dw);
  // routing weights -> probabilities (through w = p / sum_topk p when renormalizing) -> logits
  std::vector<float> dlogits(size_t(T * E), 0.0f);
  std::vector<double> dp(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* p = S.probs.data() + t * E;
    const int64_t* sel = S.topk.data() + t * k;
    std::fill(dp.begin(), dp.end(), 0.0);
    if (renormalize) {  // dp_j = (dw_j - sum_e dw_e w_e) / sum, with w_e = p_e / sum
      double sum = 0.0, dot = 0.0;
      for (int64_t j = 0; j < k; ++j) sum += double(p[sel[j]]);
      for (int64_t j = 0; j < k; ++j) dot += double(dw[size_t(t * E + sel[j])]) * double(p[sel[j]]) / sum;
      for (int64_t j = 0; j < k; ++j) dp[size_t(sel[j])] = (double(dw[size_t(t * E + sel[j])]) - dot) / sum;
    } else {
      for (int64_t j = 0; j < k; ++j) dp[size_t(sel[j])] = double(dw[size_t(t * E + sel[j])]);
    }
    double pdp = 0.0;  // softmax: dlogit_j = p_j (dp_j - sum_i p_i dp_i)
    for (int64_t e = 0; e < E; ++e) pdp += double(p[e]) * dp[size_t(e)];
    for (int64_t e = 0; e < E; ++e) dlogits[size_t(t * E + e)] = float(double(p[e]) * (dp[size_t(e)] - pdp));
  }
  linear_backward_input(dx, dlogits.data(), L.router, T);
  grads[L.router.name] = std::move(dlogits);
}

}  // namespace

llama_grads llama_model::forward_backward(std::span<const int32_t> tokens, const forward_hooks& hook,
                                          activation_memory memory) const {
  const llama_config& c = config_;
  check_tokens(tokens, 2, "llama forward_backward");
  require_every_layer("llama forward_backward");
  const int64_t T = int64_t(tokens.size());
  const int64_t H = c.hidden, I = intermediate_here_, V = c.vocab;
  // this rank's heads (all of them in one process; see parallel_layout)
  const int64_t nh = heads_here_, nkv = kv_heads_here_, QD = nh * c.head_dim, KVD = nkv * c.head_dim;
  const auto buf = [](int64_t n) { return std::vector<float>(size_t(n)); };

  // ---- forward, saving activations (same op sequence as forward())
  // One layer on the residual stream hs [T, H] (advanced in place), saving in A what its backward needs.
  std::vector<float> y = buf(T * H);
  const auto layer_forward = [&](size_t l, std::vector<float>& hs, layer_acts& A, const forward_hooks& hk) {
    const llama_layer& L = layers_[l];
    A.h_in = hs;
    A.a1 = buf(T * H);
    A.q = buf(T * QD);
    A.k = buf(T * KVD);
    A.v = buf(T * KVD);
    A.att = buf(T * QD);
    A.a2 = buf(T * H);
    rmsnorm_forward(A.a1.data(), hs.data(), L.attn_norm.data(), T, H, c.rms_norm_eps);
    linear_hooked(L.q, A.a1.data(), A.q.data(), T, hk);
    linear_hooked(L.k, A.a1.data(), A.k.data(), T, hk);
    linear_hooked(L.v, A.a1.data(), A.v.data(), T, hk);
    if (c.qk_norm) {  // Qwen3: per-head RMSNorm before RoPE, in place as forward() does
      A.q_raw = A.q;
      A.k_raw = A.k;
      rmsnorm_forward(A.q.data(), A.q.data(), L.q_norm.data(), T * nh, c.head_dim, c.rms_norm_eps);
      rmsnorm_forward(A.k.data(), A.k.data(), L.k_norm.data(), T * nkv, c.head_dim, c.rms_norm_eps);
    }
    rope_forward(A.q.data(), rope_cos_.data(), rope_sin_.data(), T, nh, c.head_dim);
    rope_forward(A.k.data(), rope_cos_.data(), rope_sin_.data(), T, nkv, c.head_dim);
    kv_cache_forward(attention_module_of(L.k), A.k.data(), A.v.data(), T, KVD, L.kv, hk);  // straight-through
    cpu::attention_forward(A.att.data(), A.q.data(), A.k.data(), A.v.data(), T, nh, nkv, c.head_dim);
    row_parallel_hooked(L.o, A.att.data(), y.data(), T, hk, par_);
    residual_forward(hs.data(), y.data(), T, H);
    A.h_mid = hs;
    rmsnorm_forward(A.a2.data(), hs.data(), L.mlp_norm.data(), T, H, c.rms_norm_eps);
    if (L.moe) {
      A.moe = {};
      moe_forward_impl(y.data(), A.a2.data(), L.router, L.experts, c.experts_per_token, c.norm_topk_prob, T, hk,
                       &A.moe, par_);
    } else {
      A.g = buf(T * I);
      A.u = buf(T * I);
      A.s = buf(T * I);
      linear_hooked(L.gate, A.a2.data(), A.g.data(), T, hk);
      linear_hooked(L.up, A.a2.data(), A.u.data(), T, hk);
      swiglu_forward(A.s.data(), A.g.data(), A.u.data(), T, I);
      row_parallel_hooked(L.down, A.s.data(), y.data(), T, hk, par_);
    }
    residual_forward(hs.data(), y.data(), T, H);
  };
  const bool keep = memory == activation_memory::keep;
  std::vector<float> h = buf(T * H);
  for (int64_t t = 0; t < T; ++t)
    std::copy_n(embed_.data() + int64_t(tokens[size_t(t)]) * H, H, h.data() + t * H);
  std::vector<layer_acts> acts(keep ? layers_.size() : 1);  // recompute: one layer's, reused
  std::vector<std::vector<float>> inputs(keep ? 0 : layers_.size());  // recompute: each layer's h_in
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!keep) inputs[l] = h;
    layer_forward(l, h, acts[keep ? l : 0], hook);
  }
  std::vector<float> a = buf(T * H);  // final-normed [T, H]; h is now the final residual stream
  rmsnorm_forward(a.data(), h.data(), final_norm_.data(), T, H, c.rms_norm_eps);
  std::vector<float> logits = buf(T * V);
  linear_hooked(lm_head_, a.data(), logits.data(), T, hook);

  // ---- loss and dlogits
  llama_grads out;
  std::vector<float> dlogits = buf(T * V);
  out.loss = cross_entropy_backward(dlogits.data(), logits.data(), tokens, V);

  // ---- backward: dh is dloss/d(residual stream) at the current point, walking back
  std::vector<float> dh = buf(T * H), da = buf(T * H);
  linear_backward_input(da.data(), dlogits.data(), lm_head_, T);
  out.dy[lm_head_.name] = std::move(dlogits);
  rmsnorm_backward(dh.data(), da.data(), h.data(), final_norm_.data(), T, H, c.rms_norm_eps);

  std::vector<float> ds = buf(T * I), dq = buf(T * QD), dk = buf(T * KVD), dv = buf(T * KVD), datt = buf(T * QD);
  const forward_hooks replay = recompute_hooks(hook);
  for (size_t li = layers_.size(); li-- > 0;) {
    const llama_layer& L = layers_[li];
    if (!keep) {  // this layer's activations again, from its saved input
      std::vector<float> hs = std::move(inputs[li]);
      layer_forward(li, hs, acts[0], replay);
    }
    const layer_acts& A = acts[keep ? li : 0];
    // MLP block: h_out = h_mid + down(silu(gate(a2)) * up(a2)) (or the routed experts); the
    // residual passes dh through
    std::fill(da.begin(), da.end(), 0.0f);
    if (L.moe) {
      moe_backward(da.data(), dh.data(), L, A.moe, c.experts_per_token, c.norm_topk_prob, T, out.dy, par_);
    } else {
      out.dy[L.down.name] = dh;
      std::fill(ds.begin(), ds.end(), 0.0f);
      linear_backward_input(ds.data(), dh.data(), L.down, T);
      std::vector<float> dg = buf(T * I), du = buf(T * I);
      swiglu_backward(dg.data(), du.data(), ds.data(), A.g.data(), A.u.data(), T, I);
      linear_backward_input(da.data(), dg.data(), L.gate, T);
      linear_backward_input(da.data(), du.data(), L.up, T);
      par_.tp_sum(da);  // column-parallel: each rank's columns give part of dX
      out.dy[L.gate.name] = std::move(dg);
      out.dy[L.up.name] = std::move(du);
    }
    rmsnorm_backward(dh.data(), da.data(), A.h_mid.data(), L.mlp_norm.data(), T, H, c.rms_norm_eps);
    // attention block: h_mid = h_in + o(attention(rope(q(a1)), rope(k(a1)), v(a1)))
    out.dy[L.o.name] = dh;
    std::fill(datt.begin(), datt.end(), 0.0f);
    linear_backward_input(datt.data(), dh.data(), L.o, T);
    cpu::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), A.q.data(), A.k.data(), A.v.data(), T,
                       nh, nkv, c.head_dim);
    rope_backward(dq.data(), rope_cos_.data(), rope_sin_.data(), T, nh, c.head_dim);
    rope_backward(dk.data(), rope_cos_.data(), rope_sin_.data(), T, nkv, c.head_dim);
    if (c.qk_norm) {  // back through q_norm / k_norm to the q_proj / k_proj outputs
      std::vector<float> dq_raw = buf(T * QD), dk_raw = buf(T * KVD);
      rmsnorm_backward(dq_raw.data(), dq.data(), A.q_raw.data(), L.q_norm.data(), T * nh, c.head_dim,
                       c.rms_norm_eps);
      rmsnorm_backward(dk_raw.data(), dk.data(), A.k_raw.data(), L.k_norm.data(), T * nkv, c.head_dim,
                       c.rms_norm_eps);
      dq = std::move(dq_raw);
      dk = std::move(dk_raw);
    }
    std::fill(da.begin(), da.end(), 0.0f);
    linear_backward_input(da.data(), dq.data(), L.q, T);
    linear_backward_input(da.data(), dk.data(), L.k, T);
    linear_backward_input(da.data(), dv.data(), L.v, T);
    par_.tp_sum(da);
    out.dy[L.q.name] = dq;
    out.dy[L.k.name] = dk;
    out.dy[L.v.name] = dv;
    rmsnorm_backward(dh.data(), da.data(), A.h_in.data(), L.attn_norm.data(), T, H, c.rms_norm_eps);
  }
  return out;
}

}  // namespace mixq

namespace mixq {

void llama_model::for_each_linear(const std::function<void(llama_linear&)>& f) {
  for (llama_layer& L : layers_) {
    for (llama_linear* W : {&L.q, &L.k, &L.v, &L.o}) f(*W);
    if (L.moe) {
      f(L.router);
      for (llama_expert& X : L.experts)
        if (!X.gate.w.empty())  // an expert held by another ep rank is not here
          for (llama_linear* W : {&X.gate, &X.up, &X.down}) f(*W);
    } else {
      for (llama_linear* W : {&L.gate, &L.up, &L.down}) f(*W);
    }
  }
  f(lm_head_);
}

void llama_model::set_kv_cache_scales(const std::string& attention, const kv_cache_scales& scales) {
  for (llama_layer& L : layers_)
    if (attention_module_of(L.k) == attention) {
      L.kv = scales;
      return;
    }
  throw io_error(fmt::format("no attention module '{}' in this model", attention));
}

}  // namespace mixq
