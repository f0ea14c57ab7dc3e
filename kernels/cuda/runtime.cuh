// Host-side CUDA plumbing shared by the kernels/cuda translation units: error checks, stream-ordered
// buffers, a call-owned stream, grid sizing. Internal: included by .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace mixq::cuda::detail {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("mixq::cuda: ") + what + ": " + cudaGetErrorString(e));
}
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Stream-ordered device memory, freed on the same stream.
template <class T>
class device_buffer {
 public:
  device_buffer(size_t n, cudaStream_t stream) : stream_(stream) {
    if (n > 0) check(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), n * sizeof(T), stream), "cudaMallocAsync");
  }
  ~device_buffer() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// A stream owned by a host-API call.
class owned_stream {
 public:
  owned_stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~owned_stream() {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  owned_stream(const owned_stream&) = delete;
  owned_stream& operator=(const owned_stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

__host__ __device__ inline bool aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

inline int sm_count() {
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return sms > 0 ? sms : 1;
}

// Grid for a grid-stride loop over `work` items with `threads` per block.
inline unsigned grid_for(int64_t work, int threads, int blocks_per_sm = 8) {
  const int64_t needed = std::max<int64_t>(1, (work + threads - 1) / threads);
  return static_cast<unsigned>(std::min<int64_t>(needed, int64_t(sm_count()) * blocks_per_sm));
}

}  // namespace mixq::cuda::detail
