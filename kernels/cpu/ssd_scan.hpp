// The Mamba-2 SSD recurrence, exact and sequential in time, fp32, forward and backward through
// time: per step t and head h (group g = h / R, R = Hm / G heads per group), zero initial state
//   S[h] = exp(dt[t,h] · A[h]) · S[h] + dt[t,h] · x[t,h,:] ⊗ B[t,g,:]      S[h] is [P, N]
//   y[t,h,:] = S[h] · C[t,g,:] + D[h] · x[t,h,:]
// Vectorized across the state (N) and parallel over groups. tests/pipeline checks both against
// finite differences and transformers' PyTorch Mamba-2 path.
#pragma once

#include <cstdint>

namespace mixq::cpu {

// x [T, Hm*P], B and C [T, G*N] (all with row stride xbc_stride), dt [T, Hm] (after softplus),
// A, D [Hm]; writes y [T, Hm*P].
void ssd_scan_forward(float* y, const float* x, const float* B, const float* C, int64_t xbc_stride, const float* dt,
                      const float* A, const float* D, int64_t T, int64_t Hm, int64_t P, int64_t G, int64_t N);

// dx, dB, dC (row stride xbc_stride, like x, B, C) and ddt [T, Hm] from dy [T, Hm*P]. The forward
// states are recomputed and kept for one head at a time ([T, P, N]). Accumulates into all four (B
// and C are shared by the R heads of a group).
void ssd_scan_backward(float* dx, float* dB, float* dC, float* ddt, const float* dy, const float* x, const float* B,
                       const float* C, int64_t xbc_stride, const float* dt, const float* A, const float* D, int64_t T,
                       int64_t Hm, int64_t P, int64_t G, int64_t N);

}  // namespace mixq::cpu
