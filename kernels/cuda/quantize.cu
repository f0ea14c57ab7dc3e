// CUDA NVFP4 / FP8 weight quantizers, bit for bit the scalar reference in formats/ (see quantize.hpp).
//
// How the kernels stay exact:
//  * built with --fmad=false -ftz=false -prec-div=true (kernels/cuda/CMakeLists.txt), and every
//    float / double operation whose rounding matters is an explicit __f*_rn / __d*_rn (device_math.cuh
//    and below), in the order the reference evaluates it;
//  * E2M1 rounding is the host's own code (formats/minifloat.hpp, MIXQ_HD); E4M3 encoding is the
//    host's branch-free bit arithmetic (formats/minifloat.cpp) written out again in device_math.cuh,
//    and E4M3 decoding builds the exact float from the bits (tests compare both with the host's);
//  * float sums keep the reference's fixed tree (16-block error) and double sums its order (FP8 row
//    errors in 8 column lanes, then lanes in order; tensor errors by row); argmins scan candidates in
//    the reference's order with its strict "<", so ties go to the first (smallest) candidate;
//  * the global amax is a max, which is exact in any order; the one order-sensitive tensor-wide sum
//    (mse_four_over_six) is settled as described at narrow_normalizer_wins / dm::settle_by_bounds.
#include "kernels/cuda/quantize.hpp"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "formats/format_traits.hpp"
#include "formats/minifloat.hpp"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/runtime.cuh"

namespace mixq::cuda {
namespace {

using cpu::source_dtype;
using cpu::source_matrix;

std::atomic<bool> g_force_ordered_sum{false};
std::atomic<bool> g_misalign{false};

// ---- host-side plumbing -----------------------------------------------------------------------

using detail::aligned;
using detail::check;
using detail::check_launch;
using detail::device_buffer;
using detail::grid_for;
using detail::owned_stream;

size_t element_bytes(source_dtype d) { return d == source_dtype::f32 ? 4 : 2; }

template <source_dtype D>
using dtype_tag = std::integral_constant<source_dtype, D>;

// Calls f(dtype_tag<d>{}) for the runtime dtype d.
template <class F>
void dispatch(source_dtype d, F&& f) {
  switch (d) {
    case source_dtype::f32: f(dtype_tag<source_dtype::f32>{}); return;
    case source_dtype::bf16: f(dtype_tag<source_dtype::bf16>{}); return;
    case source_dtype::f16: f(dtype_tag<source_dtype::f16>{}); return;
  }
  throw std::invalid_argument("mixq::cuda: unknown source dtype");
}

// ---- loads: BF16 / F16 / F32 widened to fp32 exactly ---------------------------------------------

template <source_dtype D>
__device__ __forceinline__ float half_bits_to_float(uint32_t h) {
  if constexpr (D == source_dtype::bf16) return __uint_as_float(h << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

template <source_dtype D>
__device__ __forceinline__ float widen(const void* p, int64_t i) {
  if constexpr (D == source_dtype::f32) return static_cast<const float*>(p)[i];
  else return half_bits_to_float<D>(static_cast<const uint16_t*>(p)[i]);
}

template <source_dtype D>
__device__ __forceinline__ float widen_clean(const void* p, int64_t i, bool zero) {
  const float v = widen<D>(p, i);
  return zero && !dm::is_finite(v) ? 0.0f : v;
}

// Eight values from flat index i (a multiple of 8); vec: p is 16-byte aligned.
template <source_dtype D>
__device__ __forceinline__ void load8(const void* p, int64_t i, bool vec, float* x) {
  if (vec) {
    if constexpr (D == source_dtype::f32) {
      const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
      const float4 a = q[0], b = q[1];
      x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    } else {
      const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p) + i);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        x[2 * k] = half_bits_to_float<D>(w[k] & 0xffffu);
        x[2 * k + 1] = half_bits_to_float<D>(w[k] >> 16);
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = widen<D>(p, i + k);
  }
}

// ---- scan: max |x| over finite values (as magnitude bits) and the non-finite count / first index ----

struct scan_result {
  unsigned int amax_bits;
  unsigned int unused;
  unsigned long long nonfinite;
  unsigned long long first;
};

template <source_dtype D>
__global__ void scan_kernel(const void* src, int64_t n, bool vec, scan_result* out) {
  unsigned int amax = 0;
  unsigned long long bad = 0, first = ULLONG_MAX;
  auto visit = [&](float v, int64_t i) {
    const unsigned int u = __float_as_uint(v) & 0x7fffffffu;
    if (u >= 0x7f800000u) {
      ++bad;
      first = min(first, static_cast<unsigned long long>(i));
    } else {
      amax = max(amax, u);
    }
  };
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t groups = n / 8;
  for (int64_t g = start; g < groups; g += stride) {
    float x[8];
    load8<D>(src, g * 8, vec, x);
#pragma unroll
    for (int k = 0; k < 8; ++k) visit(x[k], g * 8 + k);
  }
  for (int64_t i = groups * 8 + start; i < n; i += stride) visit(widen<D>(src, i), i);
  for (int off = 16; off > 0; off /= 2) amax = max(amax, __shfl_down_sync(0xffffffffu, amax, off));
  if ((threadIdx.x & 31) == 0 && amax > 0) atomicMax(&out->amax_bits, amax);
  if (bad > 0) {
    atomicAdd(&out->nonfinite, bad);
    atomicMin(&out->first, first);
  }
}

// The largest magnitude key (the value's bits without the sign: ordered like |x|, past every finite
// value for inf / NaN) of the source: two BF16 / F16 keys per 32-bit word (__vmaxu2), 32 bytes per
// thread per step. A tensor without non-finite values needs nothing more from the scan.
template <source_dtype D>
__global__ void max_key_kernel(const void* src, int64_t n, bool vec, unsigned int* out) {
  constexpr bool kWide = D == source_dtype::f32;
  constexpr unsigned int kMask = kWide ? 0x7fffffffu : 0x7fff7fffu;
  unsigned int m = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  constexpr int64_t kPerVector = kWide ? 4 : 8;  // elements in 16 bytes
  const int64_t vectors = vec ? n / kPerVector : 0;
  const uint4* v = static_cast<const uint4*>(src);
  auto fold = [&](const uint4 q) {
    if constexpr (kWide) {
      m = max(m, max(max(q.x & kMask, q.y & kMask), max(q.z & kMask, q.w & kMask)));
    } else {
      m = __vmaxu2(m, __vmaxu2(__vmaxu2(q.x & kMask, q.y & kMask), __vmaxu2(q.z & kMask, q.w & kMask)));
    }
  };
  int64_t i = start;
  for (; i + stride < vectors; i += 2 * stride) {
    const uint4 a = v[i], b = v[i + stride];
    fold(a);
    fold(b);
  }
  if (i < vectors) fold(v[i]);
  if constexpr (!kWide) m = max(m & 0xffffu, m >> 16);
  for (int64_t j = vectors * kPerVector + start; j < n; j += stride) {
    if constexpr (kWide) m = max(m, static_cast<const unsigned int*>(src)[j] & kMask);
    else m = max(m, static_cast<unsigned int>(static_cast<const uint16_t*>(src)[j] & 0x7fffu));
  }
  m = __reduce_max_sync(0xffffffffu, m);
  if ((threadIdx.x & 31) == 0 && m > 0) atomicMax(out, m);
}

// The key past every finite value's: inf's bits without the sign.
unsigned int infinity_key(source_dtype d) {
  return d == source_dtype::f32 ? 0x7f800000u : d == source_dtype::bf16 ? 0x7f80u : 0x7c00u;
}

// The magnitude whose key is `key` (< infinity_key), as fp32 bits.
unsigned int magnitude_bits_of_key(unsigned int key, const source_matrix& w) {
  if (w.dtype == source_dtype::f32) return key;
  const uint16_t k = static_cast<uint16_t>(key);
  float amax = 0.0f;
  cpu::load_f32(source_matrix{&k, w.dtype, 1, 1, w.name}, 0, 1, &amax, false);
  return std::bit_cast<unsigned int>(amax);
}

void reset_scan_result(scan_result* d, cudaStream_t stream) {
  static constexpr scan_result kInit{0u, 0u, 0ull, ULLONG_MAX};
  check(cudaMemcpyAsync(d, &kInit, sizeof kInit, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
}

// Reads a key written on `stream` into d->amax_bits (d initialized by the caller) and waits: all finite,
// the scan result is that key's magnitude; otherwise the tensor is scanned again for the count and
// first index of its non-finite values (and its largest finite magnitude).
scan_result finish_scan(const source_matrix& w, device_buffer<scan_result>& d, cudaStream_t stream) {
  scan_result r{};
  check(cudaMemcpyAsync(&r, d.get(), sizeof r, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (r.amax_bits < infinity_key(w.dtype)) {
    r.amax_bits = magnitude_bits_of_key(r.amax_bits, w);
    return r;
  }
  reset_scan_result(d.get(), stream);
  const bool vec = aligned(w.data, 16);
  dispatch(w.dtype, [&](auto tag) {
    scan_kernel<decltype(tag)::value><<<grid_for(w.size() / 8, 256), 256, 0, stream>>>(w.data, w.size(), vec, d.get());
  });
  check_launch("scan_kernel");
  check(cudaMemcpyAsync(&r, d.get(), sizeof r, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return r;
}

// Runs the scan on `stream` and waits for it: the largest key first (finish_scan).
scan_result scan_source_device(const source_matrix& w, cudaStream_t stream) {
  device_buffer<scan_result> d(1, stream);
  reset_scan_result(d.get(), stream);
  const bool vec = aligned(w.data, 16);
  dispatch(w.dtype, [&](auto tag) {
    max_key_kernel<decltype(tag)::value><<<grid_for(w.size() / 16, 256), 256, 0, stream>>>(w.data, w.size(), vec,
                                                                                           &d.get()->amax_bits);
  });
  check_launch("max_key_kernel");
  return finish_scan(w, d, stream);
}

template <source_dtype D>
__device__ __forceinline__ float magnitude_of_key(unsigned int key) {
  if constexpr (D == source_dtype::f32) return __uint_as_float(key);
  else return half_bits_to_float<D>(key);
}

// Each row's largest magnitude key (one block per row), written as that magnitude to row_amax, and
// the tensor's largest key to *tensor_key. vec: every row starts 16-byte aligned.
template <source_dtype D>
__global__ void row_max_key_kernel(const void* src, int64_t rows, int64_t cols, bool vec, float* row_amax,
                                   unsigned int* tensor_key) {
  constexpr bool kWide = D == source_dtype::f32;
  constexpr unsigned int kMask = kWide ? 0x7fffffffu : 0x7fff7fffu;
  constexpr int64_t kPerVector = kWide ? 4 : 8;
  __shared__ unsigned int warp_max[32];
  unsigned int block_max = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    unsigned int m = 0;
    int64_t done = 0;
    if (vec) {
      const uint4* v = reinterpret_cast<const uint4*>(static_cast<const char*>(src) + r * cols * (kWide ? 4 : 2));
      const int64_t vectors = cols / kPerVector;
#pragma unroll 4
      for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
        const uint4 q = v[i];
        if constexpr (kWide) m = max(m, max(max(q.x & kMask, q.y & kMask), max(q.z & kMask, q.w & kMask)));
        else m = __vmaxu2(m, __vmaxu2(__vmaxu2(q.x & kMask, q.y & kMask), __vmaxu2(q.z & kMask, q.w & kMask)));
      }
      done = vectors * kPerVector;
    }
    if constexpr (!kWide) m = max(m & 0xffffu, m >> 16);
    for (int64_t c = done + threadIdx.x; c < cols; c += blockDim.x) {
      if constexpr (kWide) m = max(m, static_cast<const unsigned int*>(src)[r * cols + c] & kMask);
      else m = max(m, static_cast<unsigned int>(static_cast<const uint16_t*>(src)[r * cols + c] & 0x7fffu));
    }
    m = __reduce_max_sync(0xffffffffu, m);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (unsigned w = 1; w < blockDim.x / 32; ++w) m = max(m, warp_max[w]);
      row_amax[r] = magnitude_of_key<D>(m);
      block_max = max(block_max, m);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0 && block_max > 0) atomicMax(tensor_key, block_max);
}

// The scan for a per-row quantizer: row_amax (valid when the result counts no non-finite value) and
// the tensor's scan from the same pass (finish_scan).
scan_result scan_rows_device(const source_matrix& w, float* row_amax, cudaStream_t stream) {
  device_buffer<scan_result> d(1, stream);
  reset_scan_result(d.get(), stream);
  const bool vec = aligned(w.data, 16) && (w.cols * int64_t(element_bytes(w.dtype))) % 16 == 0;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(w.rows, 1 << 20));
  dispatch(w.dtype, [&](auto tag) {
    row_max_key_kernel<decltype(tag)::value><<<grid, 256, 0, stream>>>(w.data, w.rows, w.cols, vec, row_amax,
                                                                       &d.get()->amax_bits);
  });
  check_launch("row_max_key_kernel");
  return finish_scan(w, d, stream);
}

// cpu::apply_nonfinite_policy for a device-resident tensor: the same message, the same value.
bool apply_nonfinite_policy_device(const source_matrix& w, const scan_result& scan, nonfinite_policy policy,
                                   cudaStream_t stream) {
  if (scan.nonfinite == 0) return false;
  if (policy == nonfinite_policy::reject) {
    const int64_t first = static_cast<int64_t>(scan.first);
    alignas(4) unsigned char raw[4] = {};
    const size_t bytes = element_bytes(w.dtype);
    check(cudaMemcpyAsync(raw, static_cast<const unsigned char*>(w.data) + size_t(first) * bytes, bytes,
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const source_matrix one{raw, w.dtype, 1, 1, w.name};
    float value = 0.0f;
    cpu::load_f32(one, 0, 1, &value, false);
    throw format_error(nonfinite_message(w.shape_view(), first, value, static_cast<int64_t>(scan.nonfinite)));
  }
  return true;
}

void require_shape(const source_matrix& w, format_id format) {
  if (auto why = format_cannot_hold(format, w.rows, w.cols))
    throw format_error("tensor '" + std::string(w.name) + "': " + *why);
}

// ---- NVFP4 -------------------------------------------------------------------------------------

enum class block_mode : int { max, multipliers, sweep };

struct nvfp4_params {
  const void* src;
  int64_t blocks;
  bool vec_in;
  bool zero;
  float global_amax;
  float normalizer;
  float ws2;  // nvfp4_global_scale(global_amax, normalizer), from the host
  const float* multipliers;
  int n_multipliers;
  uint8_t* packed;
  uint8_t* scales;
  float* errors;  // per-block squared error, or nullptr
};

// One thread per 16-block.
template <source_dtype D, block_mode Mode>
__global__ void __launch_bounds__(128) nvfp4_kernel(nvfp4_params p) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.blocks) return;
  float x[kNvfp4Block];
  load8<D>(p.src, b * kNvfp4Block, p.vec_in, x);
  load8<D>(p.src, b * kNvfp4Block + 8, p.vec_in, x + 8);
  float block_amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kNvfp4Block; ++i) {
    if (p.zero && !dm::is_finite(x[i])) x[i] = 0.0f;
    block_amax = fmaxf(block_amax, fabsf(x[i]));
  }
  uint32_t bits;
  if constexpr (Mode == block_mode::max)
    bits = dm::e4m3_encode(dm::nvfp4_max_block_scale(block_amax, p.ws2));
  else if constexpr (Mode == block_mode::multipliers)
    bits = dm::choose_by_multipliers(x, block_amax, p.global_amax, p.normalizer, p.ws2, p.multipliers, p.n_multipliers);
  else
    bits = dm::choose_by_sweep(x, block_amax, p.global_amax, p.normalizer, p.ws2);

  const float scale = __fmul_rn(dm::e4m3_decode(bits), p.ws2);
  const dm::e2m1_bounds bounds = dm::e2m1_bounds_for(scale);
  uint32_t lo = 0, hi = 0;  // nibble i of the block at bits 4i: even element in the low nibble
  if (bounds.ready) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo |= dm::nvfp4_code_by_bounds(x[i], bounds) << (4 * i);
      hi |= dm::nvfp4_code_by_bounds(x[i + 8], bounds) << (4 * i);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo |= dm::nvfp4_code(x[i], scale) << (4 * i);
      hi |= dm::nvfp4_code(x[i + 8], scale) << (4 * i);
    }
  }
  uint8_t* dst = p.packed + b * (kNvfp4Block / 2);
  if (aligned(dst, 8)) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) dst[k] = uint8_t(lo >> (8 * k)), dst[k + 4] = uint8_t(hi >> (8 * k));
  }
  p.scales[b] = static_cast<uint8_t>(bits);
  if (p.errors != nullptr) p.errors[b] = dm::nvfp4_sq_error(x, scale);
}

void launch_nvfp4(source_dtype dtype, block_mode mode, const nvfp4_params& p, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const unsigned grid = static_cast<unsigned>((p.blocks + kThreads - 1) / kThreads);
  dispatch(dtype, [&](auto tag) {
    constexpr source_dtype D = decltype(tag)::value;
    switch (mode) {
      case block_mode::max: nvfp4_kernel<D, block_mode::max><<<grid, kThreads, 0, stream>>>(p); break;
      case block_mode::multipliers: nvfp4_kernel<D, block_mode::multipliers><<<grid, kThreads, 0, stream>>>(p); break;
      case block_mode::sweep: nvfp4_kernel<D, block_mode::sweep><<<grid, kThreads, 0, stream>>>(p); break;
    }
  });
  check_launch("nvfp4_kernel");
}

// Sums of a and b in any order (atomics), in double.
__global__ void unordered_sum_kernel(const float* a, const float* b, int64_t n, double* out) {
  double sa = 0.0, sb = 0.0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    sa = __dadd_rn(sa, double(a[i]));
    sb = __dadd_rn(sb, double(b[i]));
  }
  for (int off = 16; off > 0; off /= 2) {
    sa = __dadd_rn(sa, __shfl_down_sync(0xffffffffu, sa, off));
    sb = __dadd_rn(sb, __shfl_down_sync(0xffffffffu, sb, off));
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(&out[0], sa);
    atomicAdd(&out[1], sb);
  }
}

// Sums of a and b in index order, in double from 0.0: the reference's `sq_error += block error`.
// The block stages chunks in shared memory; one thread adds them in order.
constexpr int kOrderedChunk = 4096;
__global__ void ordered_sum_kernel(const float* a, const float* b, int64_t n, double* out) {
  __shared__ float sa[kOrderedChunk], sb[kOrderedChunk];
  double ra = 0.0, rb = 0.0;
  for (int64_t base = 0; base < n; base += kOrderedChunk) {
    const int m = static_cast<int>(min(int64_t(kOrderedChunk), n - base));
    for (int i = threadIdx.x; i < m; i += blockDim.x) sa[i] = a[base + i], sb[i] = b[base + i];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < m; ++i) ra = __dadd_rn(ra, double(sa[i])), rb = __dadd_rn(rb, double(sb[i]));
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = ra, out[1] = rb;
}

// Whether the reference's `narrow.sq_error < standard.sq_error` holds, where each side sums the n
// per-block float errors in block order in double: settled from fast unordered sums when their error
// bounds keep apart (dm::settle_by_bounds), else (near ties, or when forced) by the ordered sums, taken
// on the device by one thread adding in block order.
bool narrow_normalizer_wins(const float* narrow_err, const float* standard_err, int64_t n, cudaStream_t stream) {
  device_buffer<double> d(2, stream);
  double sums[2] = {0.0, 0.0};
  if (!g_force_ordered_sum.load()) {
    check(cudaMemsetAsync(d.get(), 0, 2 * sizeof(double), stream), "cudaMemsetAsync");
    unordered_sum_kernel<<<grid_for(n, 256, 4), 256, 0, stream>>>(narrow_err, standard_err, n, d.get());
    check_launch("unordered_sum_kernel");
    check(cudaMemcpyAsync(sums, d.get(), sizeof sums, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const int settled = dm::settle_by_bounds(sums[0], sums[1], n);
    if (settled >= 0) return settled == 1;
  }
  ordered_sum_kernel<<<1, 1024, 0, stream>>>(narrow_err, standard_err, n, d.get());
  check_launch("ordered_sum_kernel");
  check(cudaMemcpyAsync(sums, d.get(), sizeof sums, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return sums[0] < sums[1];
}

// ---- FP8 ---------------------------------------------------------------------------------------

// row_amax: max |x| of each row (one block per row).
template <source_dtype D>
__global__ void row_amax_kernel(const void* src, int64_t rows, int64_t cols, bool zero, float* row_amax) {
  __shared__ float warp_max[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float m = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(widen_clean<D>(src, r * cols + c, zero)));
    for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, off));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (unsigned w = 1; w < blockDim.x / 32; ++w) m = fmaxf(m, warp_max[w]);
      row_amax[r] = m;
    }
    __syncthreads();
  }
}

// fp8_row_sq_error of every (row, candidate): one block per row, the row staged in shared memory,
// eight threads per candidate (blockDim / 8 candidates at a time). As the reference: squared
// differences in double into 8 lanes, thread j of a candidate holding lane j (columns j, j+8, ..., in
// column order), the lanes then added in lane order from 0.
constexpr int kRowChunk = 2048;  // a multiple of kFp8Lanes, so that lane = column % 8 within a chunk
static_assert(kRowChunk % dm::kFp8Lanes == 0);
template <source_dtype D>
__global__ void fp8_row_error_kernel(const void* src, int64_t rows, int64_t cols, bool zero, const float* row_amax,
                                     float tensor_amax, const float* multipliers, int n_cand, double* row_err) {
  __shared__ float xs[kRowChunk];
  const int j = int(threadIdx.x) % dm::kFp8Lanes;
  const int slots = int(blockDim.x) / dm::kFp8Lanes;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float amax = row_amax != nullptr ? row_amax[r] : tensor_amax;
    for (int c0 = 0; c0 < n_cand; c0 += slots) {
      const int c = c0 + int(threadIdx.x) / dm::kFp8Lanes;
      const bool active = c < n_cand;
      const float scale = active ? dm::fp8_scale(__fmul_rn(amax, multipliers[c])) : 1.0f;
      const float inv = dm::fp8_inverse(scale);
      double lane = 0.0;
      for (int64_t base = 0; base < cols; base += kRowChunk) {
        const int m = static_cast<int>(min(int64_t(kRowChunk), cols - base));
        __syncthreads();
        for (int i = threadIdx.x; i < m; i += blockDim.x) xs[i] = widen_clean<D>(src, r * cols + base + i, zero);
        __syncthreads();
        if (active)
          for (int i = j; i < m; i += dm::kFp8Lanes) lane = __dadd_rn(lane, dm::fp8_sq_term_fast(xs[i], scale, inv));
      }
      double lanes[dm::kFp8Lanes];
      const int first = int(threadIdx.x % 32) - j;  // this candidate's lane 0 within the warp
#pragma unroll
      for (int k = 0; k < dm::kFp8Lanes; ++k) lanes[k] = __shfl_sync(0xffffffffu, lane, first + k);
      if (active && j == 0) row_err[r * n_cand + c] = dm::fp8_lanes_total(lanes);
    }
  }
}

// Per tensor, mse: each candidate's error summed over rows in row order, then the first least one.
__global__ void fp8_pick_tensor_kernel(const double* row_err, int64_t rows, int n_cand, float tensor_amax,
                                       const float* multipliers, double* totals, float* scale_out) {
  for (int c = threadIdx.x; c < n_cand; c += blockDim.x) {
    double total = 0.0;
#pragma unroll 8
    for (int64_t r = 0; r < rows; ++r) total = __dadd_rn(total, row_err[r * n_cand + c]);
    totals[c] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double best = INFINITY;
    float best_scale = 0.0f;
    for (int c = 0; c < n_cand; ++c)
      if (totals[c] < best) best = totals[c], best_scale = dm::fp8_scale(__fmul_rn(tensor_amax, multipliers[c]));
    *scale_out = best_scale;
  }
}

// Per channel: the row's max-rule scale, or its first least-error candidate.
__global__ void fp8_pick_rows_kernel(const double* row_err, int64_t rows, int n_cand, const float* row_amax,
                                     const float* multipliers, float* scales) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  if (row_err == nullptr) {
    scales[r] = dm::fp8_scale(row_amax[r]);
    return;
  }
  double best = INFINITY;
  float best_scale = 0.0f;
  for (int c = 0; c < n_cand; ++c) {
    const double e = row_err[r * n_cand + c];
    if (e < best) best = e, best_scale = dm::fp8_scale(__fmul_rn(row_amax[r], multipliers[c]));
  }
  scales[r] = best_scale;
}

__global__ void store_kernel(float* dst, float value) { *dst = value; }

// Two dm::fp8_code_with_inverse codes (w0's in the low byte): where both products are clear of E4M3
// midpoints in the normal range, the hardware's conversion (round to nearest even, saturating) rounds
// them as e4m3_encode rounds fl(w / s) (tests/cuda checks it against e4m3_encode for every float).
__device__ __forceinline__ uint32_t fp8_code_pair(float w0, float w1, float s, float inv) {
  const float r0 = __fmul_rn(w0, inv), r1 = __fmul_rn(w1, inv);
  if (dm::fp8_clear(__float_as_uint(r0) & 0x7fffffffu) && dm::fp8_clear(__float_as_uint(r1) & 0x7fffffffu))
    return __nv_cvt_float2_to_fp8x2(make_float2(r0, r1), __NV_SATFINITE, __NV_E4M3);
  return dm::fp8_code_with_inverse(w0, s, inv) | dm::fp8_code_with_inverse(w1, s, inv) << 8;
}

// codes[i] = e4m3(x[i] / scale of its row), eight per thread; Zero: non-finite values read as 0.
template <source_dtype D, bool PerRow, bool Zero>
__global__ void fp8_codes_kernel(const void* src, int64_t n, int64_t cols, bool vec_in, const float* scales,
                                 uint8_t* codes) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t groups = n / 8;
  float scale = PerRow ? 0.0f : scales[0];
  float inv = dm::fp8_inverse(scale);
  int64_t row = -1;
  auto use_row = [&](int64_t r) {
    if (r != row) row = r, scale = scales[r], inv = dm::fp8_inverse(scale);
  };
  for (int64_t g = start; g < groups; g += stride) {
    float x[8];
    load8<D>(src, g * 8, vec_in, x);
    if constexpr (Zero) {
#pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = dm::is_finite(x[k]) ? x[k] : 0.0f;
    }
    uint32_t lo = 0, hi = 0;
    int64_t row_end = INT64_MAX;  // PerRow: the flat index where the group's current row ends
    if constexpr (PerRow) {
      const int64_t r = n <= int64_t(UINT32_MAX) ? int64_t(uint32_t(g * 8) / uint32_t(cols)) : g * 8 / cols;
      use_row(r);
      row_end = (r + 1) * cols;
    }
    if (g * 8 + 8 <= row_end) {  // one scale for the group
      lo = fp8_code_pair(x[0], x[1], scale, inv) | fp8_code_pair(x[2], x[3], scale, inv) << 16;
      hi = fp8_code_pair(x[4], x[5], scale, inv) | fp8_code_pair(x[6], x[7], scale, inv) << 16;
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (g * 8 + k >= row_end) use_row(row + 1), row_end += cols;
        const uint32_t c = dm::fp8_code_with_inverse(x[k], scale, inv);
        if (k < 4) lo |= c << (8 * k);
        else hi |= c << (8 * (k - 4));
      }
    }
    uint8_t* dst = codes + g * 8;
    if (aligned(dst, 8)) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) dst[k] = uint8_t(lo >> (8 * k)), dst[k + 4] = uint8_t(hi >> (8 * k));
    }
  }
  for (int64_t i = groups * 8 + start; i < n; i += stride) {
    if constexpr (PerRow) use_row(i / cols);
    codes[i] = static_cast<uint8_t>(dm::fp8_code_with_inverse(widen_clean<D>(src, i, Zero), scale, inv));
  }
}

// ---- test probe --------------------------------------------------------------------------------

__global__ void probe_kernel(uint32_t first, uint32_t count, uint8_t* e4m3, uint8_t* e4m3_hw, uint8_t* e2m1_code,
                             float* e2m1_round, float* decode) {
  const uint32_t stride = gridDim.x * blockDim.x;
  const uint32_t start = blockIdx.x * blockDim.x + threadIdx.x;
  for (uint32_t i = start; i < count; i += stride) {
    const float x = __uint_as_float(first + i);
    const float a = dm::abs_as_reference(x);
    e4m3[i] = static_cast<uint8_t>(dm::e4m3_encode(x));
    e4m3_hw[i] = static_cast<uint8_t>(__nv_cvt_float2_to_fp8x2(make_float2(x, 0.0f), __NV_SATFINITE, __NV_E4M3));
    e2m1_code[i] = e2m1_magnitude_code(a);
    e2m1_round[i] = e2m1_round_magnitude(a);
  }
  if (start < 256) decode[start] = dm::e4m3_decode(start);
}

}  // namespace

// ---- public API --------------------------------------------------------------------------------

bool device_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error state the failed query left
    return false;
  }
  return n > 0;
}

std::string device_name() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp props{};
  check(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
  return props.name;
}

nvfp4_device_result nvfp4_quantize_device(const source_matrix& w, uint8_t* packed, uint8_t* block_scales,
                                          const nvfp4_options& options, stream_t stream_in) {
  require_shape(w, format_id::nvfp4);
  require_finite_static_amax(w.name, options.global_amax, "NVFP4");
  require_valid_multipliers(w.name, options.multipliers, "NVFP4");
  const cudaStream_t stream = stream_in;
  const scan_result scan = scan_source_device(w, stream);
  const bool zero = apply_nonfinite_policy_device(w, scan, options.nonfinite, stream);
  const float global_amax = options.global_amax > 0.0f ? options.global_amax : std::bit_cast<float>(scan.amax_bits);

  static constexpr float kFourOverSix[2] = {1.0f, 1.5f};
  std::span<const float> multipliers;
  block_mode mode = block_mode::max;
  switch (options.selector) {
    case nvfp4_selector::max: break;
    case nvfp4_selector::mse_multiplier:
      mode = block_mode::multipliers;
      multipliers = options.multipliers.empty() ? default_mse_multipliers() : options.multipliers;
      break;
    case nvfp4_selector::four_over_six:
      mode = block_mode::multipliers;
      multipliers = kFourOverSix;
      break;
    case nvfp4_selector::mse_fp8_sweep:
    case nvfp4_selector::mse_four_over_six: mode = block_mode::sweep; break;
  }
  device_buffer<float> d_mult(multipliers.size(), stream);
  if (!multipliers.empty())
    check(cudaMemcpyAsync(d_mult.get(), multipliers.data(), multipliers.size_bytes(), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");

  const int64_t blocks = w.size() / kNvfp4Block;
  auto params = [&](float normalizer, uint8_t* out_packed, uint8_t* out_scales, float* errors) {
    nvfp4_params p{};
    p.src = w.data;
    p.blocks = blocks;
    p.vec_in = aligned(w.data, 16);
    p.zero = zero;
    p.global_amax = global_amax;
    p.normalizer = normalizer;
    p.ws2 = nvfp4_global_scale(global_amax, normalizer);
    p.multipliers = d_mult.get();
    p.n_multipliers = static_cast<int>(multipliers.size());
    p.packed = out_packed;
    p.scales = out_scales;
    p.errors = errors;
    return p;
  };

  if (options.selector != nvfp4_selector::mse_four_over_six) {
    const float normalizer =
        options.selector == nvfp4_selector::four_over_six ? kNvfp4FourOverSixNormalizer : kNvfp4Normalizer;
    launch_nvfp4(w.dtype, mode, params(normalizer, packed, block_scales, nullptr), stream);
    return {nvfp4_global_scale(global_amax, normalizer), normalizer};
  }

  // Both normalizers, each block swept; the tensor keeps the one with the smaller error sum.
  device_buffer<float> standard_err(size_t(blocks), stream), narrow_err(size_t(blocks), stream);
  device_buffer<uint8_t> narrow_packed(size_t(w.size() / 2), stream), narrow_scales(size_t(blocks), stream);
  launch_nvfp4(w.dtype, mode, params(kNvfp4Normalizer, packed, block_scales, standard_err.get()), stream);
  launch_nvfp4(w.dtype, mode,
               params(kNvfp4FourOverSixNormalizer, narrow_packed.get(), narrow_scales.get(), narrow_err.get()), stream);
  if (!narrow_normalizer_wins(narrow_err.get(), standard_err.get(), blocks, stream))
    return {nvfp4_global_scale(global_amax, kNvfp4Normalizer), kNvfp4Normalizer};
  check(cudaMemcpyAsync(packed, narrow_packed.get(), size_t(w.size() / 2), cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(block_scales, narrow_scales.get(), size_t(blocks), cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync");
  return {nvfp4_global_scale(global_amax, kNvfp4FourOverSixNormalizer), kNvfp4FourOverSixNormalizer};
}

void fp8_quantize_device(const source_matrix& w, uint8_t* codes, float* scales, const fp8_options& options,
                         stream_t stream_in) {
  if (w.rows <= 0 || w.cols <= 0) throw format_error("tensor '" + std::string(w.name) + "': empty shape");
  require_finite_static_amax(w.name, options.amax, "FP8");
  require_valid_multipliers(w.name, options.multipliers, "FP8");
  const cudaStream_t stream = stream_in;
  const bool per_tensor = options.granularity == fp8_granularity::per_tensor;
  device_buffer<float> row_amax(per_tensor ? 0 : size_t(w.rows), stream);
  const scan_result scan = per_tensor ? scan_source_device(w, stream) : scan_rows_device(w, row_amax.get(), stream);
  const bool zero = apply_nonfinite_policy_device(w, scan, options.nonfinite, stream);
  const float tensor_amax = options.amax > 0.0f ? options.amax : std::bit_cast<float>(scan.amax_bits);
  const bool mse = options.selector == fp8_selector::mse;
  const std::span<const float> multipliers =
      options.multipliers.empty() ? default_mse_multipliers() : options.multipliers;
  if (per_tensor && mse &&
      std::none_of(multipliers.begin(), multipliers.end(),
                   [&](float m) { return std::isfinite(fp8_scale_for_amax(tensor_amax * m)); }))
    throw fp8_no_finite_candidate(w.name, -1, tensor_amax);  // (an infinite scale errs by NaN)
  const int n_cand = mse ? static_cast<int>(multipliers.size()) : 0;

  device_buffer<float> d_mult(size_t(n_cand), stream);
  if (n_cand > 0)
    check(cudaMemcpyAsync(d_mult.get(), multipliers.data(), multipliers.size_bytes(), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
  device_buffer<double> row_err(size_t(w.rows) * size_t(n_cand), stream);
  const unsigned row_grid = static_cast<unsigned>(std::min<int64_t>(w.rows, 1 << 20));

  dispatch(w.dtype, [&](auto tag) {
    constexpr source_dtype D = decltype(tag)::value;
    if (!per_tensor && zero) {  // the rows' maxima again, over the values with non-finite ones as 0
      row_amax_kernel<D><<<row_grid, 256, 0, stream>>>(w.data, w.rows, w.cols, zero, row_amax.get());
      check_launch("row_amax_kernel");
    }
    if (mse) {
      const int threads = std::min(1024, (dm::kFp8Lanes * n_cand + 31) / 32 * 32);
      fp8_row_error_kernel<D><<<row_grid, threads, 0, stream>>>(w.data, w.rows, w.cols, zero, row_amax.get(),
                                                                tensor_amax, d_mult.get(), n_cand, row_err.get());
      check_launch("fp8_row_error_kernel");
    }
  });

  if (per_tensor) {
    if (mse) {
      device_buffer<double> totals(size_t(n_cand), stream);
      fp8_pick_tensor_kernel<<<1, 256, 0, stream>>>(row_err.get(), w.rows, n_cand, tensor_amax, d_mult.get(),
                                                    totals.get(), scales);
      check_launch("fp8_pick_tensor_kernel");
    } else {
      store_kernel<<<1, 1, 0, stream>>>(scales, fp8_scale_for_amax(tensor_amax));
      check_launch("store_kernel");
    }
  } else {
    fp8_pick_rows_kernel<<<static_cast<unsigned>((w.rows + 127) / 128), 128, 0, stream>>>(
        mse ? row_err.get() : nullptr, w.rows, n_cand, row_amax.get(), d_mult.get(), scales);
    check_launch("fp8_pick_rows_kernel");
  }

  const bool vec_in = aligned(w.data, 16);
  dispatch(w.dtype, [&](auto tag) {
    constexpr source_dtype D = decltype(tag)::value;
    const unsigned grid = grid_for(w.size() / 8, 256);
    auto launch = [&](auto kernel) { kernel<<<grid, 256, 0, stream>>>(w.data, w.size(), w.cols, vec_in, scales, codes); };
    if (per_tensor) zero ? launch(fp8_codes_kernel<D, false, true>) : launch(fp8_codes_kernel<D, false, false>);
    else zero ? launch(fp8_codes_kernel<D, true, true>) : launch(fp8_codes_kernel<D, true, false>);
  });
  check_launch("fp8_codes_kernel");
}

nvfp4_weight nvfp4_quantize(const source_matrix& host_w, const nvfp4_options& options) {
  require_shape(host_w, format_id::nvfp4);
  const owned_stream stream;
  const size_t n = size_t(host_w.size()), in_bytes = n * element_bytes(host_w.dtype);
  const size_t in_off = g_misalign.load() ? element_bytes(host_w.dtype) : 0, out_off = g_misalign.load() ? 1 : 0;
  device_buffer<unsigned char> src(in_off + in_bytes, stream.get());
  device_buffer<uint8_t> packed_buf(out_off + n / 2, stream.get()), scales_buf(out_off + n / kNvfp4Block, stream.get());
  uint8_t* packed = packed_buf.get() + out_off;
  uint8_t* scales = scales_buf.get() + out_off;
  check(cudaMemcpyAsync(src.get() + in_off, host_w.data, in_bytes, cudaMemcpyHostToDevice, stream.get()),
        "cudaMemcpyAsync");
  source_matrix dw = host_w;
  dw.data = src.get() + in_off;
  const nvfp4_device_result r = nvfp4_quantize_device(dw, packed, scales, options, stream.get());

  nvfp4_weight q;
  q.rows = host_w.rows;
  q.cols = host_w.cols;
  q.global_scale = r.global_scale;
  q.normalizer = r.normalizer;
  q.packed.resize(n / 2);
  q.block_scales.resize(n / kNvfp4Block);
  check(cudaMemcpyAsync(q.packed.data(), packed, q.packed.size(), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(q.block_scales.data(), scales, q.block_scales.size(), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  return q;
}

fp8_weight fp8_quantize(const source_matrix& host_w, const fp8_options& options) {
  if (host_w.rows <= 0 || host_w.cols <= 0)
    throw format_error("tensor '" + std::string(host_w.name) + "': empty shape");
  const owned_stream stream;
  const size_t n = size_t(host_w.size()), in_bytes = n * element_bytes(host_w.dtype);
  const size_t n_scales = options.granularity == fp8_granularity::per_tensor ? 1 : size_t(host_w.rows);
  const size_t in_off = g_misalign.load() ? element_bytes(host_w.dtype) : 0, out_off = g_misalign.load() ? 1 : 0;
  device_buffer<unsigned char> src(in_off + in_bytes, stream.get());
  device_buffer<uint8_t> codes_buf(out_off + n, stream.get());
  device_buffer<float> scales(n_scales, stream.get());
  uint8_t* codes = codes_buf.get() + out_off;
  check(cudaMemcpyAsync(src.get() + in_off, host_w.data, in_bytes, cudaMemcpyHostToDevice, stream.get()),
        "cudaMemcpyAsync");
  source_matrix dw = host_w;
  dw.data = src.get() + in_off;
  fp8_quantize_device(dw, codes, scales.get(), options, stream.get());

  fp8_weight q;
  q.rows = host_w.rows;
  q.cols = host_w.cols;
  q.codes.resize(n);
  q.scales.resize(n_scales);
  check(cudaMemcpyAsync(q.codes.data(), codes, n, cudaMemcpyDeviceToHost, stream.get()), "cudaMemcpyAsync");
  check(cudaMemcpyAsync(q.scales.data(), scales.get(), n_scales * sizeof(float), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  return q;
}

namespace testing {

minifloat_probe probe_minifloat(uint32_t first, uint32_t count) {
  const owned_stream stream;
  device_buffer<uint8_t> e4m3(count, stream.get()), e4m3_hw(count, stream.get()), e2m1_code(count, stream.get());
  device_buffer<float> e2m1_round(count, stream.get()), decode(256, stream.get());
  probe_kernel<<<grid_for(std::max<int64_t>(count, 256), 256), 256, 0, stream.get()>>>(
      first, count, e4m3.get(), e4m3_hw.get(), e2m1_code.get(), e2m1_round.get(), decode.get());
  check_launch("probe_kernel");
  minifloat_probe out;
  out.e4m3_code.resize(count);
  out.e4m3_hardware.resize(count);
  out.e2m1_code.resize(count);
  out.e2m1_round.resize(count);
  out.e4m3_decode.resize(256);
  check(cudaMemcpyAsync(out.e4m3_code.data(), e4m3.get(), count, cudaMemcpyDeviceToHost, stream.get()), "cudaMemcpyAsync");
  check(cudaMemcpyAsync(out.e4m3_hardware.data(), e4m3_hw.get(), count, cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(out.e2m1_code.data(), e2m1_code.get(), count, cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(out.e2m1_round.data(), e2m1_round.get(), size_t(count) * sizeof(float), cudaMemcpyDeviceToHost,
                        stream.get()),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(out.e4m3_decode.data(), decode.get(), 256 * sizeof(float), cudaMemcpyDeviceToHost, stream.get()),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  return out;
}

void force_ordered_error_sum(bool on) { g_force_ordered_sum.store(on); }
void misalign_device_copies(bool on) { g_misalign.store(on); }
bool misaligned_device_copies() { return g_misalign.load(); }

}  // namespace testing
}  // namespace mixq::cuda
