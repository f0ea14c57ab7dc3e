// CUDA NVFP4 / FP8 dequantizers (see dequantize.hpp): code value times its scale, one rounding
// (__fmul_rn), as the references compute it.
#include "kernels/cuda/dequantize.hpp"

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/runtime.cuh"

namespace mixq::cuda {
namespace {

using detail::aligned;
using detail::check;
using detail::check_launch;
using detail::device_buffer;
using detail::grid_for;
using detail::owned_stream;

// kNvfp4Values[nib] from the bits: E2M1 magnitude 0, 0.5 or 2^(e-1)·(1 + m/2); nibble 0x8 reads +0.
__device__ __forceinline__ float nvfp4_value(uint32_t nib) {
  const uint32_t c = nib & 7u;
  const uint32_t mag = c >= 2u ? (((c >> 1) + 126u) << 23) | ((c & 1u) << 22) : (c == 1u ? 0x3f000000u : 0u);
  return __uint_as_float(mag | ((nib & 8u) != 0u && c != 0u ? 0x80000000u : 0u));
}

// Stores 8 floats at out (vec: 16-byte aligned).
__device__ __forceinline__ void store8(float* out, const float (&v)[8], bool vec) {
  if (vec) {
    reinterpret_cast<float4*>(out)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(out)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = v[k];
  }
}

// One thread per half block (8 values: 4 packed bytes).
__global__ void nvfp4_dequantize_kernel(const uint8_t* packed, const uint8_t* block_scales, float global_scale,
                                        int64_t halves, bool vec_in, bool vec_out, float* out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; h < halves; h += stride) {
    const float scale = __fmul_rn(dm::e4m3_decode(block_scales[h / 2]), global_scale);
    const uint8_t* p = packed + h * 4;
    const uint32_t bits = vec_in ? *reinterpret_cast<const uint32_t*>(p)
                                 : uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __fmul_rn(nvfp4_value(bits >> (4 * i)), scale);
    store8(out + h * 8, v, vec_out);
  }
}

// Eight codes per thread; a group of 8 may straddle rows (any cols).
__global__ void fp8_dequantize_kernel(const uint8_t* codes, const float* scales, bool per_channel, int64_t n,
                                      int64_t cols, bool vec_in, bool vec_out, float* out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t groups = n / 8;
  const float tensor_scale = per_channel ? 0.0f : scales[0];
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    uint2 bits;
    if (vec_in) {
      bits = *reinterpret_cast<const uint2*>(codes + g * 8);
    } else {
      bits.x = bits.y = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) bits.x |= uint32_t(codes[g * 8 + k]) << (8 * k), bits.y |= uint32_t(codes[g * 8 + 4 + k]) << (8 * k);
    }
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float scale = per_channel ? scales[(g * 8 + k) / cols] : tensor_scale;
      v[k] = __fmul_rn(dm::e4m3_decode(((k < 4 ? bits.x : bits.y) >> (8 * (k & 3))) & 0xffu), scale);
    }
    store8(out + g * 8, v, vec_out);
  }
  for (int64_t i = groups * 8 + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __fmul_rn(dm::e4m3_decode(codes[i]), per_channel ? scales[i / cols] : tensor_scale);
}

void require_size(size_t have, int64_t need, const char* what, const char* of) {
  if (int64_t(have) != need)
    throw format_error(std::string("mixq::cuda::") + what + ": " + of + " holds " + std::to_string(have) + ", need " +
                       std::to_string(need));
}

}  // namespace

void nvfp4_dequantize_device(const uint8_t* packed, const uint8_t* block_scales, float global_scale, int64_t n,
                             float* out, stream_t stream) {
  if (n % kNvfp4Block != 0)
    throw format_error("mixq::cuda::nvfp4_dequantize: " + std::to_string(n) + " values are not whole 16-blocks");
  if (n == 0) return;
  const int64_t halves = n / 8;
  nvfp4_dequantize_kernel<<<grid_for(halves, 256), 256, 0, stream>>>(packed, block_scales, global_scale, halves,
                                                                      aligned(packed, 4), aligned(out, 16), out);
  check_launch("nvfp4_dequantize_kernel");
}

void fp8_dequantize_device(const uint8_t* codes, const float* scales, bool per_channel, int64_t rows, int64_t cols,
                           float* out, stream_t stream) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  fp8_dequantize_kernel<<<grid_for(n / 8 + 1, 256), 256, 0, stream>>>(codes, scales, per_channel, n, cols,
                                                                       aligned(codes, 8), aligned(out, 16), out);
  check_launch("fp8_dequantize_kernel");
}

void nvfp4_dequantize(const nvfp4_weight& q, std::span<float> out) {
  const int64_t n = q.rows * q.cols;
  require_size(out.size(), n, "nvfp4_dequantize", "output (values)");
  require_size(q.packed.size(), n / 2, "nvfp4_dequantize", "packed (bytes)");
  require_size(q.block_scales.size(), n / kNvfp4Block, "nvfp4_dequantize", "block_scales (bytes)");
  if (n == 0) return;
  const owned_stream stream;
  const size_t off = testing::misaligned_device_copies() ? 1 : 0;
  device_buffer<uint8_t> packed(off + q.packed.size(), stream.get()), scales(q.block_scales.size(), stream.get());
  device_buffer<float> values(off + out.size(), stream.get());
  check(cudaMemcpyAsync(packed.get() + off, q.packed.data(), q.packed.size(), cudaMemcpyHostToDevice, stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(scales.get(), q.block_scales.data(), q.block_scales.size(), cudaMemcpyHostToDevice,
                        stream.get()),
        "cudaMemcpyAsync");
  nvfp4_dequantize_device(packed.get() + off, scales.get(), q.global_scale, n, values.get() + off, stream.get());
  check(cudaMemcpyAsync(out.data(), values.get() + off, out.size_bytes(), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
}

void fp8_dequantize(const fp8_weight& q, std::span<float> out) {
  const int64_t n = q.rows * q.cols;
  require_size(out.size(), n, "fp8_dequantize", "output (values)");
  require_size(q.codes.size(), n, "fp8_dequantize", "codes (bytes)");
  if (q.scales.size() != 1) require_size(q.scales.size(), q.rows, "fp8_dequantize", "scales (1 or one per row)");
  if (n == 0) return;
  const owned_stream stream;
  const size_t off = testing::misaligned_device_copies() ? 1 : 0;
  device_buffer<uint8_t> codes(off + q.codes.size(), stream.get());
  device_buffer<float> scales(q.scales.size(), stream.get()), values(off + out.size(), stream.get());
  check(cudaMemcpyAsync(codes.get() + off, q.codes.data(), q.codes.size(), cudaMemcpyHostToDevice, stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(scales.get(), q.scales.data(), q.scales.size() * sizeof(float), cudaMemcpyHostToDevice,
                        stream.get()),
        "cudaMemcpyAsync");
  fp8_dequantize_device(codes.get() + off, scales.get(), q.scales.size() != 1, q.rows, q.cols, values.get() + off,
                        stream.get());
  check(cudaMemcpyAsync(out.data(), values.get() + off, out.size_bytes(), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
}

}  // namespace mixq::cuda
