#include "pipeline/quantize/weight_device.hpp"

#include <stdexcept>

#include "kernels/cpu/quantize.hpp"
#if MIXQ_HAVE_CUDA
#include "kernels/cuda/quantize.hpp"
#endif

namespace mixq {

weight_device resolve_weight_device(std::string_view name) {
  if (name == "cpu") return weight_device::cpu;
  if (name != "cuda" && name != "auto")
    throw std::invalid_argument("device '" + std::string(name) + "': expected cpu, cuda or auto");
#if MIXQ_HAVE_CUDA
  if (cuda::device_available()) return weight_device::cuda;
  if (name == "auto") return weight_device::cpu;
  throw std::invalid_argument("device cuda: no CUDA GPU found (no driver, or no device visible); use --device cpu");
#else
  if (name == "auto") return weight_device::cpu;
  throw std::invalid_argument(
      "device cuda: this mixq was built without CUDA (nvcc was not found at configure time, or -DMIXQ_CUDA=OFF); "
      "use --device cpu");
#endif
}

std::string describe(weight_device device) {
#if MIXQ_HAVE_CUDA
  if (device == weight_device::cuda) return "cuda (" + cuda::device_name() + ")";
#endif
  return device == weight_device::cpu ? "cpu" : "cuda";
}

nvfp4_weight nvfp4_quantize_on(weight_device device, const cpu::source_matrix& w, const nvfp4_options& options) {
#if MIXQ_HAVE_CUDA
  if (device == weight_device::cuda) return cuda::nvfp4_quantize(w, options);
#endif
  static_cast<void>(device);
  return cpu::nvfp4_quantize(w, options);
}

fp8_weight fp8_quantize_on(weight_device device, const cpu::source_matrix& w, const fp8_options& options) {
#if MIXQ_HAVE_CUDA
  if (device == weight_device::cuda) return cuda::fp8_quantize(w, options);
#endif
  static_cast<void>(device);
  return cpu::fp8_quantize(w, options);
}

}  // namespace mixq
