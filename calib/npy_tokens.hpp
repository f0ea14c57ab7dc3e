// Token ids from a NumPy .npy file (format versions 1.0, 2.0 and 3.0): an array of integers of any
// shape — [N] or [batch, T] as data pipelines save them — in C or Fortran order, read in C (row)
// order as one stream. Integer element types u1 / i1 / u2 / i2 / u4 / i4 / u8 / i8, little- or
// big-endian; anything else (floats, objects, structured types) is refused. Spec:
// numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace mixq {

// Parses an .npy image; `name` is the file for messages. Throws token_file_error naming the file and
// what is wrong (magic, version, header key, dtype, shape, size, an id that is negative, does not
// fit int32 or is not below vocab when vocab > 0 — with its index).
std::vector<int32_t> parse_npy_tokens(std::string_view bytes, std::string_view name, int64_t vocab);

}  // namespace mixq
