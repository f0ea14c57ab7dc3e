// The Mamba-2 SSD recurrence, fp32, forward and backward: per step t and head h (group g = h / R,
// R = Hm / G heads per group), zero initial state
//   S[h] = exp(dt[t,h] · A[h]) · S[h] + dt[t,h] · x[t,h,:] ⊗ B[t,g,:]      S[h] is [P, N]
//   y[t,h,:] = S[h] · C[t,g,:] + D[h] · x[t,h,:]
// computed exactly in its chunked (state-space dual) form: time in chunks of ssd_chunk steps; within
// a chunk, with a_i = dt_i · A and s_i = a_0 + ... + a_i (summed in double),
//   y = (C B^T ∘ L) (dt x) + diag(e^s) C S_in^T + D x,   L[i, j] = e^{s_i - s_j} for j <= i, else 0
//   S_out = e^{s_last} S_in + (diag(e^{s_last - s}) dt x)^T B
// so the bulk is matrix products (OpenBLAS sgemm, single-threaded inside the parallel loop over
// groups) and every exponent is <= 0. The same function as the step-by-step recurrence, to fp32
// rounding. The backward is its exact gradient through both terms and the state passed between
// chunks (dt through the decays included), recomputing the states at chunk boundaries only.
// Parallel over groups, fixed summation orders: results do not depend on the thread count.
// tests/kernels checks both against the sequential recurrence in double; tests/pipeline against
// finite differences and transformers' PyTorch Mamba-2 path.
#pragma once

#include <cstdint>

namespace mixq::cpu {

// Steps per chunk.
constexpr int64_t ssd_chunk = 64;

// x [T, Hm*P], B and C [T, G*N] (all with row stride xbc_stride), dt [T, Hm] (after softplus),
// A, D [Hm]; writes y [T, Hm*P].
void ssd_scan_forward(float* y, const float* x, const float* B, const float* C, int64_t xbc_stride, const float* dt,
                      const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t G, int64_t N);

// dx, dB, dC (row stride xbc_stride, like x, B, C) and ddt [T, Hm] from dy [T, Hm*P]. The states
// entering each chunk are recomputed and kept for one group's heads at a time ([T / ssd_chunk, R,
// P, N]). Accumulates into all four (B and C are shared by the R heads of a group).
void ssd_scan_backward(float* dx, float* dB, float* dC, float* ddt, const float* dy, const float* x, const float* B,
                       const float* C, int64_t xbc_stride, const float* dt, const float* A, const float* D, int64_t T,
                       int64_t Hm, int64_t P, int64_t G, int64_t N);

}  // namespace mixq::cpu
