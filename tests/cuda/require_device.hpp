// GPU tests skip, saying why, where the CUDA kernels are built but no device is present.
#pragma once

#include <gtest/gtest.h>

#include "kernels/cuda/quantize.hpp"

#define MIXQ_REQUIRE_CUDA_DEVICE()                                                          \
  do {                                                                                     \
    if (!::mixq::cuda::device_available())                                                 \
      GTEST_SKIP() << "no CUDA device: the CUDA kernels are built but cannot run here"; \
  } while (0)
