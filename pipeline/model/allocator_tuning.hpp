// The forward and backward passes allocate and free the same activation buffers layer after layer.
// glibc serves a buffer above 128 KiB from a fresh mmap and returns it on free, so every layer pays
// page faults and page zeroing again (5-8 % of a small model's forward). Kept in the heap, the
// pages are reused. Called once at the start of a program that runs models.
#pragma once

#include <malloc.h>

namespace mixq {

inline void keep_buffers_in_heap() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);  // allocations below 1 GiB come from the heap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // and freed memory stays there up to 1 GiB
}

}  // namespace mixq
