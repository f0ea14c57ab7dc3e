#include "calib/bpe_tokenizer.hpp"

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/unicode_text.hpp"

namespace mixq {

using json = nlohmann::json;

namespace {

// ---- text ------------------------------------------------------------------------------------

// Code points of valid UTF-8 with the byte offset of each (and one past the end).
struct decoded {
  std::u32string cps;
  std::vector<size_t> at;
};

decoded decode_all(std::string_view s) {
  decoded d;
  d.cps.reserve(s.size());
  d.at.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    d.at.push_back(i);
    char32_t c;
    if (!unicode::decode_utf8(s, i, c)) {  // callers validate; never loop
      c = 0xFFFD;
      ++i;
    }
    d.cps.push_back(c);
  }
  d.at.push_back(s.size());
  return d;
}

// GPT-2's byte <-> printable character table: printable Latin-1 bytes stand for themselves, the
// rest take 256, 257, ... in byte order, so every token is a printable string.
struct byte_table {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 324> to_byte{};  // code points < 324 cover all of to_char

  byte_table() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? char32_t(b) : next++;
      to_byte[to_char[b]] = int16_t(b);
    }
  }
};
const byte_table& bytes_table() {
  static const byte_table t;
  return t;
}

std::string byte_level_map(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char b : s) unicode::append_utf8(out, bytes_table().to_char[b]);
  return out;
}

// ---- pre-tokenizer patterns ------------------------------------------------------------------

enum class split_pattern { gpt2, llama3, qwen2 };

constexpr std::string_view kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool is_l(char32_t c) { return unicode::is_letter(c); }
bool is_n(char32_t c) { return unicode::is_number(c); }
bool is_s(char32_t c) { return unicode::is_white_space(c); }
bool is_other(char32_t c) { return !is_s(c) && !is_l(c) && !is_n(c); }  // [^\s\p{L}\p{N}]
bool is_crlf(char32_t c) { return c == '\r' || c == '\n'; }

// Simple case folding for the contraction letters: only U+017F LONG S folds onto one of them.
char32_t fold(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';
  return c;
}

// Length of 's 't 're 've 'm 'll 'd at i (0 if none), case-insensitively when asked.
size_t contraction(const std::u32string& t, size_t i, bool ignore_case) {
  if (t[i] != '\'' || i + 1 >= t.size()) return 0;
  const auto f = [&](char32_t c) { return ignore_case ? fold(c) : c; };
  const char32_t a = f(t[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= t.size()) return 0;
  const char32_t b = f(t[i + 2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

template <class Pred>
size_t run(const std::u32string& t, size_t i, Pred p, size_t limit = std::numeric_limits<size_t>::max()) {
  size_t j = i;
  while (j < t.size() && j - i < limit && p(t[j])) ++j;
  return j - i;
}

// The whitespace alternatives shared by all three patterns: \s+(?!\S)|\s+ (the lookahead gives
// back the last whitespace character when a non-space follows the run).
size_t trailing_space_rule(const std::u32string& t, size_t i) {
  const size_t n = run(t, i, is_s);
  if (n == 0) return 0;
  if (i + n == t.size() || n == 1) return n;
  return n - 1;
}

// Length of the leftmost-first match of the pattern at i (0: none), as Oniguruma matches it.
size_t match_at(split_pattern p, const std::u32string& t, size_t i) {
  const char32_t c = t[i];
  const bool has_next = i + 1 < t.size();
  if (p == split_pattern::gpt2) {
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    if (size_t n = contraction(t, i, false)) return n;
    const size_t sp = c == ' ' && has_next ? 1 : 0;  // the optional space, tried first
    for (bool (*cls)(char32_t) : {is_l, is_n, is_other}) {
      if (sp && cls(t[i + 1])) return 1 + run(t, i + 1, cls);
      if (cls(c)) return run(t, i, cls);
    }
    return trailing_space_rule(t, i);
  }
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+   (Qwen2: \p{N} instead of \p{N}{1,3})
  if (size_t n = contraction(t, i, true)) return n;
  if (!is_crlf(c) && !is_l(c) && !is_n(c) && has_next && is_l(t[i + 1])) return 1 + run(t, i + 1, is_l);
  if (is_l(c)) return run(t, i, is_l);
  if (is_n(c)) return run(t, i, is_n, p == split_pattern::llama3 ? 3 : 1);
  {
    const size_t sp = c == ' ' && has_next && is_other(t[i + 1]) ? 1 : 0;
    if (is_other(t[i + sp])) {
      const size_t body = run(t, i + sp, is_other);
      return sp + body + run(t, i + sp + body, is_crlf);
    }
  }
  // \s*[\r\n]+: the greedy \s* gives back down to the run's last \r or \n.
  const size_t n = run(t, i, is_s);
  for (size_t k = n; k-- > 0;)
    if (is_crlf(t[i + k])) return k + 1;
  return trailing_space_rule(t, i);
}

// ---- pipeline configuration ------------------------------------------------------------------

struct pre_step {
  enum class kind { byte_level, split, digits } k;
  bool add_prefix_space = false, use_regex = false;  // byte_level
  split_pattern pattern = split_pattern::gpt2;       // split
  bool remove_matches = false;                       // split: Removed (else Isolated)
  bool individual_digits = false;                    // digits
};

struct added_token {
  int32_t id;
  std::string content;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Leftmost-longest matching of added tokens (what the library's Aho-Corasick automaton does),
// bucketed by first byte: few tokens share one, and real text rarely holds '<'.
struct added_matcher {
  struct entry {
    std::string pattern;  // the content, normalized for normalized tokens
    const added_token* token;
  };
  std::array<std::vector<entry>, 256> by_first_byte;  // longest pattern first
  bool empty = true;

  void add(const added_token* t, std::string pattern) {
    if (pattern.empty()) return;
    by_first_byte[static_cast<unsigned char>(pattern[0])].push_back({std::move(pattern), t});
    empty = false;
  }
  void finish() {
    for (auto& bucket : by_first_byte)
      std::stable_sort(bucket.begin(), bucket.end(),
                       [](const entry& a, const entry& b) { return a.pattern.size() > b.pattern.size(); });
  }
  // The first match at or after `from`: token and [start, end).
  const added_token* find(std::string_view s, size_t from, size_t& start, size_t& end) const {
    for (size_t i = from; i < s.size(); ++i) {
      for (const entry& e : by_first_byte[static_cast<unsigned char>(s[i])]) {
        if (s.compare(i, e.pattern.size(), e.pattern) == 0) {
          start = i;
          end = i + e.pattern.size();
          return e.token;
        }
      }
    }
    return nullptr;
  }
};

// A piece of the input: text still to tokenize, or an added token already found.
struct segment {
  std::string text;
  int32_t id = -1;
};

// Splits text on the matcher's tokens with the library's single_word / lstrip / rstrip rules.
void split_on_added(const std::string& s, const added_matcher& m, std::vector<segment>& out) {
  if (m.empty) {
    if (!s.empty()) out.push_back({s, -1});
    return;
  }
  size_t cursor = 0, from = 0, start = 0, end = 0;
  const auto char_before = [&](size_t at) {  // the code point ending at byte `at` (> 0)
    size_t p = at - 1;
    while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    char32_t c = 0;
    return unicode::decode_utf8(s, p, c) ? c : char32_t(0);
  };
  const auto char_at = [&](size_t at) {
    char32_t c = 0;
    return unicode::decode_utf8(s, at, c) ? c : char32_t(0);
  };
  while (const added_token* t = m.find(s, from, start, end)) {
    from = end;
    if (t->single_word) {
      const bool left_ok = start == 0 || !unicode::is_word(char_before(start));
      const bool right_ok = end == s.size() || !unicode::is_word(char_at(end));
      if (!left_ok || !right_ok) continue;
    }
    size_t a = start, b = end;
    if (t->lstrip) {
      size_t k = a;  // back over whitespace, but not into what an earlier token took
      while (k > 0 && unicode::is_white_space(char_before(k))) {
        --k;
        while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
      }
      a = std::max(k, cursor);
    }
    if (t->rstrip) {
      size_t k = b;
      char32_t c;
      for (size_t q = k; q < s.size() && unicode::decode_utf8(s, q, c) && unicode::is_white_space(c);) k = q;
      b = k;
    }
    if (cursor < a) out.push_back({s.substr(cursor, a - cursor), -1});
    out.push_back({std::string(), t->id});
    cursor = b;
  }
  if (cursor < s.size()) out.push_back({s.substr(cursor), -1});
}

}  // namespace

// ---- the tokenizer ---------------------------------------------------------------------------

struct bpe_tokenizer::impl {
  std::filesystem::path path;

  // model
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<int32_t> small_char_ids;  // vocab id of each one-character token below U+0200, or -1
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (left, right) -> (rank, merged)
  bool ignore_merges = false;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;

  bool nfc = false;
  std::vector<pre_step> pre_steps;
  std::vector<added_token> added;
  added_matcher raw_matcher, normalized_matcher;
  std::vector<int32_t> prefix, suffix;  // post-processor special tokens (single sequence)
  bool byte_level_decoder = false;

  std::vector<std::string> id_to_token;  // "" for gaps
  std::vector<uint8_t> id_is_special;
  int32_t id_count = 0;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;
  static constexpr size_t kCacheEntries = 100000, kCacheMaxBytes = 256;

  std::string normalize(std::string s) const { return nfc ? unicode::nfc(s) : std::move(s); }
  void pre_tokenize(std::string piece, std::vector<std::string>& out) const;
  void model_tokenize(const std::string& word, std::vector<int32_t>& ids) const;
  void merge_word(const std::string& word, std::vector<int32_t>& ids) const;
};

void bpe_tokenizer::impl::pre_tokenize(std::string piece, std::vector<std::string>& out) const {
  std::vector<std::string> cur{std::move(piece)}, next;
  for (const pre_step& st : pre_steps) {
    next.clear();
    for (std::string& p : cur) {
      if (p.empty()) continue;  // the library drops empty pieces after every step
      if (st.k == pre_step::kind::byte_level) {
        if (st.add_prefix_space && p[0] != ' ') p.insert(p.begin(), ' ');
        if (!st.use_regex) {
          next.push_back(byte_level_map(p));
          continue;
        }
      }
      const decoded d = decode_all(p);
      const size_t n = d.cps.size();
      const auto piece_of = [&](size_t a, size_t b) { return std::string_view(p).substr(d.at[a], d.at[b] - d.at[a]); };
      const auto emit = [&](std::string_view v) {
        if (v.empty()) return;
        next.emplace_back(st.k == pre_step::kind::byte_level ? byte_level_map(v) : std::string(v));
      };
      if (st.k == pre_step::kind::digits) {
        size_t i = 0;
        while (i < n) {
          size_t j = i + 1;
          const bool digit = unicode::is_number(d.cps[i]);
          if (!digit || !st.individual_digits)
            while (j < n && unicode::is_number(d.cps[j]) == digit) ++j;
          emit(piece_of(i, j));
          i = j;
        }
        continue;
      }
      const split_pattern pat = st.k == pre_step::kind::byte_level ? split_pattern::gpt2 : st.pattern;
      const bool keep_matches = !(st.k == pre_step::kind::split && st.remove_matches);
      size_t gap = 0;
      for (size_t i = 0; i < n;) {
        const size_t len = match_at(pat, d.cps, i);
        if (len == 0) {
          ++i;
          continue;
        }
        emit(piece_of(gap, i));
        if (keep_matches) emit(piece_of(i, i + len));
        i += len;
        gap = i;
      }
      emit(piece_of(gap, n));
    }
    std::swap(cur, next);
  }
  for (std::string& p : cur)
    if (!p.empty()) out.push_back(std::move(p));
}

void bpe_tokenizer::impl::model_tokenize(const std::string& word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges) {
    if (const auto it = vocab.find(word); it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex);
    if (const auto it = cache.find(word); it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> out;
  merge_word(word, out);
  ids.insert(ids.end(), out.begin(), out.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex);
    if (cache.size() < kCacheEntries) cache.emplace(word, std::move(out));
  }
}

// Rank-based BPE as the library runs it: a min-heap of candidate merges ordered by (rank,
// position) over a linked list of symbols; an entry is stale when its pair no longer stands there.
void bpe_tokenizer::impl::merge_word(const std::string& word, std::vector<int32_t>& ids) const {
  struct symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<symbol> sym;
  sym.reserve(word.size());
  int32_t pending_unk = -1;  // an unknown character not yet added (fuse_unk joins a run of them)
  const auto push = [&](int32_t id) {
    const auto n = int32_t(sym.size());
    if (n > 0) sym.back().next = n;
    sym.push_back({id, n - 1, -1, true});
  };
  for (size_t i = 0; i < word.size();) {
    const size_t b = i;
    char32_t c = 0xFFFD;
    if (!unicode::decode_utf8(word, i, c)) ++i;  // words are valid UTF-8; never loop
    int32_t id = -1;
    if (c < small_char_ids.size()) {
      id = small_char_ids[c];
    } else if (const auto it = vocab.find(word.substr(b, i - b)); it != vocab.end()) {
      id = it->second;
    }
    if (id >= 0) {
      if (pending_unk >= 0) push(pending_unk);
      pending_unk = -1;
      push(id);
    } else if (unk_id) {  // without an unk token the library drops the character
      if (pending_unk >= 0 && !fuse_unk) push(pending_unk);
      pending_unk = *unk_id;
    }
  }
  if (pending_unk >= 0) push(pending_unk);

  struct candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    const auto it = merges.find(uint64_t(uint32_t(a)) << 32 | uint32_t(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  std::priority_queue<candidate, std::vector<candidate>, std::greater<>> heap;
  for (size_t k = 0; k + 1 < sym.size(); ++k)
    if (const auto* m = lookup(sym[k].id, sym[k + 1].id)) heap.push({m->first, int32_t(k), m->second});
  while (!heap.empty()) {
    const candidate top = heap.top();
    heap.pop();
    symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    symbol& right = sym[left.next];
    const auto* m = lookup(left.id, right.id);
    if (!m || m->second != top.merged) continue;  // stale
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0)
      if (const auto* p = lookup(sym[left.prev].id, left.id)) heap.push({p->first, left.prev, p->second});
    if (left.next >= 0)
      if (const auto* q = lookup(left.id, sym[left.next].id)) heap.push({q->first, top.pos, q->second});
  }
  for (const symbol& s : sym)
    if (s.alive) ids.push_back(s.id);
}

// ---- loading ---------------------------------------------------------------------------------

namespace {

struct loader {
  const std::filesystem::path& path;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw token_file_error(fmt::format("{}: {} {}", path.string(), key, what));
  }
  [[noreturn]] void unsupported(const std::string& key, const std::string& what) const {
    throw unsupported_tokenizer_error(fmt::format("{}: {} {}", path.string(), key, what));
  }
  const json& need(const json& j, const std::string& where, const char* key) const {
    const std::string k = where.empty() ? key : where + "." + key;
    if (!j.is_object() || !j.contains(key)) fail(k, "is missing");
    return j.at(key);
  }
  std::string str(const json& j, const std::string& key) const {
    if (!j.is_string()) fail(key, fmt::format("should be a string, not {}", j.dump()));
    return j.get<std::string>();
  }
  bool flag(const json& obj, const std::string& where, const char* key, bool fallback) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean()) fail(where + "." + key, "should be true or false");
    return obj.at(key).get<bool>();
  }
  int32_t id(const json& j, const std::string& key) const {
    if (!j.is_number_integer() || j.get<int64_t>() < 0 || j.get<int64_t>() > std::numeric_limits<int32_t>::max())
      fail(key, fmt::format("should be a token id (a non-negative integer), not {}", j.dump()));
    return int32_t(j.get<int64_t>());
  }
  std::string type_of(const json& j, const std::string& where) const {
    if (!j.is_object()) fail(where, fmt::format("should be an object, not {}", j.dump()));
    return str(need(j, where, "type"), where + ".type");
  }
};

void load_normalizer(const loader& L, const json& j, const std::string& where, bool& nfc) {
  if (j.is_null()) return;
  const std::string type = L.type_of(j, where);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    const json& list = L.need(j, where, "normalizers");
    if (!list.is_array()) L.fail(where + ".normalizers", "should be a list");
    for (size_t i = 0; i < list.size(); ++i) load_normalizer(L, list[i], fmt::format("{}.normalizers[{}]", where, i), nfc);
  } else {
    L.unsupported(where + ".type", fmt::format("'{}' is not a supported normalizer (supported: NFC, Sequence)", type));
  }
}

void load_pre_tokenizer(const loader& L, const json& j, const std::string& where, std::vector<pre_step>& steps) {
  if (j.is_null()) return;
  const std::string type = L.type_of(j, where);
  if (type == "Sequence") {
    const json& list = L.need(j, where, "pretokenizers");
    if (!list.is_array()) L.fail(where + ".pretokenizers", "should be a list");
    for (size_t i = 0; i < list.size(); ++i)
      load_pre_tokenizer(L, list[i], fmt::format("{}.pretokenizers[{}]", where, i), steps);
  } else if (type == "ByteLevel") {
    pre_step s{pre_step::kind::byte_level};
    s.add_prefix_space = L.flag(j, where, "add_prefix_space", true);
    s.use_regex = L.flag(j, where, "use_regex", true);
    steps.push_back(s);
  } else if (type == "Digits") {
    pre_step s{pre_step::kind::digits};
    s.individual_digits = L.flag(j, where, "individual_digits", false);
    steps.push_back(s);
  } else if (type == "Split") {
    pre_step s{pre_step::kind::split};
    const json& pattern = L.need(j, where, "pattern");
    if (!pattern.is_object() || !pattern.contains("Regex"))
      L.unsupported(where + ".pattern", fmt::format("should be {{\"Regex\": ...}}; other patterns are not supported: {}", pattern.dump()));
    const std::string re = L.str(pattern.at("Regex"), where + ".pattern.Regex");
    if (re == kGpt2Pattern) s.pattern = split_pattern::gpt2;
    else if (re == kLlama3Pattern) s.pattern = split_pattern::llama3;
    else if (re == kQwen2Pattern) s.pattern = split_pattern::qwen2;
    else
      L.unsupported(where + ".pattern.Regex",
                    fmt::format("is not one of the supported split patterns (GPT-2, Llama 3, Qwen2): '{}'", re));
    const std::string behavior = L.str(L.need(j, where, "behavior"), where + ".behavior");
    if (behavior == "Removed") s.remove_matches = true;
    else if (behavior != "Isolated")
      L.unsupported(where + ".behavior", fmt::format("'{}' is not supported (supported: Isolated, Removed)", behavior));
    if (L.flag(j, where, "invert", false)) L.unsupported(where + ".invert", "true is not supported");
    steps.push_back(s);
  } else {
    L.unsupported(where + ".type",
                  fmt::format("'{}' is not a supported pre-tokenizer (supported: ByteLevel, Split, Digits, Sequence)", type));
  }
}

// The special tokens the single-sequence template puts before and after the text.
void load_post_processor(const loader& L, const json& j, const std::string& where, std::vector<int32_t>& prefix,
                         std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = L.type_of(j, where);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    const json& list = L.need(j, where, "processors");
    if (!list.is_array()) L.fail(where + ".processors", "should be a list");
    for (size_t i = 0; i < list.size(); ++i)
      load_post_processor(L, list[i], fmt::format("{}.processors[{}]", where, i), prefix, suffix);
    return;
  }
  if (type != "TemplateProcessing")
    L.unsupported(where + ".type",
                  fmt::format("'{}' is not a supported post-processor (supported: TemplateProcessing, ByteLevel, Sequence)", type));
  const json& single = L.need(j, where, "single");
  const json& specials = L.need(j, where, "special_tokens");
  if (!single.is_array()) L.fail(where + ".single", "should be a list");
  bool seen_text = false;
  std::vector<int32_t> before, after;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string key = fmt::format("{}.single[{}]", where, i);
    const json& piece = single[i];
    if (piece.is_object() && piece.contains("Sequence")) {
      const std::string which = L.str(L.need(piece["Sequence"], key + ".Sequence", "id"), key + ".Sequence.id");
      if (which != "A" || seen_text) L.fail(key, "should be the one sequence A of a single-sequence template");
      seen_text = true;
    } else if (piece.is_object() && piece.contains("SpecialToken")) {
      const std::string name = L.str(L.need(piece["SpecialToken"], key + ".SpecialToken", "id"), key + ".SpecialToken.id");
      if (!specials.is_object() || !specials.contains(name))
        L.fail(key, fmt::format("names '{}', which is not in {}.special_tokens", name, where));
      const json& ids = L.need(specials[name], fmt::format("{}.special_tokens.{}", where, name), "ids");
      if (!ids.is_array()) L.fail(fmt::format("{}.special_tokens.{}.ids", where, name), "should be a list");
      for (size_t k = 0; k < ids.size(); ++k)
        (seen_text ? after : before).push_back(L.id(ids[k], fmt::format("{}.special_tokens.{}.ids[{}]", where, name, k)));
    } else {
      L.fail(key, fmt::format("should be a Sequence or a SpecialToken, not {}", piece.dump()));
    }
  }
  if (!seen_text) L.fail(where + ".single", "has no Sequence A");
  prefix.insert(prefix.end(), before.begin(), before.end());
  suffix.insert(suffix.end(), after.begin(), after.end());
}

}  // namespace

bpe_tokenizer bpe_tokenizer::parse(std::string_view json_text, const std::filesystem::path& name) {
  const loader L{name};
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw token_file_error(fmt::format("{}: not JSON (at byte {}: {})", name.string(), e.byte, e.what()));
  }
  if (!root.is_object()) L.fail("the top level", "should be a JSON object");
  auto t = std::make_shared<impl>();
  t->path = name;

  // model
  const json& model = L.need(root, "", "model");
  const std::string type = L.type_of(model, "model");
  if (type != "BPE") L.unsupported("model.type", fmt::format("'{}' is not supported (only BPE)", type));
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
    L.unsupported("model.dropout", fmt::format("{} is not supported (only null or 0)", model["dropout"].dump()));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && model[key] != "")
      L.unsupported(fmt::format("model.{}", key), fmt::format("{} is not supported (only null)", model[key].dump()));
  if (L.flag(model, "model", "byte_fallback", false))
    L.unsupported("model.byte_fallback", "true is not supported (a SentencePiece-style BPE; use its tokenizer.model)");
  t->ignore_merges = L.flag(model, "model", "ignore_merges", false);
  t->fuse_unk = L.flag(model, "model", "fuse_unk", false);

  const json& vocab = L.need(model, "model", "vocab");
  if (!vocab.is_object()) L.fail("model.vocab", "should be an object of token: id");
  std::unordered_map<int32_t, std::string> owner;
  int32_t max_id = -1;
  for (const auto& [token, v] : vocab.items()) {
    const int32_t id = L.id(v, fmt::format("model.vocab['{}']", token));
    if (const auto [it, fresh] = owner.emplace(id, token); !fresh)
      L.fail("model.vocab", fmt::format("gives id {} to both '{}' and '{}'", id, it->second, token));
    t->vocab.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    const std::string unk = L.str(model["unk_token"], "model.unk_token");
    const auto it = t->vocab.find(unk);
    if (it == t->vocab.end()) L.fail("model.unk_token", fmt::format("'{}' is not in model.vocab", unk));
    t->unk_id = it->second;
  }

  const json& merges = L.need(model, "model", "merges");
  if (!merges.is_array()) L.fail("model.merges", "should be a list");
  uint32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string key = fmt::format("model.merges[{}]", i);
    std::string a, b;
    if (merges[i].is_string()) {
      const std::string line = merges[i].get<std::string>();
      if (line.starts_with("#version")) continue;  // a merges.txt header, skipped as the library does
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        L.fail(key, fmt::format("'{}' should be two tokens separated by one space", line));
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (merges[i].is_array() && merges[i].size() == 2 && merges[i][0].is_string() && merges[i][1].is_string()) {
      a = merges[i][0].get<std::string>();
      b = merges[i][1].get<std::string>();
    } else {
      L.fail(key, fmt::format("should be \"a b\" or [\"a\", \"b\"], not {}", merges[i].dump()));
    }
    const auto find = [&](const std::string& tok) {
      const auto it = t->vocab.find(tok);
      if (it == t->vocab.end()) L.fail(key, fmt::format("names '{}', which is not in model.vocab", tok));
      return it->second;
    };
    const int32_t ia = find(a), ib = find(b), im = find(a + b);
    // A repeated pair keeps its last rank, as the library's map does.
    t->merges[uint64_t(uint32_t(ia)) << 32 | uint32_t(ib)] = {rank++, im};
  }

  // added tokens
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& list = root["added_tokens"];
    if (!list.is_array()) L.fail("added_tokens", "should be a list");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = fmt::format("added_tokens[{}]", i);
      const json& a = list[i];
      added_token tok{L.id(L.need(a, where, "id"), where + ".id"), L.str(L.need(a, where, "content"), where + ".content"),
                      L.flag(a, where, "single_word", false), L.flag(a, where, "lstrip", false),
                      L.flag(a, where, "rstrip", false), L.flag(a, where, "normalized", true),
                      L.flag(a, where, "special", false)};
      if (tok.content.empty()) continue;  // the library ignores them
      // An added token may only repeat a vocab entry exactly (GPT-2's <|endoftext|>).
      if (const auto it = t->vocab.find(tok.content); it != t->vocab.end() && it->second != tok.id)
        L.fail(where, fmt::format("gives '{}' id {}, but model.vocab gives it {}", tok.content, tok.id, it->second));
      if (const auto [it, fresh] = owner.emplace(tok.id, tok.content); !fresh && it->second != tok.content)
        L.fail(where, fmt::format("gives id {} to '{}', which '{}' has already", tok.id, tok.content, it->second));
      max_id = std::max(max_id, tok.id);
      t->added.push_back(std::move(tok));
    }
  }

  // The library matches special tokens first, then the others, in file order within each.
  std::vector<const added_token*> order;
  for (const auto& a : t->added)
    if (a.special) order.push_back(&a);
  for (const auto& a : t->added)
    if (!a.special) order.push_back(&a);

  load_normalizer(L, root.value("normalizer", json()), "normalizer", t->nfc);
  for (const added_token* a : order) {
    if (a->normalized) t->normalized_matcher.add(a, t->normalize(a->content));
    else t->raw_matcher.add(a, a->content);
  }
  t->raw_matcher.finish();
  t->normalized_matcher.finish();

  load_pre_tokenizer(L, root.value("pre_tokenizer", json()), "pre_tokenizer", t->pre_steps);
  if (std::none_of(t->pre_steps.begin(), t->pre_steps.end(), [](const pre_step& s) { return s.k == pre_step::kind::byte_level; }))
    L.unsupported("pre_tokenizer", "has no ByteLevel step (only byte-level BPE is supported)");
  load_post_processor(L, root.value("post_processor", json()), "post_processor", t->prefix, t->suffix);
  const json decoder = root.value("decoder", json());
  if (!decoder.is_null()) {
    const std::string dt = L.type_of(decoder, "decoder");
    t->byte_level_decoder = dt == "ByteLevel";
  }

  // reverse vocabulary
  t->id_count = max_id + 1;
  t->id_to_token.assign(size_t(t->id_count), std::string());
  t->id_is_special.assign(size_t(t->id_count), 0);
  for (const auto& [tok, id] : t->vocab) t->id_to_token[size_t(id)] = tok;
  for (const auto& a : t->added) {
    t->id_to_token[size_t(a.id)] = a.content;
    t->id_is_special[size_t(a.id)] = a.special;
  }
  for (int32_t id : t->prefix)
    if (id >= t->id_count) L.fail("post_processor", fmt::format("uses id {}, which no token has", id));
  for (int32_t id : t->suffix)
    if (id >= t->id_count) L.fail("post_processor", fmt::format("uses id {}, which no token has", id));
  t->small_char_ids.assign(0x200, -1);
  for (char32_t c = 0; c < 0x200; ++c) {
    std::string s;
    unicode::append_utf8(s, c);
    if (const auto it = t->vocab.find(s); it != t->vocab.end()) t->small_char_ids[c] = it->second;
  }

  bpe_tokenizer out;
  out.impl_ = std::move(t);
  return out;
}

bpe_tokenizer bpe_tokenizer::open(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw token_file_error(fmt::format("{}: cannot open", file.string()));
  std::ostringstream s;
  s << in.rdbuf();
  return parse(s.str(), file);
}

// ---- use -------------------------------------------------------------------------------------

std::vector<int32_t> bpe_tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const impl& t = *impl_;
  if (const size_t bad = unicode::find_invalid_utf8(text); bad != std::string_view::npos)
    throw token_file_error(fmt::format("{}: cannot encode text that is not valid UTF-8 (byte {} of it)", t.path.string(), bad));
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = t.prefix;
  std::vector<segment> raw, pieces;
  split_on_added(std::string(text), t.raw_matcher, raw);
  for (segment& r : raw) {
    if (r.id >= 0) {
      pieces.push_back(std::move(r));
      continue;
    }
    split_on_added(t.normalize(std::move(r.text)), t.normalized_matcher, pieces);
  }
  std::vector<std::string> words;
  for (segment& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
      continue;
    }
    words.clear();
    t.pre_tokenize(std::move(p.text), words);
    for (const std::string& w : words) t.model_tokenize(w, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), t.suffix.begin(), t.suffix.end());
  return ids;
}

std::string bpe_tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const impl& t = *impl_;
  if (!t.byte_level_decoder)
    throw token_file_error(fmt::format("{}: decoding needs a ByteLevel decoder", t.path.string()));
  std::string bytes;
  const byte_table& table = bytes_table();
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    if (id < 0 || id >= t.id_count || t.id_to_token[size_t(id)].empty())
      throw token_file_error(fmt::format("{}: cannot decode id {} (at {}): no token has it", t.path.string(), id, k));
    if (skip_special_tokens && t.id_is_special[size_t(id)]) continue;
    const std::string& tok = t.id_to_token[size_t(id)];
    // A token of byte characters gives those bytes; any other (an added token) gives itself.
    std::string mapped;
    bool all_bytes = true;
    for (size_t i = 0; i < tok.size() && all_bytes;) {
      char32_t c;
      if (!unicode::decode_utf8(tok, i, c) || c >= table.to_byte.size() || table.to_byte[c] < 0) all_bytes = false;
      else mapped.push_back(char(table.to_byte[c]));
    }
    bytes += all_bytes ? mapped : tok;
  }
  return unicode::utf8_lossy(bytes);
}

std::vector<std::string> bpe_tokenizer::pre_tokenize(std::string_view text) const {
  if (const size_t bad = unicode::find_invalid_utf8(text); bad != std::string_view::npos)
    throw token_file_error(fmt::format("{}: cannot pre-tokenize text that is not valid UTF-8 (byte {} of it)",
                                       impl_->path.string(), bad));
  std::vector<std::string> out;
  impl_->pre_tokenize(std::string(text), out);
  return out;
}

std::optional<int32_t> bpe_tokenizer::bos_id() const {
  if (impl_->prefix.size() == 1) return impl_->prefix[0];
  return std::nullopt;
}

int32_t bpe_tokenizer::vocab_size() const { return impl_->id_count; }
const std::filesystem::path& bpe_tokenizer::path() const { return impl_->path; }

std::optional<int32_t> bpe_tokenizer::token_to_id(std::string_view token) const {
  for (const auto& a : impl_->added)
    if (a.content == token) return a.id;
  if (const auto it = impl_->vocab.find(std::string(token)); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

}  // namespace mixq
