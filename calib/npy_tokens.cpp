#include "calib/npy_tokens.hpp"

#include <cctype>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "calib/token_file.hpp"

namespace mixq {
namespace {

// The header is a Python dict literal: {'descr': '<u2', 'fortran_order': False, 'shape': (3, 4), }
// — a small, fixed grammar, parsed by hand with errors that say what was expected.
class header_parser {
 public:
  header_parser(std::string_view text, std::string_view file) : s_(text), file_(file) {}

  struct result {
    std::string descr;
    bool fortran_order = false;
    std::vector<int64_t> shape;
  };

  result parse() {
    result r;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      expect(':');
      if (key == "descr") {
        r.descr = quoted(), have_descr = true;
      } else if (key == "fortran_order") {
        r.fortran_order = boolean(), have_order = true;
      } else if (key == "shape") {
        r.shape = tuple(), have_shape = true;
      } else {
        fail(fmt::format("unknown header key '{}'", key));
      }
      skip_space();
      if (peek() == ',') ++i_;
    }
    if (!have_descr || !have_order || !have_shape)
      fail(fmt::format("header lacks '{}'", !have_descr ? "descr" : !have_order ? "fortran_order" : "shape"));
    return r;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw token_file_error(fmt::format("{}: not a valid .npy header: {}", file_, why));
  }
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char peek() {
    skip_space();
    if (i_ >= s_.size()) fail("it ends early");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}' at header offset {}", c, i_));
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail(fmt::format("expected a quoted string at header offset {}", i_));
    const size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_space();
    for (auto [word, value] : {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}})
      if (s_.substr(i_, word.size()) == word) {
        i_ += word.size();
        return value;
      }
    fail(fmt::format("expected True or False at header offset {}", i_));
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> dims;
    while (peek() != ')') {
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail(fmt::format("expected a dimension at header offset {}", i_));
      int64_t d = 0;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        if (d > (int64_t(1) << 50)) fail("a dimension is too large");
        d = d * 10 + (s_[i_++] - '0');
      }
      dims.push_back(d);
      if (peek() == ',') ++i_;
    }
    ++i_;
    return dims;
  }

  std::string_view s_, file_;
  size_t i_ = 0;
};

struct element_type {
  int bytes = 0;
  bool is_signed = false;
  bool big_endian = false;
};

std::optional<element_type> integer_type(const std::string& descr) {
  if (descr.size() != 3) return std::nullopt;
  const char order = descr[0], kind = descr[1], width = descr[2];
  if (order != '<' && order != '>' && order != '|' && order != '=') return std::nullopt;
  if (kind != 'u' && kind != 'i') return std::nullopt;
  if (width != '1' && width != '2' && width != '4' && width != '8') return std::nullopt;
  return element_type{width - '0', kind == 'i', order == '>'};
}

uint64_t read_uint(const unsigned char* p, int bytes, bool big_endian) {
  uint64_t v = 0;
  for (int b = 0; b < bytes; ++b) v |= uint64_t(p[big_endian ? bytes - 1 - b : b]) << (8 * b);
  return v;
}

}  // namespace

std::vector<int32_t> parse_npy_tokens(std::string_view bytes, std::string_view name, int64_t vocab) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 8 || bytes.substr(0, 6) != std::string_view("\x93NUMPY", 6))
    throw token_file_error(fmt::format("{}: not a .npy file (no \\x93NUMPY magic)", name));
  const int major = u[6];
  if (major < 1 || major > 3)
    throw token_file_error(fmt::format("{}: .npy format version {}.{} is not supported (1.0 to 3.0)", name, major, u[7]));
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix = 8 + len_bytes;
  if (bytes.size() < prefix) throw token_file_error(fmt::format("{}: .npy header is cut short", name));
  const size_t header_len = size_t(read_uint(u + 8, int(len_bytes), false));
  if (header_len > bytes.size() - prefix)
    throw token_file_error(fmt::format("{}: .npy header says {} bytes, the file has {} after the prefix", name,
                                       header_len, bytes.size() - prefix));
  const auto h = header_parser(bytes.substr(prefix, header_len), name).parse();
  const auto type = integer_type(h.descr);
  if (!type)
    throw token_file_error(fmt::format(
        "{}: .npy element type '{}' is not an integer type (token ids must be u1/i1/u2/i2/u4/i4/u8/i8)", name, h.descr));

  int64_t count = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && count > (int64_t(1) << 40) / d)
      throw token_file_error(fmt::format("{}: .npy shape is too large", name));
    count *= d;
  }
  const size_t data_bytes = bytes.size() - prefix - header_len;
  if (uint64_t(count) * uint64_t(type->bytes) != data_bytes)
    throw token_file_error(fmt::format("{}: .npy shape ({}) of {}-byte ids needs {} bytes of data, the file has {}", name,
                                       fmt::join(h.shape, ", "), type->bytes, count * type->bytes, data_bytes));
  const unsigned char* data = u + prefix + header_len;

  // Element k in C order sits at its transposed position in a Fortran-order array.
  std::vector<int64_t> stride(h.shape.size(), 1);
  if (h.fortran_order)
    for (size_t d = 1; d < h.shape.size(); ++d) stride[d] = stride[d - 1] * h.shape[d - 1];
  std::vector<int32_t> ids(static_cast<size_t>(count));
  std::vector<int64_t> index(h.shape.size(), 0);
  for (int64_t k = 0; k < count; ++k) {
    int64_t at = k;
    if (h.fortran_order) {
      at = 0;
      for (size_t d = 0; d < h.shape.size(); ++d) at += index[d] * stride[d];
      for (size_t d = h.shape.size(); d-- > 0;)  // the next C-order index
        if (++index[d] < h.shape[d]) break;
        else index[d] = 0;
    }
    const uint64_t raw = read_uint(data + at * type->bytes, type->bytes, type->big_endian);
    int64_t v = int64_t(raw);
    if (type->is_signed && type->bytes < 8 && (raw >> (8 * type->bytes - 1)) != 0)
      v = int64_t(raw) - (int64_t(1) << (8 * type->bytes));  // sign-extend
    if (v < 0 || v > INT32_MAX)
      throw token_file_error(fmt::format("{}: token id {} at index {} is not a valid id", name,
                                         type->is_signed ? fmt::format("{}", v) : fmt::format("{}", raw), k));
    if (vocab > 0 && v >= vocab)
      throw token_file_error(
          fmt::format("{}: token id {} at index {} is not below the vocabulary size {}", name, v, k, vocab));
    ids[size_t(k)] = int32_t(v);
  }
  return ids;
}

}  // namespace mixq
