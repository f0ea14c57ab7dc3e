// The Mamba-2 SSD recurrence step by step in time (as kernels/cpu/ssd_scan.hpp defines it), in any
// floating-point type: the reference for the chunked kernel. Inputs in the kernel's layout (x, B, C
// with row stride `stride`, dt [T, Hm], dy [T, Hm*P]); every [P, N] state is kept, so it is for
// test sizes only. The backward walks back in time with dS = dloss/dS_t, adding into its outputs.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace mixq::test {

struct ssd_shape {
  int64_t T, Hm, P, G, N, stride;
};

// y [T, Hm*P]
template <class F>
void ssd_reference_forward(std::vector<F>& y, const float* x, const float* B, const float* C, const float* dt,
                           const float* A, const float* D, const ssd_shape& s) {
  const int64_t R = s.Hm / s.G, P = s.P, N = s.N, st = s.stride;
  y.assign(size_t(s.T * s.Hm * P), F(0));
  std::vector<F> S(static_cast<size_t>(P * N));
  for (int64_t h = 0; h < s.Hm; ++h) {
    const int64_t g = h / R;
    std::fill(S.begin(), S.end(), F(0));
    for (int64_t t = 0; t < s.T; ++t) {
      const F dth = dt[t * s.Hm + h], dA = std::exp(dth * F(A[h]));
      for (int64_t p = 0; p < P; ++p) {
        const F xp = x[t * st + h * P + p];
        F acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          F& Spn = S[size_t(p * N + n)];
          Spn = dA * Spn + dth * xp * F(B[t * st + g * N + n]);  // S = dA S + dt x B^T
          acc += Spn * F(C[t * st + g * N + n]);                 // y = S C + D x
        }
        y[size_t(t * s.Hm * P + h * P + p)] = acc + F(D[h]) * xp;
      }
    }
  }
}

// dx, dB, dC [T, stride] (x's, B's and C's columns), ddt [T, Hm]; adds into them.
template <class F>
void ssd_reference_backward(std::vector<F>& dx, std::vector<F>& dB, std::vector<F>& dC, std::vector<F>& ddt,
                            const float* dy, const float* x, const float* B, const float* C, const float* dt,
                            const float* A, const float* D, const ssd_shape& s) {
  const int64_t R = s.Hm / s.G, P = s.P, N = s.N, PN = P * N, st = s.stride, T = s.T;
  std::vector<F> S(static_cast<size_t>(T * PN)), dS(static_cast<size_t>(PN));
  for (int64_t h = 0; h < s.Hm; ++h) {
    const int64_t g = h / R;
    for (int64_t t = 0; t < T; ++t) {  // the forward states
      const F dth = dt[t * s.Hm + h], dA = std::exp(dth * F(A[h]));
      for (int64_t i = 0; i < PN; ++i) {
        const int64_t p = i / N, n = i % N;
        const F prev = t > 0 ? S[size_t((t - 1) * PN + i)] : F(0);
        S[size_t(t * PN + i)] = dA * prev + dth * F(x[t * st + h * P + p]) * F(B[t * st + g * N + n]);
      }
    }
    std::fill(dS.begin(), dS.end(), F(0));
    for (int64_t t = T - 1; t >= 0; --t) {
      const F dth = dt[t * s.Hm + h], dA = std::exp(dth * F(A[h]));
      F ddA = 0, ddt_in = 0;
      for (int64_t p = 0; p < P; ++p) {
        const F dyp = dy[t * s.Hm * P + h * P + p], xp = x[t * st + h * P + p];
        F dSB = 0;
        for (int64_t n = 0; n < N; ++n) {
          const F Bn = B[t * st + g * N + n], Cn = C[t * st + g * N + n];
          F& d = dS[size_t(p * N + n)];
          d += dyp * Cn;
          dC[size_t(t * st + g * N + n)] += dyp * S[size_t(t * PN + p * N + n)];
          dB[size_t(t * st + g * N + n)] += d * dth * xp;
          dSB += d * Bn;
          if (t > 0) ddA += d * S[size_t((t - 1) * PN + p * N + n)];
        }
        dx[size_t(t * st + h * P + p)] += F(D[h]) * dyp + dth * dSB;
        ddt_in += dSB * xp;
        for (int64_t n = 0; n < N; ++n) dS[size_t(p * N + n)] *= dA;
      }
      ddt[size_t(t * s.Hm + h)] += ddt_in + ddA * F(A[h]) * dA;
    }
  }
}

}  // namespace mixq::test
