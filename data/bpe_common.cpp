// UTF-8 helpers, the GPT-2 byte-level table and the PCRE2 regex wrapper shared by tokenizer and trainer.
// Lossy UTF-8 follows Rust's from_utf8_lossy (one U+FFFD per maximal invalid subpart) so decode matches HF.
#include "data/bpe_common.h"

#include <mutex>

#include "core/error.h"

namespace polder::data::bpe {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_codepoint(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  int n = utf8_len(c);
  if (i + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

namespace {
// Number of bytes of the valid UTF-8 sequence at s[i], or -(length of the maximal invalid subpart).
int check_sequence(std::string_view s, size_t i) {
  auto at = [&](size_t k) -> int { return k < s.size() ? static_cast<unsigned char>(s[k]) : -1; };
  int c = at(i);
  if (c < 0x80) return 1;
  int need = 0, lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    int b = at(i + k);
    int l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return need + 1;
}
}  // namespace

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    int n = check_sequence(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += -n;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    auto c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int n = check_sequence(bytes, i);
    if (n < 0) return false;
    i += n;
  }
  return true;
}

bool is_unicode_whitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table = [] {
    ByteLevelTable t{};
    // GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to 256, 257, ... in order.
    std::vector<int> printable;
    for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
    std::array<bool, 256> is_printable{};
    for (int b : printable) is_printable[b] = true;
    int next = 256, rank = 0;
    for (int b : printable) t.byte_to_cp[b] = b;
    for (int b = 0; b < 256; ++b)
      if (!is_printable[b]) t.byte_to_cp[b] = next++;
    // Vocabulary order of GPT-2 and Llama 3: the printable bytes first, then the remapped ones.
    for (int b : printable) t.order[rank++] = static_cast<uint8_t>(b);
    for (int b = 0; b < 256; ++b)
      if (!is_printable[b]) t.order[rank++] = static_cast<uint8_t>(b);
    for (int b = 0; b < 256; ++b) append_utf8(t.byte_to_str[b], t.byte_to_cp[b]);
    return t;
  }();
  return table;
}

int32_t ByteLevelTable::cp_to_byte(uint32_t cp) const {
  if (cp < 256)
    return (cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE) ? int32_t(cp) : -1;
  if (cp >= 256 + 68) return -1;  // 68 bytes are remapped
  // The remapped bytes are the non-printable ones in increasing order.
  static const std::array<uint8_t, 68> remapped = [] {
    std::array<uint8_t, 68> r{};
    int k = 0;
    for (int b = 0; b < 256; ++b)
      if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE))
        r[k++] = static_cast<uint8_t>(b);
    return r;
  }();
  return remapped[cp - 256];
}

std::string byte_level_encode(std::string_view bytes) {
  const auto& t = byte_level_table();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += t.byte_to_str[c];
  return out;
}

namespace {
// PCRE2 (UCP) counts U+180E (MONGOLIAN VOWEL SEPARATOR, Zs before Unicode 6.3) as \s; HF's Oniguruma does
// not. \s and \S are rewritten to the explicit Unicode White_Space set (what Oniguruma uses) so both agree.
constexpr const char* kWhiteSpace =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
std::string onig_compatible(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char d = p[++i];
      if (d == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (d == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else {
        out += c;
        out += d;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a literal ] first in the class
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}
}  // namespace

Regex::Regex(const std::string& original) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  const std::string pattern = onig_compatible(original);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                        &err, &offset, nullptr);
  if (code_ == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    POLDER_FAIL("regex '{}' does not compile at offset {}: {}", pattern, offset,
                reinterpret_cast<char*>(buf));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  pcre2_code_free(code_);
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  // Match data is per thread and grown on demand, so const find_all is thread-safe.
  struct MatchData {
    pcre2_match_data* md = nullptr;
    ~MatchData() { pcre2_match_data_free(md); }
  };
  thread_local MatchData tl;
  if (tl.md == nullptr) tl.md = pcre2_match_data_create(16, nullptr);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, tl.md, nullptr)
                  : pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, tl.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    POLDER_CHECK(rc >= 0, "regex match failed with PCRE2 error {}", rc);
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tl.md);
    size_t s = ov[0], e = ov[1];
    if (e == s) {  // empty match: skip one code point
      if (s >= text.size()) break;
      pos = s + utf8_len(static_cast<unsigned char>(text[s]));
      continue;
    }
    out.emplace_back(s, e);
    pos = e;
  }
}

}  // namespace polder::data::bpe
