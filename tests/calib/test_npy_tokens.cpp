// .npy token files as NumPy writes them (tests/golden/make_npy_tokens.py): every integer type and
// byte order, C and Fortran order, format 2.0; and the errors for what is not a token array.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "calib/npy_tokens.hpp"
#include "calib/token_file.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path npy_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return fs::path(src ? src : ".") / "tests" / "data" / "npy";
}

std::vector<int32_t> arange(int32_t first, int32_t count, int32_t step = 1) {
  std::vector<int32_t> v(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) v[size_t(i)] = first + i * step;
  return v;
}

std::string error_of(const fs::path& p, int64_t vocab = 0) {
  try {
    read_token_file(p, vocab);
  } catch (const token_file_error& e) {
    return e.what();
  }
  return "";
}

TEST(npy_tokens, reads_what_numpy_writes) {
  EXPECT_EQ(read_token_file(npy_dir() / "ids_u2.npy", 0), arange(100, 30));
  EXPECT_EQ(read_token_file(npy_dir() / "ids_i8_2d.npy", 0), arange(0, 24, 3));         // [4, 6], row order
  EXPECT_EQ(read_token_file(npy_dir() / "ids_i4_fortran.npy", 0), arange(0, 15));       // Fortran order
  EXPECT_EQ(read_token_file(npy_dir() / "ids_u4_big_endian.npy", 0), arange(70000, 10));
  EXPECT_EQ(read_token_file(npy_dir() / "ids_u1.npy", 0), arange(0, 25, 10));
  EXPECT_EQ(read_token_file(npy_dir() / "ids_u2_v2.npy", 0), arange(0, 7));              // format 2.0
  EXPECT_EQ(read_token_file(npy_dir() / "ids_u2.npy", 130), arange(100, 30));           // vocab checked
}

TEST(npy_tokens, errors_name_the_file_and_the_problem) {
  const std::string f = error_of(npy_dir() / "float_ids.npy");
  EXPECT_NE(f.find("float_ids.npy"), std::string::npos) << f;
  EXPECT_NE(f.find("'<f4' is not an integer type"), std::string::npos) << f;
  const std::string n = error_of(npy_dir() / "negative_ids.npy");
  EXPECT_NE(n.find("token id -2 at index 2"), std::string::npos) << n;
  try {
    read_token_file(npy_dir() / "ids_u2.npy", 0, token_dtype::u32);
    ADD_FAILURE() << "an explicit dtype for a .npy file was accepted";
  } catch (const token_file_error& e) {
    EXPECT_NE(std::string(e.what()).find("names its own element type"), std::string::npos) << e.what();
  }
  const std::string v = error_of(npy_dir() / "ids_u2.npy", 120);
  EXPECT_NE(v.find("token id 120 at index 20 is not below the vocabulary size 120"), std::string::npos) << v;
}

// Malformed images, built by hand from a valid one.
std::string image(const std::string& header, const std::string& data, int major = 1) {
  std::string out("\x93NUMPY", 6);
  out += char(major);
  out += '\0';
  const size_t len = header.size();
  out += char(len & 0xff);
  out += char((len >> 8) & 0xff);
  if (major > 1) out += std::string(2, '\0');
  return out + header + data;
}

std::string parse_error(const std::string& bytes) {
  try {
    parse_npy_tokens(bytes, "x.npy", 0);
  } catch (const token_file_error& e) {
    return e.what();
  }
  return "";
}

TEST(npy_tokens, malformed_headers_are_errors) {
  const std::string ok = "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }\n";
  EXPECT_EQ(parse_npy_tokens(image(ok, std::string("\x05\x00\x07\x00", 4)), "x.npy", 0), (std::vector<int32_t>{5, 7}));
  EXPECT_NE(parse_error("NUMPY").find("no \\x93NUMPY magic"), std::string::npos);
  EXPECT_NE(parse_error(image(ok, "", 9)).find("version 9.0"), std::string::npos);
  EXPECT_NE(parse_error(image(ok, std::string(3, '\0'))).find("needs 4 bytes of data, the file has 3"), std::string::npos);
  EXPECT_NE(parse_error(image("{'descr': '<u2', 'shape': (2,)}", std::string(4, '\0'))).find("lacks 'fortran_order'"),
            std::string::npos);
  EXPECT_NE(parse_error(image("{'descr': '<u2', 'fortran_order': Maybe, 'shape': (2,)}", "")).find("True or False"),
            std::string::npos);
  EXPECT_NE(parse_error(image("{'descr': '<u2', 'fortran_order': False, 'shape': (2,", "")).find("ends early"),
            std::string::npos);
  EXPECT_NE(parse_error(image("{'descr': 'O', 'fortran_order': False, 'shape': (1,)}", "")).find("'O' is not an integer"),
            std::string::npos);
  EXPECT_NE(parse_error(image("{'descr': '<u2', 'fortran_order': False, 'shape': (2,), 'x': 1}", "")).find("unknown header key 'x'"),
            std::string::npos);
  std::string cut = image(ok, "");
  cut.resize(9);
  EXPECT_NE(parse_error(cut).find("cut short"), std::string::npos);
  std::string long_header = image(ok, "");
  long_header[8] = char(0xff);  // header length past the end
  EXPECT_NE(parse_error(long_header).find(".npy header says"), std::string::npos);
  // an empty array is a valid (empty) stream
  EXPECT_TRUE(parse_npy_tokens(image("{'descr': '<i8', 'fortran_order': False, 'shape': (0, 3), }", ""), "x.npy", 0).empty());
}

}  // namespace
}  // namespace mixq
