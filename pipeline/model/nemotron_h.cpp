#include "pipeline/model/nemotron_h.hpp"

#include "pipeline/model/hf_config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

namespace {

float silu(float v) { return v / (1.0f + std::exp(-v)); }

// torch.nn.functional.softplus (beta 1, threshold 20)
float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

}  // namespace

// ---- the ops ---------------------------------------------------------------------------------

void relu2(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float r = std::max(x[i], 0.0f);
    x[i] = r * r;
  }
}

void causal_conv1d_forward(float* out, const float* x, int64_t x_stride, const float* w, const float* b, int64_t T,
                           int64_t C, int64_t K) {
  for (int64_t t = 0; t < T; ++t) {
    float* ot = out + t * C;
    for (int64_t c = 0; c < C; ++c) ot[c] = b ? b[c] : 0.0f;
    // tap k reads time t - (K-1) + k; taps before time 0 read the zero initial state
    for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
      const float* xs = x + (t - (K - 1) + k) * x_stride;
      for (int64_t c = 0; c < C; ++c) ot[c] += w[c * K + k] * xs[c];
    }
    for (int64_t c = 0; c < C; ++c) ot[c] = silu(ot[c]);
  }
}

void ssd_scan_forward(float* y, const float* x, const float* B, const float* C, int64_t xbc_stride, const float* dt,
                      const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t G, int64_t N) {
  const int64_t R = Hm / G;  // heads per group: head h reads B/C group h / R (contiguous blocks)
  std::vector<float> S(size_t(P * N));  // one head's state [P, N]
  for (int64_t h = 0; h < Hm; ++h) {
    const int64_t g = h / R;
    std::fill(S.begin(), S.end(), 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * xbc_stride + h * P;  // [P]
      const float* Bt = B + t * xbc_stride + g * N;  // [N]
      const float* Ct = C + t * xbc_stride + g * N;  // [N]
      const float dth = dt[t * Hm + h];
      const float dA = std::exp(dth * A[h]);
      float* yt = y + t * Hm * P + h * P;            // [P]
      for (int64_t p = 0; p < P; ++p) {
        float* Sp = S.data() + p * N;
        const float dx = dth * xt[p];
        float acc = 0.0f;
        for (int64_t n = 0; n < N; ++n) {
          Sp[n] = dA * Sp[n] + dx * Bt[n];  // S = dA S + dt x B^T
          acc += Sp[n] * Ct[n];             // y = S C
        }
        yt[p] = acc + D[h] * xt[p];         // D skip on the post-conv x
      }
    }
  }
}

void gated_rmsnorm_forward(float* out, const float* y, const float* z, int64_t z_stride, const float* weight,
                           int64_t T, int64_t I, int64_t G, float eps) {
  const int64_t gs = I / G;  // group size
  std::vector<float> u(static_cast<size_t>(I));
  for (int64_t t = 0; t < T; ++t) {
    const float* yt = y + t * I;
    const float* zt = z + t * z_stride;
    for (int64_t i = 0; i < I; ++i) u[size_t(i)] = yt[i] * silu(zt[i]);  // gate before the norm
    float* ot = out + t * I;
    for (int64_t g = 0; g < G; ++g) {
      const float* ug = u.data() + g * gs;
      float ss = 0.0f;
      for (int64_t i = 0; i < gs; ++i) ss += ug[i] * ug[i];
      const float rstd = 1.0f / std::sqrt(ss / float(gs) + eps);
      for (int64_t i = 0; i < gs; ++i) ot[g * gs + i] = weight[g * gs + i] * (ug[i] * rstd);
    }
  }
}

void mamba2_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                    const forward_hooks& hook) {
  const int64_t Hm = c.mamba_heads, P = c.mamba_head_dim, G = c.mamba_groups, N = c.ssm_state, K = c.conv_kernel;
  const int64_t I = Hm * P, CD = I + 2 * G * N, W = I + CD + Hm;
  // first: zxbcdt [T, W] = in_proj(x), split [z (I), xBC (CD), dt (Hm)]
  std::vector<float> zxbcdt(size_t(T * W));
  linear_hooked(L.in_proj, x, zxbcdt.data(), T, hook);
  // xBC [T, CD] = silu(conv(xBC)), then its views x [T, I], B [T, G*N], C [T, G*N]
  std::vector<float> xbc(size_t(T * CD));
  causal_conv1d_forward(xbc.data(), zxbcdt.data() + I, W, L.conv_w.data(), L.conv_b.empty() ? nullptr : L.conv_b.data(),
                        T, CD, K);
  // dt [T, Hm] = softplus(dt + dt_bias), clamped below at time_step_limit[0]; A = -exp(A_log)
  std::vector<float> dt(size_t(T * Hm)), A(static_cast<size_t>(Hm));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hm; ++h)
      dt[size_t(t * Hm + h)] = std::max(softplus(zxbcdt[size_t(t * W + I + CD + h)] + L.dt_bias[size_t(h)]), c.dt_min);
  for (int64_t h = 0; h < Hm; ++h) A[size_t(h)] = -std::exp(L.A_log[size_t(h)]);
  // y [T, I] = SSD scan, then the gated grouped norm in place
  std::vector<float> y(size_t(T * I));
  ssd_scan_forward(y.data(), xbc.data(), xbc.data() + I, xbc.data() + I + G * N, CD, dt.data(), A.data(), L.D.data(),
                   T, Hm, P, G, N);
  gated_rmsnorm_forward(y.data(), y.data(), zxbcdt.data(), W, L.gated_norm.data(), T, I, G, c.eps);
  // out [T, H] = out_proj(y)
  linear_hooked(L.out_proj, y.data(), out, T, hook);
}

namespace {

// out[T, in] = down(relu2(up(x))), x [T, in]
void relu2_mlp_forward(float* out, const float* x, const relu2_mlp& M, int64_t T, const forward_hooks& hook) {
  std::vector<float> u(size_t(T * M.up.out));  // [T, I_e]
  linear_hooked(M.up, x, u.data(), T, hook);
  relu2(u.data(), T * M.up.out);
  linear_hooked(M.down, u.data(), out, T, hook);
}

}  // namespace

void latent_moe_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                        const forward_hooks& hook) {
  const int64_t E = L.router.out, H = L.router.in, k = c.experts_per_token;
  const bool latent = c.moe_latent > 0;
  const int64_t Lw = latent ? c.moe_latent : H;  // the experts' width
  // first: the router on the full-width x. s = sigmoid(logits) [T, E] in fp32
  std::vector<float> s(size_t(T * E));
  linear_hooked(L.router, x, s.data(), T, hook);
  for (float& v : s) v = 1.0f / (1.0f + std::exp(-v));
  const size_t nE = size_t(E);
  std::vector<std::vector<int64_t>> tokens_of(nE);  // expert -> its tokens, ascending
  std::vector<std::vector<float>> weights_of(nE);   // expert -> the matching routing weights
  std::vector<float> sel(nE);
  std::vector<int64_t> order(nE);
  for (int64_t t = 0; t < T; ++t) {
    const float* st = s.data() + t * E;
    for (size_t e = 0; e < nE; ++e) sel[e] = st[e] + L.score_bias[e];  // the bias picks, it does not weigh
    for (size_t e = 0; e < nE; ++e) order[e] = int64_t(e);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
      return sel[size_t(a)] > sel[size_t(b)] || (sel[size_t(a)] == sel[size_t(b)] && a < b);
    });
    float wsum = 0.0f;
    for (int64_t j = 0; j < k; ++j) wsum += st[order[size_t(j)]];
    const float scale = c.norm_topk_prob ? c.routed_scaling_factor / (wsum + 1e-20f) : c.routed_scaling_factor;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = order[size_t(j)];
      tokens_of[size_t(e)].push_back(t);
      weights_of[size_t(e)].push_back(st[e] * scale);
    }
  }
  // then xl [T, L] = fc1_latent(x) (or x itself), each expert on its tokens adding w * y into yl [T, L]
  std::vector<float> xl_buf, yl(size_t(T * Lw), 0.0f);
  const float* xl = x;
  if (latent) {
    xl_buf.resize(size_t(T * Lw));
    linear_hooked(L.fc1_latent, x, xl_buf.data(), T, hook);
    xl = xl_buf.data();
  }
  std::vector<float> xe, ye;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int64_t>& toks = tokens_of[size_t(e)];
    if (toks.empty()) continue;
    const int64_t Te = int64_t(toks.size());
    xe.resize(size_t(Te * Lw));
    ye.resize(size_t(Te * Lw));
    for (int64_t i = 0; i < Te; ++i) std::copy_n(xl + toks[size_t(i)] * Lw, Lw, xe.data() + i * Lw);
    relu2_mlp_forward(ye.data(), xe.data(), L.experts[size_t(e)], Te, hook);  // [T_e, L]
    for (int64_t i = 0; i < Te; ++i) {
      const float w = weights_of[size_t(e)][size_t(i)];
      float* ot = yl.data() + toks[size_t(i)] * Lw;
      const float* yt = ye.data() + i * Lw;
      for (int64_t j = 0; j < Lw; ++j) ot[j] += yt[j] * w;
    }
  }
  // out [T, H] = fc2_latent(yl) (or yl), + the shared expert on the full-width x
  if (latent)
    linear_hooked(L.fc2_latent, yl.data(), out, T, hook);
  else
    std::copy(yl.begin(), yl.end(), out);
  if (c.shared_intermediate > 0) {
    std::vector<float> sh(size_t(T * H));
    relu2_mlp_forward(sh.data(), x, L.shared, T, hook);
    residual_forward(out, sh.data(), T, H);
  }
}

// ---- loading ---------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::filesystem::path& dir, const std::string& what) {
  throw io_error(fmt::format("{}: {}", dir.string(), what));
}


void require_act(const std::filesystem::path& dir, const json& cfg, const char* key, const char* want) {
  const auto it = cfg.find(key);
  if (it != cfg.end() && !it->is_null() && *it != want)
    fail(dir, fmt::format("unsupported option: {} {} (only {})", key, it->dump(), want));
}

}  // namespace

nemotron_h_model nemotron_h_model::load(const std::filesystem::path& dir) {
  nemotron_h_model m;
  m.spec_ = model_spec_from_file(dir);
  if (m.spec_.architecture != "nemotron_h")
    fail(dir, fmt::format("architecture '{}' is not nemotron_h", m.spec_.architecture));
  const json cfg = read_hf_config(dir);
  const model_dims& d = m.spec_.dims;
  nemotron_h_config& c = m.config_;
  c.vocab = d.vocab;
  c.hidden = d.hidden;
  c.layers = d.layers;
  c.heads = d.heads;
  c.kv_heads = d.kv_heads;
  c.head_dim = d.head_dim;
  c.intermediate = d.intermediate;
  c.mamba_heads = d.mamba_heads;
  c.mamba_head_dim = d.mamba_head_dim;
  c.mamba_groups = d.mamba_groups;
  c.ssm_state = d.ssm_state;
  c.conv_kernel = d.conv_kernel;
  c.experts = d.experts;
  c.experts_per_token = d.experts_per_token;
  c.moe_intermediate = d.moe_intermediate;
  c.shared_intermediate = d.shared_intermediate;
  c.moe_latent = d.moe_latent;
  c.max_positions = int64_t(config_number_or(dir, cfg, "max_position_embeddings", 4096));
  c.eps = float(config_number_or(dir, cfg, "layer_norm_epsilon", 1e-5));
  c.routed_scaling_factor = float(config_number_or(dir, cfg, "routed_scaling_factor", 1.0));
  if (const auto it = cfg.find("norm_topk_prob"); it != cfg.end() && !it->is_null()) {
    if (!it->is_boolean()) fail(dir, fmt::format("config key 'norm_topk_prob' must be true or false, got {}", it->dump()));
    c.norm_topk_prob = it->get<bool>();
  }
  if (const auto it = cfg.find("time_step_limit"); it != cfg.end() && !it->is_null()) {
    if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number())
      fail(dir, fmt::format("config key 'time_step_limit' must be [min, max], got {}", it->dump()));
    c.dt_min = (*it)[0].get<float>();
  }
  if (config_number_or(dir, cfg, "n_group", 1) != 1 || config_number_or(dir, cfg, "topk_group", 1) != 1)
    fail(dir, "unsupported option: grouped expert selection (n_group / topk_group other than 1)");
  require_act(dir, cfg, "mlp_hidden_act", "relu2");
  require_act(dir, cfg, "mamba_hidden_act", "silu");
  if (c.experts_per_token > c.experts)
    fail(dir, fmt::format("unsupported option: num_experts_per_tok ({}) exceeds the number of experts ({})",
                          c.experts_per_token, c.experts));
  if (c.max_positions <= 0 || (c.heads > 0 && (c.kv_heads <= 0 || c.heads % c.kv_heads != 0)))
    fail(dir, fmt::format("unsupported shape: {} heads, {} KV heads, max_position_embeddings {}", c.heads, c.kv_heads,
                          c.max_positions));

  const fp32_weight_reader w(dir);
  const int64_t H = c.hidden;
  m.embed_ = w.load(w.has("backbone.embeddings.weight") ? "backbone.embeddings.weight" : "backbone.embedding.weight",
                    {c.vocab, H});
  m.norm_f_ = w.load("backbone.norm_f.weight", {H});
  std::set<std::string> listed;  // the non-linear tensors the spec lists (conv bias only when use_conv_bias)
  for (const tensor_spec& t : m.spec_.tensors) listed.insert(t.name);

  m.layers_.resize(size_t(c.layers));
  for (const block_spec& b : m.spec_.blocks) {
    if (b.mtp) continue;  // the MTP head is not part of the forward pass
    nemotron_h_layer& L = m.layers_.at(size_t(b.layer));
    L.kind = b.kind;
    L.norm = w.load(b.prefix + ".norm.weight", {H});
    const std::string mx = b.prefix + ".mixer";
    if (b.kind == block_kind::mamba) {
      const int64_t Hm = c.mamba_heads, I = Hm * c.mamba_head_dim, CD = I + 2 * c.mamba_groups * c.ssm_state;
      L.conv_w = w.load(mx + ".conv1d.weight", {CD, 1, c.conv_kernel});
      if (listed.count(mx + ".conv1d.bias")) L.conv_b = w.load(mx + ".conv1d.bias", {CD});
      L.dt_bias = w.load(mx + ".dt_bias", {Hm});
      L.A_log = w.load(mx + ".A_log", {Hm});
      L.D = w.load(mx + ".D", {Hm});
      L.gated_norm = w.load(mx + ".norm.weight", {I});
    } else if (b.kind == block_kind::attention) {
      L.kv = w.kv_scales(mx);
    } else if (b.kind == block_kind::moe) {
      L.score_bias = w.load(mx + ".gate.e_score_correction_bias", {c.experts});
      L.experts.resize(size_t(c.experts));
    }
  }

  bool have_lm_head = false;
  for (const linear_spec& l : m.spec_.linears) {
    if (l.role == linear_role::lm_head) {
      m.lm_head_ = w.linear(l);
      have_lm_head = true;
      continue;
    }
    const block_spec& b = m.spec_.blocks.at(size_t(l.block));
    if (b.mtp) continue;
    nemotron_h_layer& L = m.layers_.at(size_t(b.layer));
    const std::string leaf = l.module.substr(l.module.rfind('.') + 1);
    llama_linear* slot = nullptr;
    switch (b.kind) {
      case block_kind::mamba:
        slot = leaf == "in_proj" ? &L.in_proj : leaf == "out_proj" ? &L.out_proj : nullptr;
        break;
      case block_kind::attention:
        slot = leaf == "q_proj"   ? &L.q
               : leaf == "k_proj" ? &L.k
               : leaf == "v_proj" ? &L.v
               : leaf == "o_proj" ? &L.o
                                  : nullptr;
        break;
      case block_kind::mlp:
        slot = leaf == "up_proj" ? &L.mlp.up : leaf == "down_proj" ? &L.mlp.down : nullptr;
        break;
      case block_kind::moe: {
        relu2_mlp* M = l.expert >= 0 && size_t(l.expert) < L.experts.size() ? &L.experts[size_t(l.expert)]
                       : l.role == linear_role::shared_expert                ? &L.shared
                                                                             : nullptr;
        if (M)
          slot = leaf == "up_proj" ? &M->up : leaf == "down_proj" ? &M->down : nullptr;
        else
          slot = l.role == linear_role::router  ? &L.router
                 : leaf == "fc1_latent_proj"    ? &L.fc1_latent
                 : leaf == "fc2_latent_proj"    ? &L.fc2_latent
                                                : nullptr;
        break;
      }
    }
    if (!slot) fail(dir, fmt::format("unexpected linear '{}' in a nemotron_h model", l.module));
    *slot = w.linear(l);
  }
  if (!have_lm_head) {  // tied: the embedding matrix
    m.lm_head_.name = "lm_head";
    m.lm_head_.out = c.vocab;
    m.lm_head_.in = H;
    m.lm_head_.w = m.embed_;
  }
  return m;
}

// ---- forward ---------------------------------------------------------------------------------

std::vector<float> nemotron_h_model::forward(std::span<const int32_t> tokens, const forward_hooks& hook) const {
  const nemotron_h_config& c = config_;
  const int64_t T = int64_t(tokens.size()), H = c.hidden, V = c.vocab;
  if (T < 1 || T > c.max_positions)
    throw std::invalid_argument(fmt::format("nemotron_h forward: {} tokens; expected 1..{} (max_position_embeddings)",
                                            T, c.max_positions));
  std::vector<float> h(size_t(T * H));  // residual stream [T, H]
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[size_t(t)];
    if (id < 0 || id >= V)
      throw std::invalid_argument(
          fmt::format("nemotron_h forward: token id {} at position {} is not below vocab {}", id, t, V));
    std::copy_n(embed_.data() + int64_t(id) * H, H, h.data() + t * H);  // h = Emb[ids]
  }
  const int64_t QD = c.heads * c.head_dim, KVD = c.kv_heads * c.head_dim;
  std::vector<float> a(size_t(T * H));  // normed input [T, H]
  std::vector<float> y(size_t(T * H));  // mixer output [T, H]
  std::vector<float> q, k, v, att;
  for (const nemotron_h_layer& L : layers_) {
    rmsnorm_forward(a.data(), h.data(), L.norm.data(), T, H, c.eps);
    switch (L.kind) {
      case block_kind::mamba: mamba2_forward(y.data(), a.data(), L, c, T, hook); break;
      case block_kind::attention:  // causal GQA, no positional encoding
        q.resize(size_t(T * QD));
        k.resize(size_t(T * KVD));
        v.resize(size_t(T * KVD));
        att.resize(size_t(T * QD));
        linear_hooked(L.q, a.data(), q.data(), T, hook);
        linear_hooked(L.k, a.data(), k.data(), T, hook);
        linear_hooked(L.v, a.data(), v.data(), T, hook);
        kv_cache_forward(attention_module_of(L.k), k.data(), v.data(), T, KVD, L.kv, hook);
        attention_forward(att.data(), q.data(), k.data(), v.data(), T, c.heads, c.kv_heads, c.head_dim);
        linear_hooked(L.o, att.data(), y.data(), T, hook);
        break;
      case block_kind::mlp: relu2_mlp_forward(y.data(), a.data(), L.mlp, T, hook); break;
      case block_kind::moe: latent_moe_forward(y.data(), a.data(), L, c, T, hook); break;
    }
    residual_forward(h.data(), y.data(), T, H);
  }
  rmsnorm_forward(a.data(), h.data(), norm_f_.data(), T, H, c.eps);
  std::vector<float> logits(size_t(T * V));  // [T, V]
  linear_hooked(lm_head_, a.data(), logits.data(), T, hook);
  return logits;
}

}  // namespace mixq

namespace mixq {

void nemotron_h_model::for_each_linear(const std::function<void(llama_linear&)>& f) {
  const auto mlp = [&](relu2_mlp& M) {
    if (!M.up.w.empty()) f(M.up), f(M.down);
  };
  for (nemotron_h_layer& L : layers_) {
    switch (L.kind) {
      case block_kind::mamba: f(L.in_proj), f(L.out_proj); break;
      case block_kind::attention:
        for (llama_linear* W : {&L.q, &L.k, &L.v, &L.o}) f(*W);
        break;
      case block_kind::mlp: mlp(L.mlp); break;
      case block_kind::moe:
        f(L.router);
        if (!L.fc1_latent.w.empty()) f(L.fc1_latent);
        for (relu2_mlp& X : L.experts) mlp(X);
        if (!L.fc2_latent.w.empty()) f(L.fc2_latent);
        mlp(L.shared);
        break;
    }
  }
  f(lm_head_);
}

void nemotron_h_model::set_kv_cache_scales(const std::string& attention, const kv_cache_scales& scales) {
  for (nemotron_h_layer& L : layers_)
    if (L.kind == block_kind::attention && attention_module_of(L.k) == attention) {
      L.kv = scales;
      return;
    }
  throw io_error(fmt::format("no attention module '{}' in this model", attention));
}

std::unique_ptr<causal_lm> load_causal_lm(const std::filesystem::path& dir) {
  if (model_spec_from_file(dir).architecture == "nemotron_h")
    return std::make_unique<nemotron_h_model>(nemotron_h_model::load(dir));
  return std::make_unique<llama_model>(llama_model::load(dir));
}

}  // namespace mixq
