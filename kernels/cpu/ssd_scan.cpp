#include "kernels/cpu/ssd_scan.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"  // worth_threads
#include "kernels/cpu/vector_math.hpp"

namespace mixq::cpu {

namespace {

// A chunk's decays for one head (n <= ssd_chunk steps). The cumulative sums are in double, so a
// difference s_i - s_j of two large sums keeps its digits; every exponent is <= 0 (A < 0, dt >= 0).
struct chunk_decay {
  double s[ssd_chunk];  // s_i = sum of dt·A over the chunk's steps 0..i
  float es[ssd_chunk];  // e^{s_i}: from the incoming state to step i
  float w[ssd_chunk];   // e^{s_last - s_i}: from step i to the chunk's end
  float e_last;         // e^{s_last}
};

MIXQ_ALWAYS_INLINE void chunk_decays(chunk_decay& d, const float* dt, int64_t dt_stride, float A, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) d.s[i] = acc += double(dt[i * dt_stride]) * double(A);
  const double last = acc;
  for (int64_t i = 0; i < n; ++i) {
    d.es[i] = fast_exp(float(d.s[i]));
    d.w[i] = fast_exp(float(last - d.s[i]));
  }
  d.e_last = fast_exp(float(last));  // = es[n - 1]
}

// Lm[i, j] = e^{s_i - s_j} for j <= i, M = G ∘ Lm; both [n, n], zero above the diagonal.
MIXQ_ALWAYS_INLINE void decay_mask(float* Lm, float* M, const float* G, const chunk_decay& d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float* Lr = Lm + i * n;
    float* Mr = M + i * n;
    const float* Gr = G + i * n;
    const double si = d.s[i];
    for (int64_t j = 0; j <= i; ++j) {
      Lr[j] = fast_exp(float(si - d.s[j]));
      Mr[j] = Gr[j] * Lr[j];
    }
    for (int64_t j = i + 1; j < n; ++j) Lr[j] = Mr[j] = 0.0f;
  }
}

// X[i, :] = dt_i · x[i, :] for the chunk's n rows of one head ([n, P], packed).
MIXQ_ALWAYS_INLINE void scaled_inputs(float* X, const float* x, int64_t stride, const float* dt, int64_t dt_stride,
                                      int64_t n, int64_t P) {
  for (int64_t i = 0; i < n; ++i) {
    const float dti = dt[i * dt_stride];
    for (int64_t p = 0; p < P; ++p) X[i * P + p] = dti * x[i * stride + p];
  }
}

// S = e^{s_last} S + (diag(w) X)^T B: the state at the chunk's end from the one entering it. X is
// scaled in place.
MIXQ_ALWAYS_INLINE void pass_state(float* S, float* X, const float* Bc, int64_t stride, const chunk_decay& d,
                                   int64_t n, int64_t P, int64_t N, bool zero_in) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < P; ++p) X[i * P + p] *= d.w[i];
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(P), int(N), int(n), 1.0f, X, int(P), Bc, int(stride),
              zero_in ? 0.0f : d.e_last, S, int(N));
}

struct forward_scratch {
  std::vector<float> S, G, Lm, M, X, Cs;
  forward_scratch(int64_t R, int64_t P, int64_t N)
      : S(size_t(R * P * N)), G(size_t(ssd_chunk * ssd_chunk)), Lm(G.size()), M(G.size()),
        X(size_t(ssd_chunk * P)), Cs(size_t(ssd_chunk * N)) {}
};

// The heads of group g chunk by chunk (they share B and C, so C B^T is formed once per chunk, and
// their backward adds into the same dB / dC rows: one thread per group keeps that race-free and the
// order fixed).
MIXQ_CLONES void group_forward(int64_t g, float* y, const float* x, const float* B, const float* C, int64_t stride,
                               const float* dt, const float* A, const float* D, int64_t T, int64_t Hm, int64_t P,
                               int64_t R, int64_t N, forward_scratch& w) {
  const int64_t ys = Hm * P, PN = P * N;
  for (int64_t t0 = 0; t0 < T; t0 += ssd_chunk) {
    const int64_t n = std::min(ssd_chunk, T - t0);
    const float* Bc = B + t0 * stride + g * N;
    const float* Cc = C + t0 * stride + g * N;
    float* G = w.G.data();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(n), int(N), 1.0f, Cc, int(stride), Bc,
                int(stride), 0.0f, G, int(n));  // G = C B^T
    for (int64_t h = g * R; h < (g + 1) * R; ++h) {
      float* S = w.S.data() + (h - g * R) * PN;  // the state entering the chunk
      const float* xc = x + t0 * stride + h * P;
      const float* dtc = dt + t0 * Hm + h;
      float* yc = y + t0 * ys + h * P;
      chunk_decay d;
      chunk_decays(d, dtc, Hm, A[h], n);
      decay_mask(w.Lm.data(), w.M.data(), G, d, n);
      scaled_inputs(w.X.data(), xc, stride, dtc, Hm, n, P);
      // within the chunk: y = (C B^T ∘ Lm) (dt x)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(P), int(n), 1.0f, w.M.data(), int(n),
                  w.X.data(), int(P), 0.0f, yc, int(ys));
      if (t0 > 0) {  // from the incoming state: y += diag(e^s) C S^T
        for (int64_t i = 0; i < n; ++i)
          for (int64_t k = 0; k < N; ++k) w.Cs[size_t(i * N + k)] = d.es[i] * Cc[i * stride + k];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(P), int(N), 1.0f, w.Cs.data(), int(N), S,
                    int(N), 1.0f, yc, int(ys));
      }
      const float Dh = D[h];
      for (int64_t i = 0; i < n; ++i)
        for (int64_t p = 0; p < P; ++p) yc[i * ys + p] += Dh * xc[i * stride + p];
      if (t0 + n < T) pass_state(S, w.X.data(), Bc, stride, d, n, P, N, t0 == 0);
    }
  }
}

struct backward_scratch {
  std::vector<float> S, dS, G, dG, Lm, M, dM, X, dX, E, Cs;
  backward_scratch(int64_t T, int64_t R, int64_t P, int64_t N)
      : S(size_t((T + ssd_chunk - 1) / ssd_chunk * R * P * N)), dS(size_t(R * P * N)),
        G(size_t(ssd_chunk * ssd_chunk)), dG(G.size()), Lm(G.size()), M(G.size()), dM(G.size()),
        X(size_t(ssd_chunk * P)), dX(X.size()), E(X.size()), Cs(size_t(ssd_chunk * N)) {}
};

// The gradient of one chunk of one head, with dS (the gradient of the chunk's outgoing state) on
// entry and that of its incoming state on return. Adds into dx, ddt, and into dB / dC the terms that
// are not through C B^T; adds dloss/d(C B^T) into dG. S is the incoming state (unused for the first
// chunk), G = C B^T.
MIXQ_ALWAYS_INLINE void head_chunk_backward(int64_t h, int64_t t0, int64_t n, bool first, bool last, float* dx,
                                            float* dB, float* dC, float* ddt, const float* dy, const float* x,
                                            const float* B, const float* C, int64_t stride, const float* dt,
                                            const float* A, const float* D, int64_t Hm, int64_t P, int64_t g,
                                            int64_t N, const float* S, float* dS, backward_scratch& w) {
  const int64_t ys = Hm * P;
  const float* xc = x + t0 * stride + h * P;
  const float* Bc = B + t0 * stride + g * N;
  const float* Cc = C + t0 * stride + g * N;
  const float* dtc = dt + t0 * Hm + h;
  const float* dyc = dy + t0 * ys + h * P;
  float* X = w.X.data();
  float* dX = w.dX.data();
  float* E = w.E.data();
  float* Lm = w.Lm.data();
  float* M = w.M.data();
  float* dM = w.dM.data();
  chunk_decay d;
  chunk_decays(d, dtc, Hm, A[h], n);
  decay_mask(Lm, M, w.G.data(), d, n);
  scaled_inputs(X, xc, stride, dtc, Hm, n, P);
  double da[ssd_chunk];  // dloss/d(dt_i · A)

  // within the chunk, y = M X with M = G ∘ Lm: dM = dy X^T, dX = M^T dy; dG += dM ∘ Lm. Lm[i, j] =
  // e^{a_{j+1} + ... + a_i}, so Q = dM ∘ M reaches a_k through every (i, j) with j < k <= i: rows
  // from the bottom, U[j] = sum of Q[i, j] over the rows i >= k so far, da_k = sum of U[j < k] (no
  // cancellation between pairs on one side of k).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(n), int(P), 1.0f, dyc, int(ys), X, int(P), 0.0f,
              dM, int(n));
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(P), int(n), 1.0f, M, int(n), dyc, int(ys), 0.0f,
              dX, int(P));
  {
    double U[ssd_chunk] = {};
    float* dG = w.dG.data();
    const float* G = w.G.data();
    for (int64_t k = n - 1; k >= 0; --k) {
      float* dMr = dM + k * n;
      const float* Lr = Lm + k * n;
      const float* Gr = G + k * n;
      float* dGr = dG + k * n;
      for (int64_t j = 0; j <= k; ++j) {
        const float dl = dMr[j] * Lr[j];
        dGr[j] += dl;
        U[j] += double(dl * Gr[j]);
      }
      double acc = 0.0;
      for (int64_t j = 0; j < k; ++j) acc += U[j];
      da[k] = acc;
    }
  }

  if (!last) {
    // S_out = e^{s_last} S + sum_j w_j X_j B_j^T: E = B dS^T gives dX_j += w_j E_j and dloss/dw_j =
    // X_j · E_j; w_j = e^{a_{j+1} + ... + a_last}
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(P), int(N), 1.0f, Bc, int(stride), dS, int(N),
                0.0f, E, int(P));
    double prefix = first ? 0.0 : double(d.e_last) * double(lane_dot(dS, S, P * N));  // through e^{s_last}
    for (int64_t j = 0; j < n; ++j) {
      da[j] += prefix;
      const float wj = d.w[j];
      const float dw = lane_dot(X + j * P, E + j * P, P);
      prefix += double(dw) * double(wj);
      for (int64_t p = 0; p < P; ++p) {
        dX[j * P + p] += wj * E[j * P + p];
        X[j * P + p] *= wj;  // now diag(w) X
      }
    }
    // dB += diag(w) X dS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(N), int(P), 1.0f, X, int(P), dS, int(N), 1.0f,
                dB + t0 * stride + g * N, int(stride));
  }

  if (!first) {
    // y += diag(e^s) C S^T: with Ye = diag(e^s) dy (in E), dC += Ye S, dS_in = e^{s_last} dS + Ye^T C,
    // and dloss/ds_i = (Ye S)_i · C_i, reaching a_k for k <= i
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < P; ++p) E[i * P + p] = d.es[i] * dyc[i * ys + p];
    float* dCi = w.Cs.data();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(N), int(P), 1.0f, E, int(P), S, int(N), 0.0f,
                dCi, int(N));
    double suffix = 0.0;
    for (int64_t i = n - 1; i >= 0; --i) {
      suffix += double(lane_dot(dCi + i * N, Cc + i * stride, N));
      da[i] += suffix;
      float* dCr = dC + (t0 + i) * stride + g * N;
      for (int64_t k = 0; k < N; ++k) dCr[k] += dCi[i * N + k];
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(P), int(N), int(n), 1.0f, E, int(P), Cc, int(stride),
                d.e_last, dS, int(N));
  }

  // x enters through X = dt x and through D x
  const float Dh = D[h];
  const double Ah = double(A[h]);
  for (int64_t i = 0; i < n; ++i) {
    float* dxr = dx + (t0 + i) * stride + h * P;
    const float* xr = xc + i * stride;
    const float* dyr = dyc + i * ys;
    const float dti = dtc[i * Hm];
    const float* dXr = dX + i * P;
    for (int64_t p = 0; p < P; ++p) dxr[p] += dti * dXr[p] + Dh * dyr[p];
    ddt[(t0 + i) * Hm + h] += float(double(lane_dot(xr, dXr, P)) + Ah * da[i]);
  }
}

MIXQ_CLONES void group_backward(int64_t g, float* dx, float* dB, float* dC, float* ddt, const float* dy,
                                const float* x, const float* B, const float* C, int64_t stride, const float* dt,
                                const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t R,
                                int64_t N, backward_scratch& w) {
  const int64_t PN = P * N, chunks = (T + ssd_chunk - 1) / ssd_chunk;
  // first: the states entering each chunk, with the forward's arithmetic ([chunk, head, P, N])
  for (int64_t c = 0; c + 1 < chunks; ++c) {
    const int64_t t0 = c * ssd_chunk, n = ssd_chunk;
    const float* Bc = B + t0 * stride + g * N;
    for (int64_t h = g * R; h < (g + 1) * R; ++h) {
      float* S_next = w.S.data() + ((c + 1) * R + h - g * R) * PN;
      if (c > 0) std::copy_n(S_next - R * PN, PN, S_next);
      chunk_decay d;
      chunk_decays(d, dt + t0 * Hm + h, Hm, A[h], n);
      scaled_inputs(w.X.data(), x + t0 * stride + h * P, stride, dt + t0 * Hm + h, Hm, n, P);
      pass_state(S_next, w.X.data(), Bc, stride, d, n, P, N, c == 0);
    }
  }
  // then back through the chunks, dS carrying each head's dloss/d(state) from chunk to chunk
  std::fill(w.dS.begin(), w.dS.end(), 0.0f);
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * ssd_chunk, n = std::min(ssd_chunk, T - t0);
    const float* Bc = B + t0 * stride + g * N;
    const float* Cc = C + t0 * stride + g * N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(n), int(N), 1.0f, Cc, int(stride), Bc,
                int(stride), 0.0f, w.G.data(), int(n));
    std::fill_n(w.dG.data(), n * n, 0.0f);
    for (int64_t h = g * R; h < (g + 1) * R; ++h)
      head_chunk_backward(h, t0, n, c == 0, c == chunks - 1, dx, dB, dC, ddt, dy, x, B, C, stride, dt, A, D, Hm, P,
                          g, N, w.S.data() + (c * R + h - g * R) * PN, w.dS.data() + (h - g * R) * PN, w);
    // G = C B^T, summed over the group's heads: dC += dG B, dB += dG^T C
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(N), int(n), 1.0f, w.dG.data(), int(n), Bc,
                int(stride), 1.0f, dC + t0 * stride + g * N, int(stride));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(N), int(n), 1.0f, w.dG.data(), int(n), Cc,
                int(stride), 1.0f, dB + t0 * stride + g * N, int(stride));
  }
}

}  // namespace

void ssd_scan_forward(float* y, const float* x, const float* B, const float* C, int64_t xbc_stride, const float* dt,
                      const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t G, int64_t N) {
  if (T <= 0) return;
  const int64_t R = Hm / G;
#pragma omp parallel if (G > 1 && worth_threads(T * Hm * P * N))
  {
    forward_scratch w(R, P, N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g) group_forward(g, y, x, B, C, xbc_stride, dt, A, D, T, Hm, P, R, N, w);
  }
}

void ssd_scan_backward(float* dx, float* dB, float* dC, float* ddt, const float* dy, const float* x, const float* B,
                       const float* C, int64_t xbc_stride, const float* dt, const float* A, const float* D, int64_t T,
                       int64_t Hm, int64_t P, int64_t G, int64_t N) {
  if (T <= 0) return;
  const int64_t R = Hm / G;
  // each thread keeps its group's chunk boundary states: no more threads than groups
#pragma omp parallel if (G > 1 && worth_threads(T * Hm * P * N)) num_threads(int(std::min<int64_t>(G, omp_get_max_threads())))
  {
    backward_scratch w(T, R, P, N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g)
      group_backward(g, dx, dB, dC, ddt, dy, x, B, C, xbc_stride, dt, A, D, T, Hm, P, R, N, w);
  }
}

}  // namespace mixq::cpu
