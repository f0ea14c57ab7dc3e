#include "kernels/cpu/simd_dispatch.hpp"

#include <algorithm>
#include <atomic>

namespace mixq::cpu {
namespace {

simd_level detect() {
#if MIXQ_HAVE_SIMD_TARGETS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return simd_level::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return simd_level::avx2;
#endif
  return simd_level::baseline;
}

std::atomic<simd_level>& active() {
  static std::atomic<simd_level> level{cpu_simd_level()};
  return level;
}

}  // namespace

simd_level cpu_simd_level() {
  static const simd_level level = detect();
  return level;
}

simd_level active_simd_level() { return active().load(std::memory_order_relaxed); }

void limit_simd_level(simd_level level) { active().store(std::min(level, cpu_simd_level())); }

}  // namespace mixq::cpu
