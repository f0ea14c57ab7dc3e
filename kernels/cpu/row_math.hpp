// Vectorized row kernels of the model's forward and backward passes (exponentials, log-sum-exp, SwiGLU), each the
// fast twin of a plain loop that tests/kernels/test_row_math.cpp compares it with.
#pragma once

#include <cstdint>

namespace mixq::cpu {

// e^x elementwise (see fast_exp): out may alias x.
void exp_inplace(float* x, int64_t n);

// log Σ e^x[i] over n >= 1 elements: the max plus the log of a fixed-order double sum of e^(x - max).
double log_sum_exp(const float* x, int64_t n);

// out[i] = e^(x[i] - shift) · scale: softmax probabilities from a known log-sum-exp, scaled. The
// difference is taken in double: a float shift would lose the low bits of the logits.
void exp_shift_scale(float* out, const float* x, int64_t n, double shift, float scale);

// out = silu(gate) · up, elementwise over n; out may alias gate or up.
void swiglu(float* out, const float* gate, const float* up, int64_t n);

// The gradients of swiglu with respect to gate and up, given dL/dout.
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

}  // namespace mixq::cpu
