// Hot loops are compiled for AVX-512 (x86-64-v4), AVX2 (v3) and baseline x86-64, and the best the
// CPU supports is picked when the program loads (GCC function multi-versioning), so one binary is
// both portable and fast. Elsewhere the macro is empty.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#ifndef MIXQ_CLONES  // (a build may pin one target to time it: -DMIXQ_CLONES='__attribute__((target("arch=x86-64-v3")))')
#define MIXQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#define MIXQ_HAVE_SIMD_TARGETS 1
#define MIXQ_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define MIXQ_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
// Open and close a region of AVX-512 code (namespace avx512 of a kernel file). Inside it GCC 12's
// warnings on the deliberately undefined pass-through operand of unmasked AVX-512 intrinsics are
// off.
#define MIXQ_BEGIN_AVX512_REGION                                                                     \
  _Pragma("GCC push_options") _Pragma("GCC target(\"arch=x86-64-v4\")") _Pragma("GCC diagnostic push") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define MIXQ_END_AVX512_REGION _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#else
#define MIXQ_CLONES
#define MIXQ_HAVE_SIMD_TARGETS 0
#define MIXQ_TARGET_AVX512
#define MIXQ_TARGET_AVX2
#endif

// Helpers of the cloned hot loops must be inlined into each clone, or they are compiled once for the
// baseline target (and pass their 64-byte vectors through memory).
#if defined(__GNUC__)
#define MIXQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MIXQ_ALWAYS_INLINE inline
#endif

namespace mixq::cpu {

// Kernels whose best form differs in kind between instruction sets, not only in vector width (a
// 32-entry lane permute is one AVX-512 instruction and a scalar loop before it), are written once
// as a template over the level, instantiated per target and picked at run time (MIXQ_SIMD_KERNEL).
enum class simd_level : uint8_t { baseline, avx2, avx512 };

simd_level cpu_simd_level();     // the best level this CPU runs
simd_level active_simd_level();  // the level dispatch uses: cpu_simd_level() unless lowered
// Lowers (or restores, up to cpu_simd_level()) the level dispatch uses, so that tests run every
// instantiation on one machine. Not for use while kernels run on other threads.
void limit_simd_level(simd_level level);

}  // namespace mixq::cpu

// Defines `name(params)` calling `impl<level>(args)` for the active level, with impl instantiated
// for AVX-512, AVX2 and baseline x86-64 (only baseline elsewhere). `impl` must be always-inline.
#if MIXQ_HAVE_SIMD_TARGETS
#define MIXQ_SIMD_KERNEL(ret, name, impl, params, args)                                               \
  MIXQ_TARGET_AVX512 ret name##_avx512 params { return impl<::mixq::cpu::simd_level::avx512> args; } \
  MIXQ_TARGET_AVX2 ret name##_avx2 params { return impl<::mixq::cpu::simd_level::avx2> args; }       \
  ret name##_baseline params { return impl<::mixq::cpu::simd_level::baseline> args; }                \
  ret name params {                                                                                   \
    switch (::mixq::cpu::active_simd_level()) {                                                       \
      case ::mixq::cpu::simd_level::avx512: return name##_avx512 args;                                \
      case ::mixq::cpu::simd_level::avx2: return name##_avx2 args;                                    \
      default: return name##_baseline args;                                                           \
    }                                                                                                 \
  }
#else
#define MIXQ_SIMD_KERNEL(ret, name, impl, params, args) \
  ret name params { return impl<::mixq::cpu::simd_level::baseline> args; }
#endif
