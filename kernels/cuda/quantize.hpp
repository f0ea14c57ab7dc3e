// CUDA weight quantizers: NVFP4 (every selector) and FP8 E4M3 (per tensor / per channel, max / mse).
// Each returns exactly (bit for bit) what the scalar reference in formats/ returns for the same
// values widened to fp32, like kernels/cpu; tests/cuda checks it on a GPU. Every rounding is
// written out in the kernels (nvcc --fmad=false, __f*_rn / __d*_rn), the orders of the reference's
// float / double sums are kept, and ties go where the reference sends them.
//
// This header needs no CUDA headers: host code that only calls the host API compiles without them.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/source_matrix.hpp"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace mixq::cuda {

using stream_t = CUstream_st*;  // a cudaStream_t; nullptr = the legacy default stream

// True when the CUDA runtime finds at least one device (false without a driver or a GPU).
bool device_available();
// The current device's name, as the driver reports it.
std::string device_name();

// ---- host API: host data in, host results out (copies to the current device and back) ----------

nvfp4_weight nvfp4_quantize(const cpu::source_matrix& host_w, const nvfp4_options& options = {});
fp8_weight fp8_quantize(const cpu::source_matrix& host_w, const fp8_options& options = {});

// ---- device API: w.data and the outputs are device pointers; work is queued on `stream` ----------
// Both synchronize `stream` once to read the global amax / non-finite scan (so that `reject` can
// throw here, with the CPU path's message), and the NVFP4 one again for mse_four_over_six to learn
// which normalizer won. The outputs are complete once `stream` is. Any alignment works; 16-byte
// aligned inputs and 8-byte aligned outputs take the vectorized loads and stores. Scratch memory
// comes from the stream-ordered allocator (cudaMallocAsync on `stream`, the device's current pool).

struct nvfp4_device_result {
  float global_scale = 0.0f;  // weight_scale_2
  float normalizer = kNvfp4Normalizer;
};
// packed: rows·cols/2 bytes; block_scales: rows·cols/16 bytes (E4M3 bits).
nvfp4_device_result nvfp4_quantize_device(const cpu::source_matrix& w, uint8_t* packed, uint8_t* block_scales,
                                          const nvfp4_options& options = {}, stream_t stream = nullptr);
// codes: rows·cols bytes (E4M3 bits); scales: 1 float (per tensor) or rows floats (per channel).
void fp8_quantize_device(const cpu::source_matrix& w, uint8_t* codes, float* scales, const fp8_options& options = {},
                         stream_t stream = nullptr);

// ---- hooks for tests --------------------------------------------------------------------------
namespace testing {

// The device's E4M3 encode (its own and the hardware's), E2M1 code and E2M1 rounding of the floats with bit patterns
// first, first+1, ..., first+count-1 (wrapping), and the device's E4M3 decode of all 256 bytes.
struct minifloat_probe {
  std::vector<uint8_t> e4m3_code;
  std::vector<uint8_t> e4m3_hardware;  // the GPU's own conversion (saturating, round to nearest even)
  std::vector<uint8_t> e2m1_code;   // of |x|
  std::vector<float> e2m1_round;    // of |x|
  std::vector<float> e4m3_decode;   // 256 entries
};
minifloat_probe probe_minifloat(uint32_t first, uint32_t count);

// mse_four_over_six compares two per-block error sums taken in block order in double. The kernels
// settle it from fast unordered sums whenever their rounding-error bounds cannot overlap, and sum in
// order otherwise; forcing the ordered sum lets tests cover that path.
void force_ordered_error_sum(bool on);

// The host API places its device copies of input and outputs at odd offsets, so that tests cover
// the kernels' unaligned (scalar) loads and stores.
void misalign_device_copies(bool on);
bool misaligned_device_copies();

}  // namespace testing
}  // namespace mixq::cuda
