#include "kernels/cpu/ssd_scan.hpp"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"  // worth_threads
#include "kernels/cpu/vector_math.hpp"

namespace mixq::cpu {

namespace {

// The heads of group g, one after another (they share B and C, so their backward adds into the
// same dB / dC rows: one thread per group keeps that race-free and the order fixed).
MIXQ_CLONES void group_forward(int64_t g, float* y, const float* x, const float* B, const float* C, int64_t stride,
                               const float* dt, const float* A, const float* D, int64_t T, int64_t Hm, int64_t P,
                               int64_t R, int64_t N, float* S) {
  for (int64_t h = g * R; h < (g + 1) * R; ++h) {
    std::fill_n(S, P * N, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * stride + h * P;  // [P]
      const float* Bt = B + t * stride + g * N;  // [N]
      const float* Ct = C + t * stride + g * N;  // [N]
      const float dth = dt[t * Hm + h];
      const float dA = fast_exp(dth * A[h]);
      float* yt = y + t * Hm * P + h * P;        // [P]
      for (int64_t p = 0; p < P; ++p) {
        float* Sp = S + p * N;
        const float dx = dth * xt[p];
        for (int64_t n = 0; n < N; ++n) Sp[n] = dA * Sp[n] + dx * Bt[n];  // S = dA S + dt x B^T
        yt[p] = lane_dot(Sp, Ct, N) + D[h] * xt[p];                      // y = S C + D x
      }
    }
  }
}

MIXQ_CLONES void group_backward(int64_t g, float* dx, float* dB, float* dC, float* ddt, const float* dy,
                                const float* x, const float* B, const float* C, int64_t stride, const float* dt,
                                const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t R,
                                int64_t N, float* S, float* dS) {
  const int64_t PN = P * N;
  for (int64_t h = g * R; h < (g + 1) * R; ++h) {
    // first: the forward states, with the forward's arithmetic
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * stride + h * P;
      const float* Bt = B + t * stride + g * N;
      const float dth = dt[t * Hm + h];
      const float dA = fast_exp(dth * A[h]);
      for (int64_t p = 0; p < P; ++p) {
        float* Sp = S + t * PN + p * N;
        const float dx_ = dth * xt[p];
        if (t == 0)  // from the zero initial state
          for (int64_t n = 0; n < N; ++n) Sp[n] = dx_ * Bt[n];
        else
          for (int64_t n = 0; n < N; ++n) Sp[n] = dA * Sp[n - PN] + dx_ * Bt[n];
      }
    }
    // now walk back in time; dS carries dloss/dS_t back through S_t = dA_t S_{t-1} + ...
    std::fill_n(dS, PN, 0.0f);
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* xt = x + t * stride + h * P;
      const float* Bt = B + t * stride + g * N;
      const float* Ct = C + t * stride + g * N;
      const float* dyt = dy + t * Hm * P + h * P;
      float* dxt = dx + t * stride + h * P;
      float* dBt = dB + t * stride + g * N;
      float* dCt = dC + t * stride + g * N;
      const float dth = dt[t * Hm + h];
      const float dA = fast_exp(dth * A[h]);
      double ddA = 0.0, ddt_in = 0.0;  // dloss/d(dA), and the dt of the input term dt x B^T
      for (int64_t p = 0; p < P; ++p) {
        const float* Sp = S + t * PN + p * N;
        float* dSp = dS + p * N;
        const float dyp = dyt[p];
        for (int64_t n = 0; n < N; ++n) {
          dSp[n] += dyp * Ct[n];  // y = S C: the output's share, plus what step t+1 carried back
          dCt[n] += dyp * Sp[n];
        }
        const float dSB = lane_dot(dSp, Bt, N);
        const float bx = dth * xt[p];
        for (int64_t n = 0; n < N; ++n) dBt[n] += dSp[n] * bx;
        if (t > 0) ddA += double(lane_dot(dSp, Sp - PN, N));
        dxt[p] += D[h] * dyp + dth * dSB;
        ddt_in += double(dSB) * double(xt[p]);
        for (int64_t n = 0; n < N; ++n) dSp[n] *= dA;  // to S_{t-1}
      }
      ddt[t * Hm + h] += float(ddt_in + ddA * double(A[h]) * double(dA));  // dA = exp(dt A)
    }
  }
}

}  // namespace

void ssd_scan_forward(float* y, const float* x, const float* B, const float* C, int64_t xbc_stride, const float* dt,
                      const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t G, int64_t N) {
  const int64_t R = Hm / G;
#pragma omp parallel if (G > 1 && worth_threads(T * Hm * P * N))
  {
    std::vector<float> S(static_cast<size_t>(P * N));  // one head's state [P, N]
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g) group_forward(g, y, x, B, C, xbc_stride, dt, A, D, T, Hm, P, R, N, S.data());
  }
}

void ssd_scan_backward(float* dx, float* dB, float* dC, float* ddt, const float* dy, const float* x, const float* B,
                       const float* C, int64_t xbc_stride, const float* dt, const float* A, const float* D, int64_t T,
                       int64_t Hm, int64_t P, int64_t G, int64_t N) {
  const int64_t R = Hm / G;
  // each thread keeps one head's states over time [T, P, N]: no more threads than groups
#pragma omp parallel if (G > 1 && worth_threads(T * Hm * P * N)) num_threads(int(std::min<int64_t>(G, omp_get_max_threads())))
  {
    std::vector<float> S(static_cast<size_t>(T * P * N)), dS(static_cast<size_t>(P * N));
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g)
      group_backward(g, dx, dB, dC, ddt, dy, x, B, C, xbc_stride, dt, A, D, T, Hm, P, R, N, S.data(), dS.data());
  }
}

}  // namespace mixq::cpu
