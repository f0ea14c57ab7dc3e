#include "calib/unicode_text.hpp"

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace mixq::unicode {

namespace data {
extern const char kVersion[];
extern const uint32_t kClassStarts[];
extern const size_t kClassStartCount;
extern const CombiningRange kCombiningRanges[];
extern const size_t kCombiningRangeCount;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;
extern const char32_t kDecompositionPool[];
extern const Composition kCompositions[];
extern const size_t kCompositionCount;
}  // namespace data

namespace {

char_class classify_slow(char32_t c) {
  const uint32_t* begin = data::kClassStarts;
  const uint32_t* end = begin + data::kClassStartCount;
  const uint32_t* it = std::upper_bound(begin, end, uint32_t(c) << 4 | 0xF);
  return char_class(*(it - 1) & 0xF);  // kClassStarts[0] starts at U+0000, so it > begin
}

// Hangul syllables are composed and decomposed arithmetically (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto* begin = data::kCombiningRanges;
  const auto* end = begin + data::kCombiningRangeCount;
  const auto* it = std::upper_bound(begin, end, c, [](char32_t x, const data::CombiningRange& r) { return x < r.first; });
  if (it == begin) return 0;
  --it;
  return c <= it->last ? it->ccc : 0;
}

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (c >= 0xC0) {
    const auto* begin = data::kDecompositions;
    const auto* end = begin + data::kDecompositionCount;
    const auto* it = std::lower_bound(begin, end, c, [](const data::Decomposition& d, char32_t x) { return d.cp < x; });
    if (it != end && it->cp == c) {
      out.append(data::kDecompositionPool + it->offset, it->length);
      return;
    }
  }
  out.push_back(c);
}

char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* begin = data::kCompositions;
  const auto* end = begin + data::kCompositionCount;
  const auto* it = std::lower_bound(begin, end, std::pair{a, b}, [](const data::Composition& x, std::pair<char32_t, char32_t> key) {
    return x.first != key.first ? x.first < key.first : x.second < key.second;
  });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

bool continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// Bytes of a well-formed sequence starting at s[i] (0 when ill-formed), and how many bytes of it
// are a valid prefix (the maximal subpart Unicode's substitution rule replaces by one U+FFFD).
size_t sequence_length(std::string_view s, size_t i, size_t& valid_prefix) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) n = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : !continuation(b)) return 0;
    valid_prefix = k + 1;
  }
  return n;
}

}  // namespace

char_class classify(char32_t c) {
  static const std::array<char_class, 256> latin1 = [] {
    std::array<char_class, 256> t{};
    for (char32_t x = 0; x < 256; ++x) t[x] = classify_slow(x);
    return t;
  }();
  return c < 256 ? latin1[c] : classify_slow(c);
}

bool is_word(char32_t c) {
  switch (classify(c)) {
    case char_class::letter:
    case char_class::mark:
    case char_class::decimal_number:
    case char_class::letter_number:
    case char_class::connector_punctuation:
    case char_class::join_control:
    case char_class::alphabetic_symbol: return true;
    default: return false;
  }
}

const char* version() { return data::kVersion; }

bool decode_utf8(std::string_view s, size_t& i, char32_t& c) {
  size_t prefix;
  const size_t n = sequence_length(s, i, prefix);
  if (n == 0) return false;
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (n == 1) {
    c = b0;
  } else {
    c = b0 & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) c = c << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  }
  i += n;
  return true;
}

size_t find_invalid_utf8(std::string_view s) {
  char32_t c;
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
    } else if (!decode_utf8(s, i, c)) {
      return i;
    }
  }
  return std::string_view::npos;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(char(c));
  } else if (c < 0x800) {
    out.push_back(char(0xC0 | c >> 6));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(char(0xE0 | c >> 12));
    out.push_back(char(0x80 | (c >> 6 & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else {
    out.push_back(char(0xF0 | c >> 18));
    out.push_back(char(0x80 | (c >> 12 & 0x3F)));
    out.push_back(char(0x80 | (c >> 6 & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    size_t prefix;
    const size_t n = sequence_length(bytes, i, prefix);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += prefix;
    } else {
      out.append(bytes.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string nfc(std::string_view s) {
  std::u32string cps;
  cps.reserve(s.size());
  bool trivial = true;  // nothing below U+0300 decomposes into or composes with anything else there
  for (size_t i = 0; i < s.size();) {
    char32_t c;
    if (!decode_utf8(s, i, c)) {
      c = 0xFFFD;  // callers pass valid UTF-8; keep going rather than loop
      ++i;
    }
    trivial = trivial && c < 0x300;
    cps.push_back(c);
  }
  if (trivial) return std::string(s);

  std::u32string d;
  d.reserve(cps.size() + 8);
  for (char32_t c : cps) decompose(c, d);

  // Canonical ordering: each run of non-starters stable-sorted by combining class.
  std::vector<uint8_t> cc(d.size());
  for (size_t i = 0; i < d.size(); ++i) cc[i] = combining_class(d[i]);
  for (size_t i = 0; i < d.size();) {
    if (cc[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && cc[j] != 0) ++j;
    if (j - i > 1) {
      std::vector<std::pair<uint8_t, char32_t>> run;
      for (size_t k = i; k < j; ++k) run.emplace_back(cc[k], d[k]);
      std::stable_sort(run.begin(), run.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (size_t k = i; k < j; ++k) std::tie(cc[k], d[k]) = run[k - i];
    }
    i = j;
  }

  // Canonical composition: a character joins the last starter unless blocked by one in between
  // of class zero or of a class not below its own.
  std::u32string r;
  r.reserve(d.size());
  size_t starter = std::u32string::npos;
  uint8_t last_cc = 0;  // class of the last character kept after the starter
  for (size_t i = 0; i < d.size(); ++i) {
    const char32_t c = d[i];
    const uint8_t k = cc[i];
    if (starter != std::u32string::npos) {
      const bool adjacent = r.size() == starter + 1;
      if (adjacent || (last_cc != 0 && last_cc < k)) {
        if (const char32_t composite = compose(r[starter], c)) {
          r[starter] = composite;
          continue;
        }
      }
    }
    if (k == 0) {
      starter = r.size();
      last_cc = 0;
    } else {
      last_cc = k;
    }
    r.push_back(c);
  }
  std::string out;
  out.reserve(s.size());
  for (char32_t c : r) append_utf8(out, c);
  return out;
}

}  // namespace mixq::unicode
