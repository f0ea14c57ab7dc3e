// A pre-tokenized token stream: a flat .bin of little-endian unsigned token ids, u16 or u32, as
// llama2.c's pretokenize writes them (shared/data/tinystories/README.md), no header; or a NumPy
// .npy array of integer ids (calib/npy_tokens.hpp), whose header gives the element type.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace mixq {

class token_file_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class token_dtype {
  from_extension,  // ".u16.bin" / ".u32.bin" / ".npy"; anything else is an error
  u16,
  u32,
};

std::string_view to_string(token_dtype d);
// "u16", "u32", "auto" (from_extension); throws token_file_error otherwise.
token_dtype token_dtype_from_string(std::string_view s);

// Reads every token id of `path`. Throws token_file_error naming the file for a missing or
// unreadable file, a size that is not a whole number of ids, an unknown extension under
// from_extension, and (naming the index too) any id >= vocab when vocab > 0.
std::vector<int32_t> read_token_file(const std::filesystem::path& path, int64_t vocab,
                                     token_dtype dtype = token_dtype::from_extension);

}  // namespace mixq
