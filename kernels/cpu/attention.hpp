// Causal self-attention, forward and backward; the masked upper triangle is never computed. Small
// heads (below 32 channels: stories260K's 8) go one query row at a time against the keys it may
// see, every loop across keys (contiguous after a per-head transpose), so the scores never leave
// cache and no GEMM library's packing costs more than the products themselves. Larger heads go in
// blocks of 64 query rows: the two products per block as sgemm calls, the softmax between them
// vectorized. tests/kernels/test_model_kernels.cpp checks both against a double-precision reference.
#pragma once

#include <cstdint>

namespace mixq::cpu {

// out[T, nh*hd] = softmax(q k^T / sqrt(hd) + causal mask) v, with q [T, nh*hd], k and v [T, nkv*hd];
// query head h reads KV head h / (nh / nkv) (GQA repeat_kv). Softmax in fp32.
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t nh,
                       int64_t nkv, int64_t hd);

// dq [T, nh*hd], dk and dv [T, nkv*hd] (overwritten) from dout [T, nh*hd], given the forward inputs
// q, k (after RoPE) and v. The probabilities are recomputed; dk / dv sum over the query heads that
// share a KV head (GQA), in head order, so the result does not depend on the thread count.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, int64_t T, int64_t nh, int64_t nkv, int64_t hd);

}  // namespace mixq::cpu
