#include "calib/token_file.hpp"

#include "calib/npy_tokens.hpp"

#include <fstream>
#include <string>

#include <fmt/format.h>

namespace mixq {

std::string_view to_string(token_dtype d) {
  switch (d) {
    case token_dtype::from_extension: return "auto";
    case token_dtype::u16: return "u16";
    case token_dtype::u32: return "u32";
  }
  return "?";
}

token_dtype token_dtype_from_string(std::string_view s) {
  if (s == "u16") return token_dtype::u16;
  if (s == "u32") return token_dtype::u32;
  if (s == "auto") return token_dtype::from_extension;
  throw token_file_error(fmt::format("unknown token dtype '{}' (expected u16, u32 or auto)", s));
}

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

token_dtype dtype_from_extension(const std::filesystem::path& path) {
  const std::string name = path.filename().string();
  if (ends_with(name, ".u16.bin")) return token_dtype::u16;
  if (ends_with(name, ".u32.bin")) return token_dtype::u32;
  throw token_file_error(fmt::format(
      "{}: cannot tell the token dtype from the name (expected *.u16.bin, *.u32.bin or *.npy); name it explicitly",
      path.string()));
}

}  // namespace

std::vector<int32_t> read_token_file(const std::filesystem::path& path, int64_t vocab, token_dtype dtype) {
  const bool npy = path.extension() == ".npy";
  if (npy && dtype != token_dtype::from_extension)
    throw token_file_error(fmt::format("{}: a .npy file names its own element type; leave the token dtype at auto",
                                       path.string()));
  if (!npy && dtype == token_dtype::from_extension) dtype = dtype_from_extension(path);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw token_file_error(fmt::format("{}: token file not found", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw token_file_error(fmt::format("{}: cannot open token file", path.string()));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw token_file_error(fmt::format("{}: read error", path.string()));
  if (npy) return parse_npy_tokens(bytes, path.string(), vocab);  // its header gives the element type

  const size_t width = dtype == token_dtype::u16 ? 2 : 4;
  if (bytes.size() % width != 0)
    throw token_file_error(fmt::format("{}: {} bytes is not a whole number of {} token ids", path.string(),
                                       bytes.size(), to_string(dtype)));
  const size_t n = bytes.size() / width;
  std::vector<int32_t> ids(n);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < n; ++i) {
    uint32_t v = 0;  // little-endian, whatever the host
    for (size_t b = 0; b < width; ++b) v |= uint32_t(p[i * width + b]) << (8 * b);
    if (vocab > 0 && int64_t(v) >= vocab)
      throw token_file_error(
          fmt::format("{}: token id {} at index {} is not below the vocabulary size {}", path.string(), v, i, vocab));
    if (v > uint32_t(INT32_MAX))
      throw token_file_error(fmt::format("{}: token id {} at index {} does not fit int32", path.string(), v, i));
    ids[i] = int32_t(v);
  }
  return ids;
}

}  // namespace mixq
