// MPI return codes as exceptions: std::runtime_error naming the call and MPI's own message.
#pragma once

#include <mpi.h>

#include <stdexcept>
#include <string>

namespace mixq {

inline void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string("MPI ") + what + " failed: " + std::string(text, size_t(len)));
}

}  // namespace mixq
