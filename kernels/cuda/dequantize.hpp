// CUDA dequantizers for NVFP4 and FP8 weights: every value exactly (bit for bit) what
// formats/ nvfp4_dequantize / fp8_dequantize return, E4M3 NaN scales and codes included.
//
// This header needs no CUDA headers (see quantize.hpp).
#pragma once

#include <cstdint>
#include <span>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cuda/quantize.hpp"

namespace mixq::cuda {

// ---- host API: host weight in, host floats out (rows·cols), like the CPU functions ----------------
// A size mismatch (output, packed or scale bytes) is a format_error naming the sizes.
void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out);
void fp8_dequantize(const fp8_weight& q, std::span<float> out);

// ---- device API: device pointers in and out, queued on `stream` (no synchronization) -------------
// packed: n/2 bytes, block_scales: n/16 E4M3 bytes, out: n floats (n a multiple of 16).
void nvfp4_dequantize_device(const uint8_t* packed, const uint8_t* block_scales, float global_scale, int64_t n,
                             float* out, stream_t stream = nullptr);
// codes: rows·cols E4M3 bytes; scales: 1 float (per_channel false) or rows floats; out: rows·cols floats.
void fp8_dequantize_device(const uint8_t* codes, const float* scales, bool per_channel, int64_t rows, int64_t cols,
                           float* out, stream_t stream = nullptr);

}  // namespace mixq::cuda
