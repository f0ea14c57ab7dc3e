// The Unicode the byte-level BPE tokenizer needs: strict UTF-8 decoding, the character classes its
// pre-tokenizer patterns use (\p{L}, \p{N}, \s, \w) and NFC. The tables are generated from Python's
// unicodedata by calib/make_unicode_tables.py (calib/unicode_data.cpp; version in version()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mixq::unicode {

// One class per code point (the generator's numbering).
enum class char_class : uint8_t {
  other,
  letter,                 // L*
  mark,                   // M*
  decimal_number,         // Nd
  letter_number,          // Nl
  other_number,           // No
  white_space,            // the White_Space property (= Oniguruma's and Rust's \s)
  connector_punctuation,  // Pc
  join_control,           // U+200C, U+200D
  alphabetic_symbol,      // So with Other_Alphabetic (circled / squared Latin letters)
};

char_class classify(char32_t c);
inline bool is_letter(char32_t c) { return classify(c) == char_class::letter; }
inline bool is_number(char32_t c) {
  const char_class k = classify(c);
  return k == char_class::decimal_number || k == char_class::letter_number || k == char_class::other_number;
}
inline bool is_white_space(char32_t c) { return classify(c) == char_class::white_space; }
// The regex crate's Unicode \w: Alphabetic, M, Nd, Pc, Join_Control (Alphabetic as L, Nl and the
// Other_Alphabetic symbols; its Other_Alphabetic marks are in M already).
bool is_word(char32_t c);

const char* version();

// Decodes one code point of valid UTF-8 at s[i], advancing i; returns false (i unchanged) at an
// ill-formed sequence (overlong, surrogate, above U+10FFFF, truncated, stray continuation byte).
bool decode_utf8(std::string_view s, size_t& i, char32_t& c);
// The byte offset of the first ill-formed sequence, or npos when s is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);
void append_utf8(std::string& out, char32_t c);
// Bytes as UTF-8 with every maximal ill-formed subpart replaced by U+FFFD (Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

// Canonical composition (NFC) of valid UTF-8.
std::string nfc(std::string_view s);

namespace data {
struct CombiningRange {
  char32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp;
  uint16_t offset;
  uint8_t length;
};
struct Composition {
  char32_t first, second, composite;
};
}  // namespace data

}  // namespace mixq::unicode
