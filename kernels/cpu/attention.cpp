#include "kernels/cpu/attention.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"  // worth_threads
#include "kernels/cpu/vector_math.hpp"

namespace mixq::cpu {

namespace {

// Keys are processed in whole chunks of reduce_lanes: the per-head buffers are padded to Tp keys
// (zeros), and a query row's masked keys inside its last chunk get probability 0, so no loop has a
// scalar tail.
constexpr int64_t chunk = reduce_lanes;

// From this head size on, a head's products are worth a GEMM library's blocking and packing; below
// it (stories260K: 8) the per-row kernel wins.
constexpr int64_t gemm_head_dim = 32;

int64_t round_up(int64_t n) { return (n + chunk - 1) / chunk * chunk; }

// One head's [T, hd] slice of a [T, stride] activation, transposed to [hd, Tp]: a row per channel,
// so the loops across keys read contiguous memory. The padding keys T..Tp-1 stay zero.
void load_head(float* xt, const float* x, int64_t T, int64_t Tp, int64_t hd, int64_t stride) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < hd; ++d) xt[d * Tp + t] = x[t * stride + d];
}

// s[j] = scale · Σ_d a[d] · bt[d, j] for the keys j < n16 (bt is [hd, Tp]); channels in order.
// Keys go `width` at a time (a multiple of the chunk) so that several independent accumulator
// chains hide the multiply-add latency.
template <int64_t width>
MIXQ_ALWAYS_INLINE int64_t row_products_by(float* s, const float* a, const float* bt, int64_t Tp, int64_t j0,
                                           int64_t n16, int64_t hd, float scale) {
  for (; j0 + width <= n16; j0 += width) {
    float acc[width];
    for (int64_t l = 0; l < width; ++l) acc[l] = a[0] * bt[j0 + l];
    for (int64_t d = 1; d < hd; ++d) {
      const float ad = a[d];
      const float* b = bt + d * Tp + j0;
      for (int64_t l = 0; l < width; ++l) acc[l] += ad * b[l];
    }
    for (int64_t l = 0; l < width; ++l) s[j0 + l] = acc[l] * scale;
  }
  return j0;
}

MIXQ_ALWAYS_INLINE void row_products(float* s, const float* a, const float* bt, int64_t Tp, int64_t n16, int64_t hd,
                                     float scale) {
  const int64_t j0 = row_products_by<4 * chunk>(s, a, bt, Tp, 0, n16, hd, scale);
  row_products_by<chunk>(s, a, bt, Tp, j0, n16, hd, scale);
}

// In place on the scores of keys j < n16: e^(s[j] - max) for the n visible keys, 0 for the masked
// rest; returns the sum.
MIXQ_ALWAYS_INLINE float causal_exp(float* s, int64_t n, int64_t n16) {
  for (int64_t j = n; j < n16; ++j) s[j] = -INFINITY;
  const float m = lane_max(s, n16);
  float acc[chunk] = {};
  for (int64_t j0 = 0; j0 < n16; j0 += chunk)
    for (int64_t l = 0; l < chunk; ++l) acc[l] += s[j0 + l] = fast_exp(s[j0 + l] - m);
  return lane_sum(acc, chunk);
}

// y[d] = Σ_j w[j] · xt[d, j] over the keys j < n16 (xt is [hd, Tp]).
// HD channels known at compile time: all the dots in one pass over the keys, w read once per chunk,
// an accumulator register per channel.
template <int64_t HD>
MIXQ_ALWAYS_INLINE void weighted_keys_fixed(float* y, const float* w, const float* xt, int64_t Tp, int64_t n16) {
  float acc[HD][chunk] = {};
  for (int64_t j0 = 0; j0 < n16; j0 += chunk)
    for (int64_t d = 0; d < HD; ++d)
      for (int64_t l = 0; l < chunk; ++l) acc[d][l] += w[j0 + l] * xt[d * Tp + j0 + l];
  for (int64_t d = 0; d < HD; ++d) y[d] = lane_sum(acc[d], chunk);
}

MIXQ_ALWAYS_INLINE void weighted_keys(float* y, const float* w, const float* xt, int64_t Tp, int64_t n16, int64_t hd) {
  switch (hd) {
    case 8: weighted_keys_fixed<8>(y, w, xt, Tp, n16); return;
    case 16: weighted_keys_fixed<16>(y, w, xt, Tp, n16); return;
    default:
      for (int64_t d = 0; d < hd; ++d) y[d] = lane_dot(w, xt + d * Tp, n16);
  }
}

// xt[d, j] += a[d] · w[j] for the keys j < n16 (xt is [hd, Tp]).
MIXQ_ALWAYS_INLINE void add_outer(float* xt, const float* a, const float* w, int64_t Tp, int64_t n16, int64_t hd) {
  for (int64_t d = 0; d < hd; ++d) {
    const float ad = a[d];
    float* x = xt + d * Tp;
    for (int64_t j = 0; j < n16; ++j) x[j] += ad * w[j];
  }
}

// Query head h's output rows from its KV head (kt, vt [hd, Tp]); s is scratch [Tp].
MIXQ_CLONES void head_forward(float* out, const float* q, const float* kt, const float* vt, float* s, int64_t T,
                              int64_t Tp, int64_t hd, int64_t q_stride, float scale) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = t + 1, n16 = round_up(n);  // causal: keys 0..t
    row_products(s, q + t * q_stride, kt, Tp, n16, hd, scale);
    const float inv = 1.0f / causal_exp(s, n, n16);
    float* o = out + t * q_stride;
    weighted_keys(o, s, vt, Tp, n16, hd);
    for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
  }
}

// Query head h's part of the backward: writes its dq rows, adds into dk / dv ([Tp, hd] rows) of its
// KV head (dkt, dvt [hd, Tp]). p and dp are scratch [Tp].
MIXQ_CLONES void head_backward(float* dq, float* dkt, float* dvt, const float* dout, const float* q,
                               const float* kt, const float* vt, float* p, float* dp, int64_t T, int64_t Tp,
                               int64_t hd, int64_t q_stride, float scale) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = t + 1, n16 = round_up(n);
    const float* qt = q + t * q_stride;
    const float* dot = dout + t * q_stride;
    row_products(p, qt, kt, Tp, n16, hd, scale);  // recompute the probabilities as the forward does
    const float inv = 1.0f / causal_exp(p, n, n16);
    for (int64_t j = 0; j < n16; ++j) p[j] *= inv;
    // out = P V:  dV += P^T dO,  dP = dO V^T
    add_outer(dvt, dot, p, Tp, n16, hd);
    row_products(dp, dot, vt, Tp, n16, hd, 1.0f);
    // softmax: dS = P ⊙ (dP − Σ P ⊙ dP), then the 1/sqrt(hd) of the scores
    const float c = lane_dot(p, dp, n16);
    for (int64_t j = 0; j < n16; ++j) dp[j] = p[j] * (dp[j] - c) * scale;
    // scores = Q K^T:  dQ = dS K,  dK += dS^T Q
    weighted_keys(dq + t * q_stride, dp, kt, Tp, n16, hd);
    add_outer(dkt, qt, dp, Tp, n16, hd);
  }
}

// ---- heads of gemm_head_dim channels and more: blocks of query rows against the keys they may see,
// the two products as sgemm calls (OpenBLAS, single-threaded inside the parallel loop over heads),
// the causal softmax between them vectorized. Deterministic: fixed blocks, fixed order.
constexpr int64_t block_rows = 64;

// Rows of scaled scores [rows, keys] for queries first_row.. : softmax over each row's visible keys
// in place, zeros after them.
MIXQ_CLONES void causal_softmax_block(float* att, int64_t rows, int64_t keys, int64_t first_row) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = att + r * keys;
    const int64_t n = first_row + r + 1;
    const float m = lane_max(row, n);
    float acc[chunk] = {};
    int64_t j = 0;
    for (; j + chunk <= n; j += chunk)
      for (int64_t l = 0; l < chunk; ++l) acc[l] += row[j + l] = fast_exp(row[j + l] - m);
    for (int64_t l = 0; j + l < n; ++l) acc[l] += row[j + l] = fast_exp(row[j + l] - m);
    const float inv = 1.0f / lane_sum(acc, chunk);
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
    std::fill(row + n, row + keys, 0.0f);
  }
}

// In place on d (dL/dP on entry, dL/d(q k^T) on return), given the probabilities p.
MIXQ_CLONES void causal_softmax_block_backward(float* d, const float* p, int64_t rows, int64_t keys, int64_t first_row,
                                               float scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * keys;
    float* dr = d + r * keys;
    const int64_t n = first_row + r + 1;
    const float c = lane_dot(pr, dr, n);
    for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - c) * scale;
    std::fill(dr + n, dr + keys, 0.0f);
  }
}

// q, k, v, out already at the head's columns; att is scratch [block_rows, T].
void head_forward_blocked(float* out, const float* q, const float* k, const float* v, float* att, int64_t T,
                          int64_t hd, int64_t q_stride, int64_t kv_stride, float scale) {
  for (int64_t r0 = 0; r0 < T; r0 += block_rows) {
    const int64_t rows = std::min(block_rows, T - r0), keys = r0 + rows;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(keys), int(hd), scale, q + r0 * q_stride,
                int(q_stride), k, int(kv_stride), 0.0f, att, int(keys));
    causal_softmax_block(att, rows, keys, r0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(hd), int(keys), 1.0f, att, int(keys), v,
                int(kv_stride), 0.0f, out + r0 * q_stride, int(q_stride));
  }
}

// One query head's backward, adding into its KV head's dk / dv; p and dp are scratch [block_rows, T].
void head_backward_blocked(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                           const float* v, float* p, float* dp, int64_t T, int64_t hd, int64_t q_stride,
                           int64_t kv_stride, float scale) {
  for (int64_t r0 = 0; r0 < T; r0 += block_rows) {
    const int64_t rows = std::min(block_rows, T - r0), keys = r0 + rows;
    const float* qb = q + r0 * q_stride;
    const float* dob = dout + r0 * q_stride;
    // recompute the probabilities as the forward does
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(keys), int(hd), scale, qb, int(q_stride), k,
                int(kv_stride), 0.0f, p, int(keys));
    causal_softmax_block(p, rows, keys, r0);
    // out = P V:  dV += P^T dO,  dP = dO V^T
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(keys), int(hd), int(rows), 1.0f, p, int(keys), dob,
                int(q_stride), 1.0f, dv, int(kv_stride));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(keys), int(hd), 1.0f, dob, int(q_stride), v,
                int(kv_stride), 0.0f, dp, int(keys));
    causal_softmax_block_backward(dp, p, rows, keys, r0, scale);
    // scores = scale q k^T:  dQ = dS K,  dK += dS^T Q
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(hd), int(keys), 1.0f, dp, int(keys), k,
                int(kv_stride), 0.0f, dq + r0 * q_stride, int(q_stride));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(keys), int(hd), int(rows), 1.0f, dp, int(keys), qb,
                int(q_stride), 1.0f, dk, int(kv_stride));
  }
}

}  // namespace

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t nh,
                       int64_t nkv, int64_t hd) {
  const int64_t group = nh / nkv;  // query heads per KV head
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t q_stride = nh * hd, kv_stride = nkv * hd, Tp = round_up(T);
  if (hd >= gemm_head_dim) {
#pragma omp parallel if (worth_threads(nh * T * T * hd))
    {
      std::vector<float> att(static_cast<size_t>(std::min(T, block_rows) * T));
#pragma omp for schedule(static)
      for (int64_t h = 0; h < nh; ++h)
        head_forward_blocked(out + h * hd, q + h * hd, k + h / group * hd, v + h / group * hd, att.data(), T, hd,
                             q_stride, kv_stride, scale);
    }
    return;
  }
  const size_t slice = size_t(Tp * hd);
#pragma omp parallel if (worth_threads(nh * T * T * hd))
  {
    std::vector<float> kt(slice), vt(slice), s(static_cast<size_t>(Tp));
    int64_t loaded = -1;  // the KV head in the buffers
#pragma omp for schedule(static)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kvh = h / group;  // GQA: the KV head this query head reads
      if (kvh != loaded) {
        load_head(kt.data(), k + kvh * hd, T, Tp, hd, kv_stride);
        load_head(vt.data(), v + kvh * hd, T, Tp, hd, kv_stride);
        loaded = kvh;
      }
      head_forward(out + h * hd, q + h * hd, kt.data(), vt.data(), s.data(), T, Tp, hd, q_stride, scale);
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, int64_t T, int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t group = nh / nkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t q_stride = nh * hd, kv_stride = nkv * hd, Tp = round_up(T);
  // Parallel over KV heads: the query heads of one group all add into the same dk / dv slice.
  if (hd >= gemm_head_dim) {
#pragma omp parallel if (worth_threads(nh * T * T * hd))
    {
      const size_t block = static_cast<size_t>(std::min(T, block_rows) * T);
      std::vector<float> p(block), dp(block);
#pragma omp for schedule(dynamic, 1)
      for (int64_t kvh = 0; kvh < nkv; ++kvh) {
        float* dk_h = dk + kvh * hd;
        float* dv_h = dv + kvh * hd;
        for (int64_t t = 0; t < T; ++t) {
          std::fill_n(dk_h + t * kv_stride, hd, 0.0f);
          std::fill_n(dv_h + t * kv_stride, hd, 0.0f);
        }
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
          head_backward_blocked(dq + h * hd, dk_h, dv_h, dout + h * hd, q + h * hd, k + kvh * hd, v + kvh * hd,
                                p.data(), dp.data(), T, hd, q_stride, kv_stride, scale);
      }
    }
    return;
  }
  const size_t slice = size_t(Tp * hd);
#pragma omp parallel if (worth_threads(nh * T * T * hd))
  {
    std::vector<float> kt(slice), vt(slice), dkt(slice), dvt(slice);
    std::vector<float> p(static_cast<size_t>(Tp)), dp(p.size());
#pragma omp for schedule(dynamic, 1)
    for (int64_t kvh = 0; kvh < nkv; ++kvh) {
      load_head(kt.data(), k + kvh * hd, T, Tp, hd, kv_stride);
      load_head(vt.data(), v + kvh * hd, T, Tp, hd, kv_stride);
      std::fill(dkt.begin(), dkt.end(), 0.0f);
      std::fill(dvt.begin(), dvt.end(), 0.0f);
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        head_backward(dq + h * hd, dkt.data(), dvt.data(), dout + h * hd, q + h * hd, kt.data(), vt.data(), p.data(), dp.data(), T, Tp, hd, q_stride, scale);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < hd; ++d) {
          dk[t * kv_stride + kvh * hd + d] = dkt[size_t(d * Tp + t)];
          dv[t * kv_stride + kvh * hd + d] = dvt[size_t(d * Tp + t)];
        }
    }
  }
}

}  // namespace mixq::cpu
