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

// The row length of the per-head [hd, ·] buffers: the keys rounded up to whole chunks, plus one
// chunk so that rows are never a multiple of 4 KiB apart (the CPU would take the loads from one row
// for possible reloads of the stores to another and stall them).
int64_t padded_keys(int64_t T) { return round_up(T) + chunk; }

// One head's [T, hd] slice of a [T, stride] activation, transposed to [hd, Tp]: a row per channel,
// so the loops across keys read contiguous memory. The padding keys T..Tp-1 stay zero.
void load_head(float* xt, const float* x, int64_t T, int64_t Tp, int64_t hd, int64_t stride) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < hd; ++d) xt[d * Tp + t] = x[t * stride + d];
}

// ---- heads below gemm_head_dim channels: R query rows at a time against the keys they may see, in
// chunks of 16 keys held as vec16 values; a running sum per (row, channel) stays in a register.
// HD = 0 means the head size is only known at run time (any size below gemm_head_dim).
constexpr int64_t max_small_hd = gemm_head_dim - 1;

// Rows per step: enough that each key chunk loaded serves several rows, few enough that the
// R·hd running sums fit in the 32 AVX-512 registers.
constexpr int64_t rows_for(int64_t hd) { return hd == 0 || hd > 8 ? 1 : 16 / hd; }
constexpr int64_t max_rows = rows_for(4);  // 4 channels: the smallest head size with its own kernel

// s[r] = a_r · kt[:, j0 .. j0+15] for the R rows.
template <int64_t HD, int64_t R>
MIXQ_ALWAYS_INLINE void products_chunk(vec16 (&s)[R], const float* const (&a)[R], const float* kt, int64_t Tp,
                                       int64_t j0, int64_t hd_rt) {
  const int64_t hd = HD ? HD : hd_rt;
  for (int64_t r = 0; r < R; ++r) s[r] = vec16{};
#pragma GCC unroll 16
  for (int64_t d = 0; d < hd; ++d) {
    const vec16 k = load16(kt + d * Tp + j0);
    for (int64_t r = 0; r < R; ++r) s[r] += a[r][d] * k;
  }
}

// Scores of keys j0 .. j0+15 for the R rows (a_r already scaled), -inf past row r's last visible key.
template <int64_t HD, int64_t R>
MIXQ_ALWAYS_INLINE void scores_chunk(vec16 (&s)[R], const float* const (&a)[R], const float* kt, int64_t Tp,
                                     int64_t j0, const int64_t (&n)[R], int64_t hd_rt) {
  products_chunk<HD, R>(s, a, kt, Tp, j0, hd_rt);
  for (int64_t r = 0; r < R; ++r)
    if (j0 + chunk > n[r]) {
      ivec16 j;
      for (int l = 0; l < chunk; ++l) j[l] = int32_t(j0 + l);
      s[r] = j < int32_t(n[r]) ? s[r] : splat16(-__builtin_inff());
    }
}

// The scores of query rows t0..t0+R-1 (scaled) against the keys they may see, into s [R, Tp]
// (-inf past each row's last key, up to the chunk end); each row's maximum into mr. Returns the
// number of keys written (whole chunks).
template <int64_t HD, int64_t R>
MIXQ_ALWAYS_INLINE int64_t row_scores(float* s, float (&mr)[R], const float* q, const float* kt, int64_t t0,
                                      int64_t Tp, int64_t q_stride, float scale, int64_t hd_rt) {
  const int64_t hd = HD ? HD : hd_rt;
  constexpr int64_t HDA = HD ? HD : max_small_hd;
  float qs[R][HDA];
  const float* a[R];
  int64_t n[R];
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t d = 0; d < hd; ++d) qs[r][d] = q[(t0 + r) * q_stride + d] * scale;
    a[r] = qs[r];
    n[r] = t0 + r + 1;  // causal: keys 0..t
  }
  const int64_t n16 = round_up(t0 + R);
  vec16 m[R];
  for (int64_t r = 0; r < R; ++r) m[r] = splat16(-__builtin_inff());
  for (int64_t j0 = 0; j0 < n16; j0 += chunk) {
    vec16 sc[R];
    scores_chunk<HD, R>(sc, a, kt, Tp, j0, n, hd);
    for (int64_t r = 0; r < R; ++r) {
      store16(s + r * Tp + j0, sc[r]);
      m[r] = max16(m[r], sc[r]);
    }
  }
  for (int64_t r = 0; r < R; ++r) mr[r] = max16(m[r]);
  return n16;
}

// Rows t0..t0+R-1 of one query head: out_r = softmax(scores_r) · V. s is scratch [R, Tp].
template <int64_t HD, int64_t R>
MIXQ_ALWAYS_INLINE void rows_forward(float* out, const float* q, const float* kt, const float* vt, float* s,
                                     int64_t t0, int64_t Tp, int64_t q_stride, float scale, int64_t hd_rt) {
  const int64_t hd = HD ? HD : hd_rt;
  constexpr int64_t HDA = HD ? HD : max_small_hd;
  float mr[R];
  const int64_t n16 = row_scores<HD, R>(s, mr, q, kt, t0, Tp, q_stride, scale, hd);
  // e = exp(s − max) and its weighted sum of values in one pass; e is never stored.
  vec16 acc[R][HDA], sum[R];
  for (int64_t r = 0; r < R; ++r) {
    sum[r] = vec16{};
    for (int64_t d = 0; d < hd; ++d) acc[r][d] = vec16{};
  }
  for (int64_t j0 = 0; j0 < n16; j0 += chunk) {
    vec16 e[R];
    for (int64_t r = 0; r < R; ++r) {
      e[r] = fast_exp16(load16(s + r * Tp + j0) - mr[r]);
      sum[r] += e[r];
    }
#pragma GCC unroll 16
    for (int64_t d = 0; d < hd; ++d) {
      const vec16 v = load16(vt + d * Tp + j0);
      for (int64_t r = 0; r < R; ++r) acc[r][d] += e[r] * v;
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const float inv = 1.0f / sum16(sum[r]);
    for (int64_t d = 0; d < hd; ++d) out[(t0 + r) * q_stride + d] = sum16(acc[r][d]) * inv;
  }
}

// Rows t0..t0+R-1 of one query head's backward: writes their dq rows, adds into its KV head's
// dkt / dvt ([hd, Tp]). p and dp are scratch [R, Tp].
template <int64_t HD, int64_t R>
MIXQ_ALWAYS_INLINE void rows_backward(float* dq, float* dkt, float* dvt, const float* dout, const float* q,
                                      const float* kt, const float* vt, float* p, float* dp, int64_t t0, int64_t Tp,
                                      int64_t q_stride, float scale, int64_t hd_rt) {
  const int64_t hd = HD ? HD : hd_rt;
  constexpr int64_t HDA = HD ? HD : max_small_hd;
  const float *qr[R], *gr[R];
  for (int64_t r = 0; r < R; ++r) {
    qr[r] = q + (t0 + r) * q_stride;
    gr[r] = dout + (t0 + r) * q_stride;
  }
  float mr[R];  // recompute the scores as the forward does
  const int64_t n16 = row_scores<HD, R>(p, mr, q, kt, t0, Tp, q_stride, scale, hd);
  // e = exp(s − max), dP = dO V^T, and Σ e ⊙ dP for the softmax backward
  vec16 sum[R], edp[R];
  for (int64_t r = 0; r < R; ++r) sum[r] = edp[r] = vec16{};
  for (int64_t j0 = 0; j0 < n16; j0 += chunk) {
    vec16 g[R];
    products_chunk<HD, R>(g, gr, vt, Tp, j0, hd);
    for (int64_t r = 0; r < R; ++r) {
      const vec16 e = fast_exp16(load16(p + r * Tp + j0) - mr[r]);
      store16(p + r * Tp + j0, e);
      store16(dp + r * Tp + j0, g[r]);
      sum[r] += e;
      edp[r] += e * g[r];
    }
  }
  float inv[R], c[R];
  for (int64_t r = 0; r < R; ++r) {
    inv[r] = 1.0f / sum16(sum[r]);
    c[r] = sum16(edp[r]) * inv[r];
  }
  // out = P V:  dV += P^T dO.  softmax: dS = P ⊙ (dP − Σ P ⊙ dP) · scale.
  // scores = Q K^T:  dQ = dS K,  dK += dS^T Q.
  vec16 gq[R][HDA];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < hd; ++d) gq[r][d] = vec16{};
  for (int64_t j0 = 0; j0 < n16; j0 += chunk) {
    vec16 pr[R], ds[R];
    for (int64_t r = 0; r < R; ++r) {
      pr[r] = load16(p + r * Tp + j0) * inv[r];
      ds[r] = pr[r] * (load16(dp + r * Tp + j0) - c[r]) * scale;
    }
#pragma GCC unroll 16
    for (int64_t d = 0; d < hd; ++d) {
      vec16 gv = load16(dvt + d * Tp + j0), gk = load16(dkt + d * Tp + j0);
      const vec16 k = load16(kt + d * Tp + j0);
      for (int64_t r = 0; r < R; ++r) {
        gv += gr[r][d] * pr[r];
        gk += qr[r][d] * ds[r];
        gq[r][d] += ds[r] * k;
      }
      store16(dvt + d * Tp + j0, gv);
      store16(dkt + d * Tp + j0, gk);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < hd; ++d) dq[(t0 + r) * q_stride + d] = sum16(gq[r][d]);
}

// One query head (its columns of q / out) against its KV head (kt, vt [hd, Tp]); s is scratch [R, Tp].
// Rows go R at a time, the last T mod R one at a time.
template <int64_t HD>
MIXQ_ALWAYS_INLINE void head_forward_small(float* out, const float* q, const float* kt, const float* vt, float* s,
                                           int64_t T, int64_t Tp, int64_t q_stride, float scale, int64_t hd) {
  constexpr int64_t R = rows_for(HD);
  int64_t t = 0;
  for (; t + R <= T; t += R) rows_forward<HD, R>(out, q, kt, vt, s, t, Tp, q_stride, scale, hd);
  for (; t < T; ++t) rows_forward<HD, 1>(out, q, kt, vt, s, t, Tp, q_stride, scale, hd);
}

template <int64_t HD>
MIXQ_ALWAYS_INLINE void head_backward_small(float* dq, float* dkt, float* dvt, const float* dout, const float* q,
                                            const float* kt, const float* vt, float* p, float* dp, int64_t T,
                                            int64_t Tp, int64_t q_stride, float scale, int64_t hd) {
  constexpr int64_t R = rows_for(HD);
  int64_t t = 0;
  for (; t + R <= T; t += R)
    rows_backward<HD, R>(dq, dkt, dvt, dout, q, kt, vt, p, dp, t, Tp, q_stride, scale, hd);
  for (; t < T; ++t) rows_backward<HD, 1>(dq, dkt, dvt, dout, q, kt, vt, p, dp, t, Tp, q_stride, scale, hd);
}

// The head sizes worth a kernel of their own (the running sums unrolled into registers); others
// take the run-time size.
MIXQ_CLONES void head_forward(float* out, const float* q, const float* kt, const float* vt, float* s, int64_t T,
                              int64_t Tp, int64_t hd, int64_t q_stride, float scale) {
  switch (hd) {
    case 4: return head_forward_small<4>(out, q, kt, vt, s, T, Tp, q_stride, scale, hd);
    case 8: return head_forward_small<8>(out, q, kt, vt, s, T, Tp, q_stride, scale, hd);
    case 16: return head_forward_small<16>(out, q, kt, vt, s, T, Tp, q_stride, scale, hd);
    default: return head_forward_small<0>(out, q, kt, vt, s, T, Tp, q_stride, scale, hd);
  }
}

MIXQ_CLONES void head_backward(float* dq, float* dkt, float* dvt, const float* dout, const float* q,
                               const float* kt, const float* vt, float* p, float* dp, int64_t T, int64_t Tp,
                               int64_t hd, int64_t q_stride, float scale) {
  switch (hd) {
    case 4: return head_backward_small<4>(dq, dkt, dvt, dout, q, kt, vt, p, dp, T, Tp, q_stride, scale, hd);
    case 8: return head_backward_small<8>(dq, dkt, dvt, dout, q, kt, vt, p, dp, T, Tp, q_stride, scale, hd);
    case 16: return head_backward_small<16>(dq, dkt, dvt, dout, q, kt, vt, p, dp, T, Tp, q_stride, scale, hd);
    default: return head_backward_small<0>(dq, dkt, dvt, dout, q, kt, vt, p, dp, T, Tp, q_stride, scale, hd);
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
  const int64_t q_stride = nh * hd, kv_stride = nkv * hd, Tp = padded_keys(T);
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
    std::vector<float> kt(slice), vt(slice), s(static_cast<size_t>(Tp * max_rows));
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
  const int64_t q_stride = nh * hd, kv_stride = nkv * hd, Tp = padded_keys(T);
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
    std::vector<float> p(static_cast<size_t>(Tp * max_rows)), dp(p.size());
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
