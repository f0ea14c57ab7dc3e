#include "pipeline/model/nemotron_h.hpp"

#include "pipeline/model/hf_config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/ssd_scan.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

namespace {

float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }
float silu(float v) { return v / (1.0f + std::exp(-v)); }
// silu'(v) = sig (1 + v (1 - sig))
float silu_grad(float v) {
  const float sig = sigmoid(v);
  return sig * (1.0f + v * (1.0f - sig));
}

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

void relu2_backward(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * 2.0f * std::max(x[i], 0.0f);
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

void causal_conv1d_backward(float* dx, int64_t dx_stride, const float* dout, const float* x, int64_t x_stride,
                            const float* w, const float* b, int64_t T, int64_t C, int64_t K) {
  std::vector<float> dv(static_cast<size_t>(C));  // dloss/d(pre-activation) of one step
  for (int64_t t = 0; t < T; ++t) {
    // first: recompute the pre-activation as the forward did, then through the SiLU
    const int64_t k0 = std::max<int64_t>(0, K - 1 - t);
    for (int64_t c = 0; c < C; ++c) dv[size_t(c)] = b ? b[c] : 0.0f;
    for (int64_t k = k0; k < K; ++k) {
      const float* xs = x + (t - (K - 1) + k) * x_stride;
      for (int64_t c = 0; c < C; ++c) dv[size_t(c)] += w[c * K + k] * xs[c];
    }
    const float* dout_t = dout + t * C;
    for (int64_t c = 0; c < C; ++c) dv[size_t(c)] = dout_t[c] * silu_grad(dv[size_t(c)]);
    // then every tap scatters back to the step it read
    for (int64_t k = k0; k < K; ++k) {
      float* dxs = dx + (t - (K - 1) + k) * dx_stride;
      for (int64_t c = 0; c < C; ++c) dxs[c] += w[c * K + k] * dv[size_t(c)];
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

void gated_rmsnorm_backward(float* dy, float* dz, int64_t dz_stride, const float* dout, const float* y, const float* z,
                            int64_t z_stride, const float* weight, int64_t T, int64_t I, int64_t G, float eps) {
  const int64_t gs = I / G;
  std::vector<float> u(static_cast<size_t>(I));
  for (int64_t t = 0; t < T; ++t) {
    const float* yt = y + t * I;
    const float* zt = z + t * z_stride;
    const float* dout_t = dout + t * I;
    float* dyt = dy + t * I;
    float* dzt = dz + t * dz_stride;
    for (int64_t i = 0; i < I; ++i) u[size_t(i)] = yt[i] * silu(zt[i]);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t o = g * gs;
      const float* ug = u.data() + o;
      // first: the group's rstd as the forward computed it
      float ss = 0.0f;
      for (int64_t i = 0; i < gs; ++i) ss += ug[i] * ug[i];
      const float rstd = 1.0f / std::sqrt(ss / float(gs) + eps);
      // then the rmsnorm backward to u: du = rstd * (gw - uhat * mean(gw * uhat)), gw = weight * dout
      double acc = 0.0;
      for (int64_t i = 0; i < gs; ++i) acc += double(weight[o + i] * dout_t[o + i]) * double(ug[i] * rstd);
      const float mean_gu = float(acc / double(gs));
      // now through the gate u = y * silu(z)
      for (int64_t i = 0; i < gs; ++i) {
        const float du = rstd * (weight[o + i] * dout_t[o + i] - ug[i] * rstd * mean_gu);
        dyt[o + i] = du * silu(zt[o + i]);
        dzt[o + i] = du * yt[o + i] * silu_grad(zt[o + i]);
      }
    }
  }
}

namespace {

// What the backward needs from one forward, filled when the forward is given one. Linear outputs
// are kept after the output hook, as everything downstream saw them.
struct relu2_saved {
  std::vector<float> u;  // up output, before relu2 [T, I_e]
  std::vector<float> y;  // down output [T, out] (a routed expert's weight gradient reads it)
};

struct mamba_saved {
  std::vector<float> zxbcdt;  // in_proj output [T, I + CD + Hm]
  std::vector<float> xbc;     // silu(conv(xBC)) [T, CD]
  std::vector<float> dt;      // after softplus and clamp [T, Hm]
  std::vector<float> A;       // -exp(A_log) [Hm]
  std::vector<float> y;       // SSD output, before the gated norm [T, I]
};

struct latent_moe_saved {
  std::vector<float> s;                          // sigmoid router scores [T, E]
  std::vector<int64_t> topk;                     // each token's k experts [T, k]
  std::vector<float> scale;                      // w = s * scale for the selected experts [T]
  std::vector<std::vector<int64_t>> tokens_of;   // expert -> its tokens, ascending
  std::vector<std::vector<float>> weights_of;    // expert -> the matching routing weights
  std::vector<relu2_saved> experts;              // [E]
  relu2_saved shared;
};

struct attention_saved {
  std::vector<float> q, k, v;  // k and v as the KV cache holds them
  std::vector<float> att;      // [T, nh*hd]
};

// out[T, in] = down(relu2(up(x))), x [T, in]; `split` sums a tp-split MLP's partial outputs (the
// dense MLP, the shared expert; a routed expert is whole: parallel_context{}).
void relu2_mlp_forward(float* out, const float* x, const relu2_mlp& M, int64_t T, const forward_hooks& hook,
                       relu2_saved* save, const parallel_context& split) {
  std::vector<float> u(size_t(T * M.up.out));  // [T, I_e]
  linear_hooked(M.up, x, u.data(), T, hook);
  if (save) save->u = u;
  relu2(u.data(), T * M.up.out);
  row_parallel_hooked(M.down, u.data(), out, T, hook, split);
  if (save) save->y.assign(out, out + T * M.down.out);
}

// dx[T, in] += the input gradient of relu2_mlp_forward from dout [T, in]; stores up's and down's dY.
void relu2_mlp_backward(float* dx, const float* dout, const relu2_mlp& M, const relu2_saved& S, int64_t T,
                        std::map<std::string, std::vector<float>>& grads) {
  const size_t n = size_t(T * M.up.out);
  std::vector<float> dr(n, 0.0f), du(n);
  linear_backward_input(dr.data(), dout, M.down, T);
  relu2_backward(du.data(), dr.data(), S.u.data(), T * M.up.out);
  linear_backward_input(dx, du.data(), M.up, T);
  grads[M.up.name] = std::move(du);
  grads[M.down.name].assign(dout, dout + T * M.down.out);
}

void mamba2_forward_impl(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                         const forward_hooks& hook, mamba_saved* save, const parallel_context& par) {
  const int64_t Hm = c.mamba_heads, P = c.mamba_head_dim, G = c.mamba_groups, N = c.ssm_state, K = c.conv_kernel;
  const int64_t I = Hm * P, CD = I + 2 * G * N, W = I + CD + Hm;
  mamba_saved local;
  mamba_saved& S = save ? *save : local;
  // first: zxbcdt [T, W] = in_proj(x), split [z (I), xBC (CD), dt (Hm)]
  S.zxbcdt.resize(size_t(T * W));
  linear_hooked(L.in_proj, x, S.zxbcdt.data(), T, hook);
  // xBC [T, CD] = silu(conv(xBC)), then its views x [T, I], B [T, G*N], C [T, G*N]
  S.xbc.resize(size_t(T * CD));
  causal_conv1d_forward(S.xbc.data(), S.zxbcdt.data() + I, W, L.conv_w.data(),
                        L.conv_b.empty() ? nullptr : L.conv_b.data(), T, CD, K);
  // dt [T, Hm] = softplus(dt + dt_bias), clamped to time_step_limit; A = -exp(A_log)
  S.dt.resize(size_t(T * Hm));
  S.A.resize(size_t(Hm));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hm; ++h)
      S.dt[size_t(t * Hm + h)] =
          std::clamp(softplus(S.zxbcdt[size_t(t * W + I + CD + h)] + L.dt_bias[size_t(h)]), c.dt_min, c.dt_max);
  for (int64_t h = 0; h < Hm; ++h) S.A[size_t(h)] = -std::exp(L.A_log[size_t(h)]);
  // y [T, I] = SSD scan, then the gated grouped norm
  S.y.resize(size_t(T * I));
  cpu::ssd_scan_forward(S.y.data(), S.xbc.data(), S.xbc.data() + I, S.xbc.data() + I + G * N, CD, S.dt.data(),
                   S.A.data(), L.D.data(), T, Hm, P, G, N);
  std::vector<float> yn(size_t(T * I));
  gated_rmsnorm_forward(yn.data(), S.y.data(), S.zxbcdt.data(), W, L.gated_norm.data(), T, I, G, c.eps);
  // out [T, H] = out_proj(yn)
  row_parallel_hooked(L.out_proj, yn.data(), out, T, hook, par);
}

// dx[T, H] += the input gradient of the Mamba-2 mixer from dout [T, H]; stores out_proj's and in_proj's dY.
void mamba2_backward(float* dx, const float* dout, const nemotron_h_layer& L, const nemotron_h_config& c,
                     const mamba_saved& S, int64_t T, std::map<std::string, std::vector<float>>& grads) {
  const int64_t Hm = c.mamba_heads, P = c.mamba_head_dim, G = c.mamba_groups, N = c.ssm_state, K = c.conv_kernel;
  const int64_t I = Hm * P, CD = I + 2 * G * N, W = I + CD + Hm;
  grads[L.out_proj.name].assign(dout, dout + T * L.out_proj.out);
  std::vector<float> dyn(size_t(T * I), 0.0f), dy(size_t(T * I));
  linear_backward_input(dyn.data(), dout, L.out_proj, T);
  // d(in_proj output) [T, W] is assembled from its three parts: dz here, dxBC and ddt below
  std::vector<float> dzxbcdt(size_t(T * W), 0.0f);
  gated_rmsnorm_backward(dy.data(), dzxbcdt.data(), W, dyn.data(), S.y.data(), S.zxbcdt.data(), W,
                         L.gated_norm.data(), T, I, G, c.eps);
  std::vector<float> dxbc(size_t(T * CD), 0.0f), ddt(size_t(T * Hm), 0.0f);
  cpu::ssd_scan_backward(dxbc.data(), dxbc.data() + I, dxbc.data() + I + G * N, ddt.data(), dy.data(), S.xbc.data(),
                    S.xbc.data() + I, S.xbc.data() + I + G * N, CD, S.dt.data(), S.A.data(), L.D.data(), T, Hm, P, G,
                    N);
  causal_conv1d_backward(dzxbcdt.data() + I, W, dxbc.data(), S.zxbcdt.data() + I, W, L.conv_w.data(),
                         L.conv_b.empty() ? nullptr : L.conv_b.data(), T, CD, K);
  // dt = clamp(softplus(v), dt_min, dt_max), v = raw + dt_bias: softplus' = sigmoid(v) (1 past the
  // threshold, as torch); no gradient where the clamp holds
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hm; ++h) {
      const float v = S.zxbcdt[size_t(t * W + I + CD + h)] + L.dt_bias[size_t(h)];
      const float sp = softplus(v);
      const bool clamped = sp < c.dt_min || sp > c.dt_max;
      const float dsp = v > 20.0f ? 1.0f : sigmoid(v);
      dzxbcdt[size_t(t * W + I + CD + h)] = clamped ? 0.0f : ddt[size_t(t * Hm + h)] * dsp;
    }
  linear_backward_input(dx, dzxbcdt.data(), L.in_proj, T);
  grads[L.in_proj.name] = std::move(dzxbcdt);
}

// Experts whose weights are empty live on another ep rank: the ep group sums the shares of the
// experts each holds (in the latent width, before fc2); the shared expert is tp-split.
void latent_moe_forward_impl(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c,
                             int64_t T, const forward_hooks& hook, latent_moe_saved* save, const parallel_context& par) {
  const int64_t E = L.router.out, H = L.router.in, k = c.experts_per_token;
  const bool latent = c.moe_latent > 0;
  const int64_t Lw = latent ? c.moe_latent : H;  // the experts' width
  // first: the router on the full-width x. s = sigmoid(logits) [T, E] in fp32
  std::vector<float> s(size_t(T * E));
  linear_hooked(L.router, x, s.data(), T, hook);
  for (float& v : s) v = sigmoid(v);
  const size_t nE = size_t(E);
  std::vector<std::vector<int64_t>> tokens_of(nE);  // expert -> its tokens, ascending
  std::vector<std::vector<float>> weights_of(nE);   // expert -> the matching routing weights
  std::vector<float> sel(nE);
  std::vector<int64_t> order(nE);
  if (save) {
    save->topk.assign(size_t(T * k), 0);
    save->scale.assign(size_t(T), 0.0f);
    save->experts.assign(nE, {});
  }
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
    if (save) {
      std::copy_n(order.begin(), k, save->topk.begin() + t * k);
      save->scale[size_t(t)] = scale;
    }
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = order[size_t(j)];
      tokens_of[size_t(e)].push_back(t);
      weights_of[size_t(e)].push_back(st[e] * scale);
    }
  }
  if (hook.routing) {
    const std::string moe = attention_module_of(L.router);  // the block owning the gate
    for (size_t e = 0; e < nE; ++e)
      if (!L.experts[e].up.w.empty())
        hook.routing(moe, int64_t(e), tokens_of[e].data(), weights_of[e].data(), int64_t(tokens_of[e].size()));
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
    if (toks.empty() || L.experts[size_t(e)].up.w.empty()) continue;
    const int64_t Te = int64_t(toks.size());
    xe.resize(size_t(Te * Lw));
    ye.resize(size_t(Te * Lw));
    for (int64_t i = 0; i < Te; ++i) std::copy_n(xl + toks[size_t(i)] * Lw, Lw, xe.data() + i * Lw);
    relu2_mlp_forward(ye.data(), xe.data(), L.experts[size_t(e)], Te, hook,
                      save ? &save->experts[size_t(e)] : nullptr, parallel_context{});  // [T_e, L]
    for (int64_t i = 0; i < Te; ++i) {
      const float w = weights_of[size_t(e)][size_t(i)];
      float* ot = yl.data() + toks[size_t(i)] * Lw;
      const float* yt = ye.data() + i * Lw;
      for (int64_t j = 0; j < Lw; ++j) ot[j] += yt[j] * w;
    }
  }
  par.ep_sum(yl);
  // out [T, H] = fc2_latent(yl) (or yl), + the shared expert on the full-width x
  if (latent)
    linear_hooked(L.fc2_latent, yl.data(), out, T, hook);
  else
    std::copy(yl.begin(), yl.end(), out);
  if (c.shared_intermediate > 0) {
    std::vector<float> sh(size_t(T * H));
    relu2_mlp_forward(sh.data(), x, L.shared, T, hook, save ? &save->shared : nullptr, par);
    residual_forward(out, sh.data(), T, H);
  }
  if (save) {
    save->s = std::move(s);
    save->tokens_of = std::move(tokens_of);
    save->weights_of = std::move(weights_of);
  }
}

// dx[T, H] += the input gradient of the latent MoE from dout [T, H]; stores the dY of the router, the
// latent projections and every expert linear (empty for an expert with no tokens). The top-k choice
// is piecewise constant: the gradient reaches the router through the selected scores only.
void latent_moe_backward(float* dx, const float* dout, const nemotron_h_layer& L, const nemotron_h_config& c,
                         const latent_moe_saved& S, int64_t T, std::map<std::string, std::vector<float>>& grads,
                         const parallel_context& par) {
  const int64_t E = L.router.out, H = L.router.in, k = c.experts_per_token;
  const bool latent = c.moe_latent > 0;
  const int64_t Lw = latent ? c.moe_latent : H;
  if (c.shared_intermediate > 0) {  // the tp-split shared expert: its ranks' shares of dx summed
    std::vector<float> dsh(size_t(T * H), 0.0f);
    relu2_mlp_backward(dsh.data(), dout, L.shared, S.shared, T, grads);
    par.tp_sum(dsh);
    residual_forward(dx, dsh.data(), T, H);
  }
  // dyl [T, L]: through fc2_latent (or dout itself)
  std::vector<float> dyl(size_t(T * Lw), 0.0f), dxl(size_t(T * Lw), 0.0f);
  if (latent) {
    grads[L.fc2_latent.name].assign(dout, dout + T * H);
    linear_backward_input(dyl.data(), dout, L.fc2_latent, T);
  } else {
    std::copy_n(dout, T * H, dyl.begin());
  }
  std::vector<float> dw(size_t(T * E), 0.0f);  // dloss/d(routing weight) of (token, expert), selected only
  for (int64_t e = 0; e < E; ++e) {
    const relu2_mlp& X = L.experts[size_t(e)];
    if (X.up.w.empty()) continue;  // on another ep rank
    const std::vector<int64_t>& toks = S.tokens_of[size_t(e)];
    const int64_t Te = int64_t(toks.size());
    if (Te == 0) {
      grads[X.up.name] = {};
      grads[X.down.name] = {};
      continue;
    }
    const std::vector<float>& ye = S.experts[size_t(e)].y;
    // yl[t] += w * ye[i]:  dye[i] = w * dyl[t],  dw = <dyl[t], ye[i]>
    std::vector<float> dye(size_t(Te * Lw)), dxe(size_t(Te * Lw), 0.0f);
    for (int64_t i = 0; i < Te; ++i) {
      const int64_t t = toks[size_t(i)];
      const float w = S.weights_of[size_t(e)][size_t(i)];
      double acc = 0.0;
      for (int64_t j = 0; j < Lw; ++j) {
        dye[size_t(i * Lw + j)] = w * dyl[size_t(t * Lw + j)];
        acc += double(dyl[size_t(t * Lw + j)]) * double(ye[size_t(i * Lw + j)]);
      }
      dw[size_t(t * E + e)] = float(acc);
    }
    relu2_mlp_backward(dxe.data(), dye.data(), X, S.experts[size_t(e)], Te, grads);
    for (int64_t i = 0; i < Te; ++i) {
      float* dxt = dxl.data() + toks[size_t(i)] * Lw;
      for (int64_t j = 0; j < Lw; ++j) dxt[j] += dxe[size_t(i * Lw + j)];
    }
  }
  par.ep_sum(dxl);  // every ep rank's experts
  par.ep_sum(dw);
  if (latent) {
    linear_backward_input(dx, dxl.data(), L.fc1_latent, T);
    grads[L.fc1_latent.name] = std::move(dxl);
  } else {
    residual_forward(dx, dxl.data(), T, H);
  }
  // routing weights w_j = s_j * scale, scale = r / sum_sel s (norm_topk_prob) or r:
  //   ds_j = scale * (dw_j - sum_i dw_i s_i / sum_sel s), or scale * dw_j; then sigmoid' = s (1 - s)
  std::vector<float> dlogits(size_t(T * E), 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    const float* st = S.s.data() + t * E;
    const int64_t* sel = S.topk.data() + t * k;
    const float* dwt = dw.data() + t * E;
    double shared_term = 0.0;
    if (c.norm_topk_prob) {
      float wsum = 0.0f;
      for (int64_t j = 0; j < k; ++j) wsum += st[sel[j]];
      double dot = 0.0;
      for (int64_t j = 0; j < k; ++j) dot += double(dwt[sel[j]]) * double(st[sel[j]]);
      shared_term = dot / double(wsum + 1e-20f);
    }
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = sel[j];
      const double ds = double(S.scale[size_t(t)]) * (double(dwt[e]) - shared_term);
      dlogits[size_t(t * E + e)] = float(ds * double(st[e]) * (1.0 - double(st[e])));
    }
  }
  linear_backward_input(dx, dlogits.data(), L.router, T);
  grads[L.router.name] = std::move(dlogits);
}

}  // namespace

void mamba2_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                    const forward_hooks& hook) {
  mamba2_forward_impl(out, x, L, c, T, hook, nullptr, parallel_context{});
}

void latent_moe_forward(float* out, const float* x, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                        const forward_hooks& hook) {
  latent_moe_forward_impl(out, x, L, c, T, hook, nullptr, parallel_context{});
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
    config_error(dir, fmt::format("unsupported option: config key '{}' is {} (only {} is implemented)", key, it->dump(),
                                  want));
}

// time_step_limit (legacy mamba_dt_limit): [min, max] with 0 <= min < max; max may be null or
// infinite (any spelling config_float() reads).
void read_dt_limit(const std::filesystem::path& dir, const json& cfg, nemotron_h_config& c) {
  for (const char* key : {"time_step_limit", "mamba_dt_limit"}) {
    const auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) continue;
    const std::string bad = fmt::format("config key '{}' must be [min, max] with 0 <= min < max, got {}", key, it->dump());
    if (!it->is_array() || it->size() != 2) config_error(dir, bad);
    const std::optional<double> lo = config_float((*it)[0]);
    const std::optional<double> hi = (*it)[1].is_null() ? std::numeric_limits<double>::infinity() : config_float((*it)[1]);
    if (!lo || !hi || !(*lo >= 0.0) || !(*hi > *lo)) config_error(dir, bad);
    c.dt_min = float(*lo);
    c.dt_max = float(*hi);
    return;
  }
}

}  // namespace

nemotron_h_model nemotron_h_model::load(const std::filesystem::path& dir, const parallel_context& parallel,
                                        layer_weights weights) {
  parallel.check_model_share(dir.string());
  nemotron_h_model m;
  m.par_ = parallel;
  m.spec_ = model_spec_from_file(dir);
  if (m.spec_.architecture != "nemotron_h")
    config_error(dir, fmt::format("architecture '{}' is not nemotron_h", m.spec_.architecture));
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
  // No positional encoding limits the length; max_position_embeddings (NemotronHConfig default 4096)
  // is the context the model declares, and serving runtimes enforce it as the maximum length too.
  c.max_positions = config_max_positions(dir, cfg, "nemotron_h");
  c.eps = float(config_number_or(dir, cfg, "layer_norm_epsilon", 1e-5));
  c.routed_scaling_factor = float(config_number_or(dir, cfg, "routed_scaling_factor", 1.0));
  if (const auto it = cfg.find("norm_topk_prob"); it != cfg.end() && !it->is_null()) {
    if (!it->is_boolean())
      config_error(dir, fmt::format("config key 'norm_topk_prob' must be true or false, got {}", it->dump()));
    c.norm_topk_prob = it->get<bool>();
  }
  read_dt_limit(dir, cfg, c);
  for (const char* key : {"n_group", "topk_group"})
    if (const double v = config_number_or(dir, cfg, key, 1); v != 1)
      config_error(dir, fmt::format("unsupported option: config key '{}' is {} (grouped expert selection is not "
                                    "implemented; only 1)", key, cfg[key].dump()));
  require_act(dir, cfg, "mlp_hidden_act", "relu2");
  require_act(dir, cfg, "mamba_hidden_act", "silu");
  if (c.experts_per_token > c.experts)
    config_error(dir, fmt::format("unsupported option: config key 'num_experts_per_tok' is {}, more than the {} "
                                  "experts", c.experts_per_token, c.experts));

  const auto reader = std::make_shared<const fp32_weight_reader>(dir);
  const fp32_weight_reader& w = *reader;
  const int64_t H = c.hidden;
  m.embed_ = w.load(w.has("backbone.embeddings.weight") ? "backbone.embeddings.weight" : "backbone.embedding.weight",
                    {c.vocab, H});
  m.norm_f_ = w.load("backbone.norm_f.weight", {H});
  m.layers_.resize(size_t(c.layers));
  for (const block_spec& b : m.spec_.blocks) {
    if (b.mtp) continue;  // the MTP head is not part of the forward pass
    nemotron_h_layer& L = m.layers_.at(size_t(b.layer));
    L.kind = b.kind;
    if (b.kind == block_kind::moe) L.experts.resize(size_t(c.experts));
  }
  bool have_lm_head = false;
  for (const linear_spec& l : m.spec_.linears)
    if (l.role == linear_role::lm_head) {
      m.lm_head_ = w.linear(l);
      have_lm_head = true;
    }
  if (!have_lm_head) {  // tied: the embedding matrix
    m.lm_head_.name = "lm_head";
    m.lm_head_.out = c.vocab;
    m.lm_head_.in = H;
    m.lm_head_.w = m.embed_;
  }
  m.set_shares();
  m.start_layers(dir, c.layers, reader, weights);
  return m;
}

void nemotron_h_model::read_layer(const fp32_weight_reader& w, int64_t layer) {
  const nemotron_h_config& c = config_;
  const int64_t H = c.hidden;
  nemotron_h_layer& L = layers_.at(size_t(layer));
  for (const block_spec& b : spec_.blocks) {
    if (b.mtp || b.layer != layer) continue;
    L.norm = w.load(b.prefix + ".norm.weight", {H});
    const std::string mx = b.prefix + ".mixer";
    if (b.kind == block_kind::mamba) {
      const int64_t Hm = c.mamba_heads, I = Hm * c.mamba_head_dim, CD = I + 2 * c.mamba_groups * c.ssm_state;
      L.conv_w = w.load(mx + ".conv1d.weight", {CD, 1, c.conv_kernel});
      const std::string conv_bias = mx + ".conv1d.bias";  // listed only when use_conv_bias
      if (std::any_of(spec_.tensors.begin(), spec_.tensors.end(),
                      [&](const tensor_spec& t) { return t.name == conv_bias; }))
        L.conv_b = w.load(conv_bias, {CD});
      L.dt_bias = w.load(mx + ".dt_bias", {Hm});
      L.A_log = w.load(mx + ".A_log", {Hm});
      L.D = w.load(mx + ".D", {Hm});
      L.gated_norm = w.load(mx + ".norm.weight", {I});
    } else if (b.kind == block_kind::attention) {
      L.kv = w.kv_scales(mx);
    } else if (b.kind == block_kind::moe) {
      L.score_bias = w.load(mx + ".gate.e_score_correction_bias", {c.experts});
    }
  }
  for (const linear_spec& l : spec_.linears) {
    if (l.role == linear_role::lm_head) continue;
    const block_spec& b = spec_.blocks.at(size_t(l.block));
    if (b.mtp || b.layer != layer) continue;
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
    if (!slot) fail(spec_.origin, fmt::format("unexpected linear '{}' in a nemotron_h model", l.module));
    *slot = w.linear(l);
  }
  keep_share(L);
}

void nemotron_h_model::clear_layer(int64_t layer) {
  nemotron_h_layer& L = layers_.at(size_t(layer));
  nemotron_h_layer shell;
  shell.kind = L.kind;
  shell.experts.resize(L.experts.size());
  L = std::move(shell);
}

namespace {

std::vector<float> keep_range(const std::vector<float>& v, index_range r, int64_t width = 1) {
  if (v.empty()) return v;
  return std::vector<float>(v.begin() + r.begin * width, v.begin() + r.end * width);
}

}  // namespace

namespace {

// This rank's tp / ep shares of the model's heads, widths and experts. Only the dimensions of block
// kinds the pattern has are split (an unused one need not divide).
struct model_shares {
  index_range heads, kv_heads, mlp, shared, mheads, groups, experts;
};

model_shares shares_of(const nemotron_h_config& c, const parallel_layout& p, const std::vector<nemotron_h_layer>& layers) {
  const auto has = [&](block_kind k) {
    return std::any_of(layers.begin(), layers.end(), [k](const nemotron_h_layer& L) { return L.kind == k; });
  };
  const auto share = [&](bool used, int64_t n, const char* what) {
    return used ? p.tensor_share(n, what) : index_range{0, n};
  };
  const bool attention = has(block_kind::attention), dense = has(block_kind::mlp), moe = has(block_kind::moe),
             mamba = has(block_kind::mamba);
  model_shares s;
  s.heads = share(attention, c.heads, "attention heads");
  s.kv_heads = share(attention, c.kv_heads, "KV heads");
  s.mlp = share(dense, c.intermediate, "MLP columns (intermediate_size)");
  s.shared = share(moe, c.shared_intermediate, "shared-expert columns");
  s.mheads = share(mamba, c.mamba_heads, "Mamba heads");
  s.groups = share(mamba, c.mamba_groups, "Mamba groups (n_groups)");
  s.experts = moe ? p.expert_share(c.experts) : index_range{0, c.experts};
  return s;
}

}  // namespace

void nemotron_h_model::set_shares() {
  const model_shares s = shares_of(config_, par_.layout, layers_);
  local_ = config_;
  local_.heads = s.heads.size();
  local_.kv_heads = s.kv_heads.size();
  local_.intermediate = s.mlp.size();
  local_.shared_intermediate = s.shared.size();
  local_.mamba_heads = s.mheads.size();
  local_.mamba_groups = s.groups.size();
}

void nemotron_h_model::keep_share(nemotron_h_layer& L) const {
  const nemotron_h_config& c = config_;
  const parallel_layout& p = par_.layout;
  if (p.single()) return;
  const bool first = p.tp_rank == 0;
  const auto times = [](index_range r, int64_t n) { return index_range{r.begin * n, r.end * n}; };
  const auto shifted = [](index_range r, int64_t by) { return index_range{r.begin + by, r.end + by}; };
  const model_shares sh = shares_of(c, p, layers_);
  const index_range &heads = sh.heads, &kv_heads = sh.kv_heads, &mlp = sh.mlp, &shared = sh.shared,
                    &mheads = sh.mheads, &groups = sh.groups, &experts = sh.experts;
  const int64_t P = c.mamba_head_dim, N = c.ssm_state, hd = c.head_dim;
  const int64_t I = c.mamba_heads * P, GN = c.mamba_groups * N, CD = I + 2 * GN;
  const index_range x_rows = times(mheads, P), b_rows = shifted(times(groups, N), I),
                    c_rows = shifted(times(groups, N), I + GN);
  {
    switch (L.kind) {
      case block_kind::mamba: {
        // in_proj rows [z (I) | x (I) | B (GN) | C (GN) | dt (Hm)]; conv1d over [x | B | C]
        keep_rows(L.in_proj, {x_rows, shifted(x_rows, I), shifted(b_rows, I), shifted(c_rows, I),
                              shifted(mheads, I + CD)});
        llama_linear conv{"conv1d", CD, c.conv_kernel, L.conv_w, L.conv_b, {}};
        keep_rows(conv, {x_rows, b_rows, c_rows});
        L.conv_w = std::move(conv.w);
        L.conv_b = std::move(conv.bias);
        L.dt_bias = keep_range(L.dt_bias, mheads);
        L.A_log = keep_range(L.A_log, mheads);
        L.D = keep_range(L.D, mheads);
        L.gated_norm = keep_range(L.gated_norm, mheads, P);
        keep_columns(L.out_proj, x_rows, first);
        break;
      }
      case block_kind::attention:
        keep_rows(L.q, {times(heads, hd)});
        keep_rows(L.k, {times(kv_heads, hd)});
        keep_rows(L.v, {times(kv_heads, hd)});
        keep_columns(L.o, times(heads, hd), first);
        break;
      case block_kind::mlp:
        keep_rows(L.mlp.up, {mlp});
        keep_columns(L.mlp.down, mlp, first);
        break;
      case block_kind::moe:
        keep_rows(L.shared.up, {shared});
        keep_columns(L.shared.down, shared, first);
        for (int64_t e = 0; e < int64_t(L.experts.size()); ++e)
          if (!experts.contains(e)) L.experts[size_t(e)].up.w = {}, L.experts[size_t(e)].down.w = {};
        break;
    }
  }
}

// ---- forward ---------------------------------------------------------------------------------

namespace {

// One block's activations for the backward (the mixer's part of them: its input gradient needs no
// more than these).
struct block_saved {
  std::vector<float> h_in;  // residual stream entering the block, the pre-norm's input [T, H]
  mamba_saved mamba;
  attention_saved attn;
  relu2_saved mlp;
  latent_moe_saved moe;
};

}  // namespace

struct nemotron_h_model::saved {
  bool keep = true;  // every block's activations; else only h_in, the rest recomputed in the backward
  std::vector<block_saved> blocks;
  std::vector<float> h;  // the final residual stream, norm_f's input [T, H]
};

namespace {

// y[T, H] = the mixer of block L on its pre-normed input a [T, H].
// c holds this rank's shares of the heads and widths (nemotron_h_model::local_).
void mixer_forward(float* y, const float* a, const nemotron_h_layer& L, const nemotron_h_config& c, int64_t T,
                   const forward_hooks& hook, block_saved* save, const parallel_context& par) {
  switch (L.kind) {
    case block_kind::mamba: mamba2_forward_impl(y, a, L, c, T, hook, save ? &save->mamba : nullptr, par); break;
    case block_kind::attention: {  // causal GQA, no positional encoding
      const int64_t QD = c.heads * c.head_dim, KVD = c.kv_heads * c.head_dim;
      attention_saved local;
      attention_saved& A = save ? save->attn : local;
      A.q.resize(size_t(T * QD));
      A.k.resize(size_t(T * KVD));
      A.v.resize(size_t(T * KVD));
      A.att.resize(size_t(T * QD));
      linear_hooked(L.q, a, A.q.data(), T, hook);
      linear_hooked(L.k, a, A.k.data(), T, hook);
      linear_hooked(L.v, a, A.v.data(), T, hook);
      kv_cache_forward(attention_module_of(L.k), A.k.data(), A.v.data(), T, KVD, L.kv, hook);  // straight-through
      cpu::attention_forward(A.att.data(), A.q.data(), A.k.data(), A.v.data(), T, c.heads, c.kv_heads, c.head_dim);
      row_parallel_hooked(L.o, A.att.data(), y, T, hook, par);
      break;
    }
    case block_kind::mlp: relu2_mlp_forward(y, a, L.mlp, T, hook, save ? &save->mlp : nullptr, par); break;
    case block_kind::moe: latent_moe_forward_impl(y, a, L, c, T, hook, save ? &save->moe : nullptr, par); break;
  }
}

// da[T, H] += the input gradient of block L's mixer from dy [T, H].
// da zero on entry; the tp-split mixers' partial input gradients are summed over the tp group.
void mixer_backward(float* da, const float* dy, const nemotron_h_layer& L, const nemotron_h_config& c,
                    const block_saved& S, int64_t T, std::map<std::string, std::vector<float>>& grads,
                    const parallel_context& par) {
  const std::span<float> da_all(da, size_t(T * c.hidden));
  switch (L.kind) {
    case block_kind::mamba:
      mamba2_backward(da, dy, L, c, S.mamba, T, grads);
      par.tp_sum(da_all);
      break;
    case block_kind::attention: {
      const int64_t H = c.hidden, QD = c.heads * c.head_dim, KVD = c.kv_heads * c.head_dim;
      const attention_saved& A = S.attn;
      std::vector<float> datt(size_t(T * QD), 0.0f), dq(size_t(T * QD)), dk(size_t(T * KVD)), dv(size_t(T * KVD));
      linear_backward_input(datt.data(), dy, L.o, T);
      cpu::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), A.q.data(), A.k.data(), A.v.data(), T,
                         c.heads, c.kv_heads, c.head_dim);
      linear_backward_input(da, dq.data(), L.q, T);
      linear_backward_input(da, dk.data(), L.k, T);
      linear_backward_input(da, dv.data(), L.v, T);
      grads[L.o.name].assign(dy, dy + T * H);
      grads[L.q.name] = std::move(dq);
      grads[L.k.name] = std::move(dk);
      grads[L.v.name] = std::move(dv);
      par.tp_sum(da_all);
      break;
    }
    case block_kind::mlp:
      relu2_mlp_backward(da, dy, L.mlp, S.mlp, T, grads);
      par.tp_sum(da_all);
      break;
    case block_kind::moe: latent_moe_backward(da, dy, L, c, S.moe, T, grads, par); break;
  }
}

}  // namespace

namespace {

// One block on the residual stream h [T, H] in place: h += mixer(rmsnorm(h)). a, y: [T, H] scratch.
// c: the whole model's config (eps, H); local: this rank's shares. Saves into S when given one (its
// input always, the mixer's activations when `keep`).
void block_forward(const nemotron_h_layer& L, const nemotron_h_config& c, const nemotron_h_config& local,
                   const parallel_context& par, float* h, float* a, float* y, int64_t T, const forward_hooks& hook,
                   block_saved* S, bool keep) {
  const int64_t H = c.hidden;
  if (S) S->h_in.assign(h, h + T * H);
  rmsnorm_forward(a, h, L.norm.data(), T, H, c.eps);
  mixer_forward(y, a, L, local, T, hook, keep ? S : nullptr, par);
  residual_forward(h, y, T, H);
}

}  // namespace

std::vector<float> nemotron_h_model::embed(std::span<const int32_t> tokens) const {
  return embedding_rows(embed_, tokens, "nemotron_h forward");
}

void nemotron_h_model::layer_forward(int64_t layer, float* h, int64_t T, const forward_hooks& hook) const {
  require_layer(layer, "nemotron_h forward");
  std::vector<float> a(size_t(T * config_.hidden)), y(size_t(T * config_.hidden));
  block_forward(layers_[size_t(layer)], config_, local_, par_, h, a.data(), y.data(), T, hook, nullptr, false);
}

std::vector<float> nemotron_h_model::head(const float* h, int64_t T, const forward_hooks& hook) const {
  return final_logits(h, T, config_.hidden, norm_f_, config_.eps, lm_head_, config_.vocab, hook);
}

// ---- forward + backward ----------------------------------------------------------------------

llama_grads nemotron_h_model::forward_backward(std::span<const int32_t> tokens, const forward_hooks& hook,
                                               activation_memory memory) const {
  const nemotron_h_config& c = config_;
  check_tokens(tokens, 2, "nemotron_h forward_backward");
  require_every_layer("nemotron_h forward_backward");
  const int64_t T = int64_t(tokens.size()), H = c.hidden, V = c.vocab;
  // the forward, as forward() runs it, saving what the backward needs
  saved S;
  S.keep = memory == activation_memory::keep;
  S.blocks.assign(layers_.size(), {});
  S.h = embed(tokens);
  {
    std::vector<float> a(size_t(T * H)), y(size_t(T * H));
    for (size_t l = 0; l < layers_.size(); ++l)
      block_forward(layers_[l], c, local_, par_, S.h.data(), a.data(), y.data(), T, hook, &S.blocks[l], S.keep);
  }
  const std::vector<float> logits = head(S.h.data(), T, hook);
  llama_grads out;
  std::vector<float> dlogits(size_t(T * V));
  out.loss = cross_entropy_backward(dlogits.data(), logits.data(), tokens, V);

  // ---- backward: dh is dloss/d(residual stream) at the current point, walking back
  std::vector<float> dh(size_t(T * H), 0.0f), da(size_t(T * H), 0.0f);
  linear_backward_input(da.data(), dlogits.data(), lm_head_, T);
  out.dy[lm_head_.name] = std::move(dlogits);
  rmsnorm_backward(dh.data(), da.data(), S.h.data(), norm_f_.data(), T, H, c.eps);
  const forward_hooks replay = recompute_hooks(hook);
  for (size_t l = layers_.size(); l-- > 0;) {
    // h_out = h_in + mixer(rmsnorm(h_in)): the residual passes dh through, the norm adds its share
    const nemotron_h_layer& L = layers_[l];
    if (!S.keep) {  // this block's activations again, from its saved input
      rmsnorm_forward(da.data(), S.blocks[l].h_in.data(), L.norm.data(), T, H, c.eps);
      std::vector<float> y(size_t(T * H));
      mixer_forward(y.data(), da.data(), L, local_, T, replay, &S.blocks[l], par_);
    }
    std::fill(da.begin(), da.end(), 0.0f);
    mixer_backward(da.data(), dh.data(), L, local_, S.blocks[l], T, out.dy, par_);
    rmsnorm_backward(dh.data(), da.data(), S.blocks[l].h_in.data(), L.norm.data(), T, H, c.eps);
    if (!S.keep) S.blocks[l] = {};  // one block's activations at a time
  }
  return out;
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

std::unique_ptr<causal_lm> load_causal_lm(const std::filesystem::path& dir, const parallel_context& parallel,
                                          layer_weights weights) {
  if (model_spec_from_file(dir).architecture == "nemotron_h")
    return std::make_unique<nemotron_h_model>(nemotron_h_model::load(dir, parallel, weights));
  return std::make_unique<llama_model>(llama_model::load(dir, parallel, weights));
}

}  // namespace mixq
