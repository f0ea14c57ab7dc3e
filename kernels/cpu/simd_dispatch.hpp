// Hot loops are compiled for AVX-512 (x86-64-v4), AVX2 (v3) and baseline x86-64, and the best the
// CPU supports is picked when the program loads (GCC function multi-versioning), so one binary is
// both portable and fast. Elsewhere the macro is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MIXQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MIXQ_CLONES
#endif

// Helpers of the cloned hot loops must be inlined into each clone, or they are compiled once for the
// baseline target (and pass their 64-byte vectors through memory).
#if defined(__GNUC__)
#define MIXQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MIXQ_ALWAYS_INLINE inline
#endif
