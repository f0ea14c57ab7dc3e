# The CUDA quantize benchmark (Google Benchmark). bench/CMakeLists.txt includes this file:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/cuda.cmake)
# It adds nothing unless the CUDA kernels are built (MIXQ_HAVE_CUDA).
if(MIXQ_HAVE_CUDA)
  add_executable(bench_cuda_quantize ${CMAKE_CURRENT_LIST_DIR}/bench_cuda_quantize.cpp)
  target_link_libraries(bench_cuda_quantize PRIVATE mixq_kernels_cuda CUDA::cudart benchmark::benchmark mixq_warnings)
endif()
