// HF tokenizer.json loading, encoding and decoding. The pipeline mirrors the `tokenizers` library step by
// step: added tokens split out (raw text, then normalized text) -> normalizer -> pre-tokenizer -> BPE per
// piece -> post-processor; decode runs the decoder chain. Empty pieces are dropped after every step, as HF
// does. BPE merging replicates HF's Word::merge_all (heap of (rank, position)); results are cached per thread
// per word. NFC/NFD/NFKC/NFKD go through utf8proc, held to Unicode 9.0 as HF (kUnicode9Ranges).
#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

#include <utf8proc.h>

#include "core/error.h"
#include "data/bpe_common.h"

namespace polder::data {

using nlohmann::json;

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// ---- JSON access with one-line errors
// ------------------------------------------------------------------------

const json& field(const json& j, const char* key, const std::string& where) {
  POLDER_CHECK(j.is_object() && j.contains(key), "tokenizer: {} has no field '{}'", where, key);
  return j.at(key);
}

std::string str_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  POLDER_CHECK(v.is_string(), "tokenizer: {}.{} is {} but a string was expected", where, key, v.dump());
  return v.get<std::string>();
}

bool bool_field(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return j.at(key).get<bool>();
}

std::string type_of(const json& j, const std::string& where) {
  POLDER_CHECK(j.is_object(), "tokenizer: {} is {} but an object was expected", where, j.dump());
  return str_field(j, "type", where);
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// A pattern of Split / Replace: {"String": "..."} (literal) or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::shared_ptr<bpe::Regex> regex;

  static Pattern parse(const json& j, const std::string& where) {
    Pattern p;
    if (j.is_string()) {
      p.literal = j.get<std::string>();
    } else if (j.is_object() && j.contains("String")) {
      p.literal = j.at("String").get<std::string>();
    } else if (j.is_object() && j.contains("Regex")) {
      p.regex = std::make_shared<bpe::Regex>(j.at("Regex").get<std::string>());
    } else {
      POLDER_FAIL("tokenizer: {}.pattern is {} but {{\"String\": ...}} or {{\"Regex\": ...}} was expected",
                  where, j.dump());
    }
    return p;
  }

  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    if (regex) {
      regex->find_all(text, out);
      return;
    }
    if (literal.empty()) return;
    size_t pos = 0;
    while ((pos = text.find(literal, pos)) != std::string_view::npos) {
      out.emplace_back(pos, pos + literal.size());
      pos += literal.size();
    }
  }
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& s) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  POLDER_FAIL(
      "tokenizer: split behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, "
      "Contiguous",
      s);
}

struct Range {
  size_t start, end;
  bool match;
};

// HF's NormalizedString::split: matches plus the gaps between them, combined according to the behavior.
void split_ranges(size_t n, const std::vector<std::pair<size_t, size_t>>& hits, Behavior behavior,
                  bool invert, std::vector<Range>& out) {
  std::vector<Range> m;
  size_t prev = 0;
  for (auto [s, e] : hits) {
    if (prev != s) m.push_back({prev, s, false});
    m.push_back({s, e, true});
    prev = e;
  }
  if (prev != n) m.push_back({prev, n, false});
  if (invert)
    for (auto& r : m) r.match = !r.match;
  out.clear();
  switch (behavior) {
    case Behavior::kIsolated:
      out = std::move(m);
      break;
    case Behavior::kRemoved:
      for (auto& r : m)
        if (!r.match) out.push_back(r);
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto& r : m) {
        if (r.match && !prev_match && !out.empty()) {
          out.back().end = r.end;
        } else {
          out.push_back(r);
        }
        prev_match = r.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (size_t k = m.size(); k-- > 0;) {
        auto& r = m[k];
        if (r.match && !prev_match && !out.empty()) {
          out.back().start = r.start;
        } else {
          out.push_back(r);
        }
        prev_match = r.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (auto& r : m) {
        if (r.match == prev_match && !out.empty()) {
          out.back().end = r.end;
        } else {
          out.push_back(r);
        }
        prev_match = r.match;
      }
      break;
    }
  }
}

// A piece of text moving through the pipeline. at_start: it begins at offset 0 of the original input
// (Metaspace's prepend_scheme "first" looks at this).
struct Piece {
  std::string text;
  bool at_start;
};

// ---- normalizers
// ---------------------------------------------------------------------------------------------

// HF's NFC/NFD/NFKC/NFKD run on the Unicode 9.0 tables of unicode-normalization-alignments 0.1.12, so
// characters assigned since stay as they are there (U+1FBF5 SEGMENTED DIGIT FIVE under NFKC, U+1DFA not
// reordered under NFD), while utf8proc knows them. utf8proc therefore normalizes only inside these ranges:
// each code point that normalization can touch and that Unicode 9.0 had lies inside; each one that it can
// touch and that Unicode 9.0 lacked, or that is unassigned in utf8proc's version (a newer utf8proc may assign
// it), lies outside. To Unicode 9.0 an unassigned character is a starter that never composes, so it cuts the
// text into runs that normalize independently. Generated by `make_tokenizer_fixtures.py unicode9` (265
// ranges, from utf8proc 15.0 and Unicode 9.0's Present_In).
// clang-format off
constexpr std::pair<uint32_t, uint32_t> kUnicode9Ranges[] = {
    {0x0, 0x377}, {0x37A, 0x37F}, {0x384, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x52F},
    {0x559, 0x58A}, {0x591, 0x5C7}, {0x5D0, 0x5EA}, {0x5EF, 0x5F4}, {0x600, 0x70D}, {0x70F, 0x74A},
    {0x7C0, 0x7FA}, {0x7FE, 0x82D}, {0x840, 0x85B}, {0x8D4, 0x983}, {0x993, 0x9A8}, {0x9AA, 0x9B0},
    {0x9BC, 0x9C4}, {0x9C7, 0x9C8}, {0x9CB, 0x9CE}, {0x9D7, 0x9D7}, {0x9DC, 0x9DD}, {0x9DF, 0x9E3},
    {0xA13, 0xA28}, {0xA2A, 0xA30}, {0xA32, 0xA33}, {0xA35, 0xA36}, {0xA38, 0xA39}, {0xA3C, 0xA3C},
    {0xA4B, 0xA4D}, {0xA59, 0xA5C}, {0xA5E, 0xA5E}, {0xABC, 0xAC5}, {0xACB, 0xACD}, {0xB13, 0xB28},
    {0xB3C, 0xB44}, {0xB47, 0xB48}, {0xB4B, 0xB4D}, {0xB55, 0xB57}, {0xB5C, 0xB5D}, {0xB92, 0xB95},
    {0xBBE, 0xBC2}, {0xBC6, 0xBC8}, {0xBCA, 0xBCD}, {0xBD7, 0xBD7}, {0xC46, 0xC48}, {0xC4A, 0xC4D},
    {0xC55, 0xC56}, {0xCBC, 0xCC4}, {0xCC6, 0xCC8}, {0xCCA, 0xCCD}, {0xCD5, 0xCD6}, {0xD3D, 0xD44},
    {0xD46, 0xD48}, {0xD4A, 0xD4F}, {0xD54, 0xD63}, {0xDCA, 0xDCA}, {0xDCF, 0xDD4}, {0xDD8, 0xDDF},
    {0xE01, 0xE3A}, {0xE3F, 0xE5B}, {0xEA7, 0xEB9}, {0xEC8, 0xECE}, {0xEDC, 0xEDF}, {0xF00, 0xF47},
    {0xF49, 0xF6C}, {0xF71, 0xF97}, {0xF99, 0xFBC}, {0xFBE, 0xFCC}, {0x1000, 0x10C5}, {0x10D0, 0x1248},
    {0x135D, 0x137C}, {0x1700, 0x1714}, {0x171F, 0x1736}, {0x1780, 0x17DD}, {0x1880, 0x18AA},
    {0x1930, 0x193B}, {0x19DE, 0x1A1B}, {0x1A60, 0x1A7C}, {0x1A7F, 0x1A89}, {0x1AB0, 0x1ABE},
    {0x1B00, 0x1B4C}, {0x1B50, 0x1B7E}, {0x1B80, 0x1BF3}, {0x1BFC, 0x1C37}, {0x1CD0, 0x1CFA},
    {0x1D00, 0x1DF5}, {0x1DFB, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D},
    {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D},
    {0x1F80, 0x1FB4}, {0x1FB6, 0x1FC4}, {0x1FC6, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FDD, 0x1FEF},
    {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFE}, {0x2000, 0x2064}, {0x2066, 0x2071}, {0x2074, 0x208E},
    {0x2090, 0x209C}, {0x20A0, 0x20C0}, {0x20D0, 0x20F0}, {0x2100, 0x218B}, {0x2190, 0x2426},
    {0x2460, 0x2B73}, {0x2B97, 0x2CF3}, {0x2D6F, 0x2D70}, {0x2D7F, 0x2D96}, {0x2DE0, 0x2E5D},
    {0x2E9B, 0x2EF3}, {0x2F00, 0x2FD5}, {0x3000, 0x303F}, {0x3041, 0x3096}, {0x3099, 0x30FF},
    {0x3131, 0x318E}, {0x3190, 0x31E3}, {0x31F0, 0x321E}, {0x3220, 0x32FE}, {0x3300, 0xA48C},
    {0xA640, 0xA6F7}, {0xA700, 0xA7CA}, {0xA7F5, 0xA82B}, {0xA880, 0xA8C5}, {0xA8E0, 0xA953},
    {0xA980, 0xA9CD}, {0xAA5C, 0xAAC2}, {0xAADB, 0xAAF6}, {0xAB30, 0xAB68}, {0xAB70, 0xABED},
    {0xAC00, 0xD7A3}, {0xD800, 0xFA6D}, {0xFA70, 0xFAD9}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17},
    {0xFB1D, 0xFB36}, {0xFB38, 0xFB3C}, {0xFB3E, 0xFB3E}, {0xFB40, 0xFB41}, {0xFB43, 0xFB44},
    {0xFB46, 0xFBC2}, {0xFBD3, 0xFD8F}, {0xFD92, 0xFDC7}, {0xFDCF, 0xFE19}, {0xFE20, 0xFE52},
    {0xFE54, 0xFE66}, {0xFE68, 0xFE6B}, {0xFE70, 0xFE74}, {0xFE76, 0xFEFC}, {0xFF01, 0xFFBE},
    {0xFFC2, 0xFFC7}, {0xFFCA, 0xFFCF}, {0xFFD2, 0xFFD7}, {0xFFDA, 0xFFDC}, {0xFFE0, 0xFFE6},
    {0xFFE8, 0xFFEE}, {0x101D0, 0x101FD}, {0x102E0, 0x102FB}, {0x10350, 0x1037A}, {0x10A0C, 0x10A13},
    {0x10A38, 0x10A3A}, {0x10A3F, 0x10A48}, {0x10AC0, 0x10AE6}, {0x11000, 0x1104D}, {0x1107F, 0x110C2},
    {0x11100, 0x11134}, {0x11150, 0x11176}, {0x11180, 0x111DF}, {0x11213, 0x11241}, {0x112B0, 0x112EA},
    {0x1133C, 0x11344}, {0x11347, 0x11348}, {0x1134B, 0x1134D}, {0x11357, 0x11357}, {0x11366, 0x1136C},
    {0x11370, 0x11374}, {0x11400, 0x1145B}, {0x11480, 0x114C7}, {0x11580, 0x115B5}, {0x115B8, 0x115DD},
    {0x11600, 0x11644}, {0x11680, 0x116B9}, {0x1171D, 0x1172B}, {0x11C38, 0x11C45}, {0x16AF0, 0x16AF5},
    {0x16B00, 0x16B45}, {0x1BC9C, 0x1BCA3}, {0x1D129, 0x1D1EA}, {0x1D200, 0x1D245}, {0x1D400, 0x1D454},
    {0x1D456, 0x1D49C}, {0x1D49E, 0x1D49F}, {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6}, {0x1D4A9, 0x1D4AC},
    {0x1D4AE, 0x1D4B9}, {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3}, {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A},
    {0x1D50D, 0x1D514}, {0x1D516, 0x1D51C}, {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E}, {0x1D540, 0x1D544},
    {0x1D546, 0x1D546}, {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5}, {0x1D6A8, 0x1D7CB}, {0x1D7CE, 0x1DA8B},
    {0x1E000, 0x1E006}, {0x1E008, 0x1E018}, {0x1E01B, 0x1E021}, {0x1E023, 0x1E024}, {0x1E026, 0x1E02A},
    {0x1E8C7, 0x1E8D6}, {0x1E900, 0x1E94B}, {0x1EE00, 0x1EE03}, {0x1EE05, 0x1EE1F}, {0x1EE21, 0x1EE22},
    {0x1EE24, 0x1EE24}, {0x1EE27, 0x1EE27}, {0x1EE29, 0x1EE32}, {0x1EE34, 0x1EE37}, {0x1EE39, 0x1EE39},
    {0x1EE3B, 0x1EE3B}, {0x1EE42, 0x1EE42}, {0x1EE47, 0x1EE47}, {0x1EE49, 0x1EE49}, {0x1EE4B, 0x1EE4B},
    {0x1EE4D, 0x1EE4F}, {0x1EE51, 0x1EE52}, {0x1EE54, 0x1EE54}, {0x1EE57, 0x1EE57}, {0x1EE59, 0x1EE59},
    {0x1EE5B, 0x1EE5B}, {0x1EE5D, 0x1EE5D}, {0x1EE5F, 0x1EE5F}, {0x1EE61, 0x1EE62}, {0x1EE64, 0x1EE64},
    {0x1EE67, 0x1EE6A}, {0x1EE6C, 0x1EE72}, {0x1EE74, 0x1EE77}, {0x1EE79, 0x1EE7C}, {0x1EE7E, 0x1EE7E},
    {0x1EE80, 0x1EE89}, {0x1EE8B, 0x1EE9B}, {0x1EEA1, 0x1EEA3}, {0x1EEA5, 0x1EEA9}, {0x1EEAB, 0x1EEBB},
    {0x1F100, 0x1F16B}, {0x1F16D, 0x1F1AD}, {0x1F1E6, 0x1F202}, {0x1F210, 0x1F23B}, {0x1F240, 0x1F248},
    {0x1F250, 0x1F251}, {0x1FFFE, 0x2A6DF}, {0x2F800, 0x2FA1D}};
// clang-format on

bool in_unicode9_ranges(uint32_t cp) {
  auto it = std::upper_bound(std::begin(kUnicode9Ranges), std::end(kUnicode9Ranges), cp,
                             [](uint32_t c, const auto& r) { return c < r.first; });
  return it != std::begin(kUnicode9Ranges) && cp <= std::prev(it)->second;
}

// Appends `run` (valid UTF-8) in the normalization form of utf8proc `options`.
void normalize_run(std::string_view run, utf8proc_option_t options, std::string& out) {
  if (run.empty()) return;
  utf8proc_uint8_t* mapped = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(run.data()),
                                    static_cast<utf8proc_ssize_t>(run.size()), &mapped, options);
  POLDER_CHECK(n >= 0, "tokenizer: Unicode normalization of \"{}\" ({} bytes) failed: {}", run.substr(0, 40),
               run.size(), utf8proc_errmsg(n));
  out.append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
  std::free(mapped);
}

// A code point below this is a starter that the form leaves alone and that never composes with what precedes
// it, so the text can be cut before it: nothing below U+0300 is changed or composed onto by NFC, nothing
// below U+00C0 is changed by NFD (À is the first), nothing below U+00A0 by NFKC/NFKD (NBSP).
uint32_t unchanged_below(utf8proc_option_t options) {
  if (options & UTF8PROC_COMPAT) return 0xA0;
  return (options & UTF8PROC_COMPOSE) ? 0x300 : 0xC0;
}

// NFC, NFD, NFKC or NFKD (utf8proc `options`) of valid UTF-8 `s`, as HF computes it (see kUnicode9Ranges).
// Only the stretches between cuts that hold a code point at or above unchanged_below go through utf8proc.
void unicode_normalize(std::string& s, utf8proc_option_t options) {
  const uint32_t below = unchanged_below(options);
  std::string out;
  size_t emitted = 0;  // s[0, emitted) is in `out`
  size_t chunk = 0;    // start of the stretch since the last cut
  bool dirty = false, any_dirty = false;
  auto cut = [&](size_t at) {
    if (dirty) {
      out.append(s, emitted, chunk - emitted);
      normalize_run(std::string_view(s).substr(chunk, at - chunk), options, out);
      emitted = at;
    }
    chunk = at;
    dirty = false;
  };
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    uint32_t cp = static_cast<unsigned char>(s[i]);
    if (cp < 0x80) {
      ++i;
    } else {
      cp = bpe::next_codepoint(s, i);
    }
    if (cp < below) {
      cut(at);
    } else if (!in_unicode9_ranges(cp)) {
      cut(at);  // newer than Unicode 9.0: kept as it is, a cut on both sides
      chunk = i;
    } else {
      dirty = any_dirty = true;
    }
  }
  if (!any_dirty) return;
  cut(s.size());
  out.append(s, emitted, std::string::npos);
  s = std::move(out);
}

struct NormStep {
  enum Kind { kPrepend, kReplace, kStrip, kUnicode } kind;
  std::string a, b;  // prepend: a; replace: pattern literal a -> b
  Pattern pattern;
  bool left = false, right = false;
  utf8proc_option_t form = UTF8PROC_STABLE;  // kUnicode: the utf8proc flags of NFC, NFD, NFKC or NFKD

  void apply(std::string& s) const {
    switch (kind) {
      case kUnicode:
        unicode_normalize(s, form);
        break;
      case kPrepend:
        if (!s.empty()) s.insert(0, a);
        break;
      case kReplace:
        if (pattern.regex) {
          std::vector<std::pair<size_t, size_t>> hits;
          pattern.find_all(s, hits);
          if (hits.empty()) break;
          std::string out;
          size_t prev = 0;
          for (auto [st, e] : hits) {
            out.append(s, prev, st - prev);
            out += b;
            prev = e;
          }
          out.append(s, prev, std::string::npos);
          s = std::move(out);
        } else {
          replace_all(s, pattern.literal, b);
        }
        break;
      case kStrip: {
        size_t begin = 0, end = s.size();
        if (left) {
          while (begin < end) {
            size_t i = begin;
            if (!bpe::is_unicode_whitespace(bpe::next_codepoint(s, i))) break;
            begin = i;
          }
        }
        if (right) {
          while (end > begin) {
            size_t i = end - 1;
            while (i > begin && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
            size_t j = i;
            if (!bpe::is_unicode_whitespace(bpe::next_codepoint(s, j))) break;
            end = i;
          }
        }
        s = s.substr(begin, end - begin);
        break;
      }
    }
  }
};

void parse_normalizer(const json& j, std::vector<NormStep>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j, "normalizer");
  if (type == "Sequence") {
    for (const auto& n : field(j, "normalizers", "normalizer")) parse_normalizer(n, out);
  } else if (type == "Prepend") {
    NormStep s{NormStep::kPrepend, str_field(j, "prepend", "Prepend normalizer"), "", {}};
    out.push_back(std::move(s));
  } else if (type == "Replace") {
    NormStep s{NormStep::kReplace, "", str_field(j, "content", "Replace normalizer"), {}};
    s.pattern = Pattern::parse(field(j, "pattern", "Replace normalizer"), "Replace normalizer");
    out.push_back(std::move(s));
  } else if (type == "Strip") {
    NormStep s{NormStep::kStrip, "", "", {}};
    s.left = bool_field(j, "strip_left", true);
    s.right = bool_field(j, "strip_right", true);
    out.push_back(std::move(s));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    // NFC = decompose canonically, then compose; K: compatibility decompositions too (ﬁ -> fi, １ -> 1).
    int form = UTF8PROC_STABLE | (type.back() == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (type.size() == 4) form |= UTF8PROC_COMPAT;
    NormStep s{NormStep::kUnicode, "", "", {}};
    s.form = static_cast<utf8proc_option_t>(form);
    out.push_back(std::move(s));
  } else {
    POLDER_FAIL(
        "tokenizer: normalizer type '{}' is not supported (supported: Sequence, Prepend, Replace, Strip, "
        "NFC, NFD, NFKC, NFKD)",
        type);
  }
}

// ---- pre-tokenizers
// ------------------------------------------------------------------------------------------

struct PreTokStep {
  enum Kind { kByteLevel, kSplit, kMetaspace } kind;
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // Split (also ByteLevel's GPT-2 regex)
  Pattern pattern;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  // Metaspace
  std::string replacement;
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;

  void apply(std::vector<Piece>& pieces) const;
};

void split_piece(const Piece& p, const Pattern& pattern, Behavior behavior, bool invert,
                 std::vector<Piece>& out) {
  std::vector<std::pair<size_t, size_t>> hits;
  pattern.find_all(p.text, hits);
  std::vector<Range> ranges;
  split_ranges(p.text.size(), hits, behavior, invert, ranges);
  for (const auto& r : ranges) {
    if (r.end == r.start) continue;
    out.push_back({p.text.substr(r.start, r.end - r.start), p.at_start && r.start == 0});
  }
}

void PreTokStep::apply(std::vector<Piece>& pieces) const {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  switch (kind) {
    case kByteLevel:
      for (auto& p : pieces) {
        if (add_prefix_space && p.text.front() != ' ') p.text = " " + p.text;
        if (use_regex) {
          split_piece(p, pattern, Behavior::kIsolated, false, out);
        } else {
          out.push_back(std::move(p));
        }
      }
      for (auto& p : out) p.text = bpe::byte_level_encode(p.text);
      break;
    case kSplit:
      for (auto& p : pieces) split_piece(p, pattern, behavior, invert, out);
      break;
    case kMetaspace:
      for (auto& p : pieces) {
        replace_all(p.text, " ", replacement);
        bool starts = p.text.compare(0, replacement.size(), replacement) == 0;
        if (!starts && (prepend == kAlways || (prepend == kFirst && p.at_start)))
          p.text.insert(0, replacement);
        if (split) {
          split_piece(p, Pattern{replacement, nullptr}, Behavior::kMergedWithNext, false, out);
        } else {
          out.push_back(std::move(p));
        }
      }
      break;
  }
  pieces = std::move(out);
}

void parse_pre_tokenizer(const json& j, std::vector<PreTokStep>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j, "pre_tokenizer");
  PreTokStep s{};
  if (type == "Sequence") {
    for (const auto& p : field(j, "pretokenizers", "pre_tokenizer")) parse_pre_tokenizer(p, out);
    return;
  } else if (type == "ByteLevel") {
    s.kind = PreTokStep::kByteLevel;
    s.add_prefix_space = bool_field(j, "add_prefix_space", true);
    s.use_regex = bool_field(j, "use_regex", true);
    if (s.use_regex) s.pattern.regex = std::make_shared<bpe::Regex>(bpe::kGpt2Pattern);
  } else if (type == "Split") {
    s.kind = PreTokStep::kSplit;
    s.pattern = Pattern::parse(field(j, "pattern", "Split pre_tokenizer"), "Split pre_tokenizer");
    s.behavior = parse_behavior(str_field(j, "behavior", "Split pre_tokenizer"));
    s.invert = bool_field(j, "invert", false);
  } else if (type == "Digits") {
    s.kind = PreTokStep::kSplit;
    s.pattern.regex =
        std::make_shared<bpe::Regex>(bool_field(j, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
  } else if (type == "WhitespaceSplit") {
    s.kind = PreTokStep::kSplit;
    s.pattern.regex = std::make_shared<bpe::Regex>(R"(\s+)");
    s.behavior = Behavior::kRemoved;
  } else if (type == "Metaspace") {
    s.kind = PreTokStep::kMetaspace;
    s.replacement = str_field(j, "replacement", "Metaspace pre_tokenizer");
    s.split = bool_field(j, "split", true);
    if (j.contains("prepend_scheme")) {
      std::string scheme = str_field(j, "prepend_scheme", "Metaspace pre_tokenizer");
      POLDER_CHECK(scheme == "always" || scheme == "first" || scheme == "never",
                   "tokenizer: Metaspace prepend_scheme '{}' is not one of always, first, never", scheme);
      s.prepend = scheme == "always"  ? PreTokStep::kAlways
                  : scheme == "first" ? PreTokStep::kFirst
                                      : PreTokStep::kNever;
    } else {
      s.prepend = bool_field(j, "add_prefix_space", true) ? PreTokStep::kAlways : PreTokStep::kNever;
    }
  } else {
    POLDER_FAIL(
        "tokenizer: pre_tokenizer type '{}' is not supported (supported: Sequence, ByteLevel, Split, "
        "Metaspace, Digits, WhitespaceSplit)",
        type);
  }
  out.push_back(std::move(s));
}

// ---- decoders
// ------------------------------------------------------------------------------------------------

// ByteLevel: per token, its chars mapped back to bytes if every char is in the table, else its own UTF-8
// bytes; then one token of the whole text (invalid UTF-8 replaced).
void decode_byte_level(std::vector<std::string>& tokens) {
  const auto& table = bpe::byte_level_table();
  std::string bytes;
  for (const auto& t : tokens) {
    size_t mark = bytes.size();
    size_t i = 0;
    bool ok = true;
    while (i < t.size()) {
      int32_t b = table.cp_to_byte(bpe::next_codepoint(t, i));
      if (b < 0) {
        ok = false;
        break;
      }
      bytes.push_back(static_cast<char>(b));
    }
    if (!ok) {
      bytes.resize(mark);
      bytes += t;
    }
  }
  tokens.assign(1, bpe::utf8_lossy(bytes));
}

// ByteFallback: runs of <0xNN> tokens become the bytes they name, or one U+FFFD per byte when the run is
// not valid UTF-8.
void decode_byte_fallback(std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string pending;
  auto flush = [&] {
    if (pending.empty()) return;
    if (bpe::is_valid_utf8(pending)) {
      out.push_back(pending);
    } else {
      for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
    }
    pending.clear();
  };
  for (auto& t : tokens) {
    int byte = -1;
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
        std::isxdigit(static_cast<unsigned char>(t[3])) && std::isxdigit(static_cast<unsigned char>(t[4])))
      byte = std::stoi(t.substr(3, 2), nullptr, 16);
    if (byte >= 0) {
      pending.push_back(static_cast<char>(byte));
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  tokens = std::move(out);
}

// Strip: up to `start` copies of `content` removed from the front of t and up to `stop` from its back.
void strip_token(std::string& t, const std::string& content, size_t start, size_t stop) {
  const std::string& a = content;
  size_t begin = 0, end = t.size();
  for (size_t k = 0; k < start && t.compare(begin, a.size(), a) == 0 && begin < end; ++k) begin += a.size();
  for (size_t k = 0; k < stop && end >= begin + a.size() && t.compare(end - a.size(), a.size(), a) == 0; ++k)
    end -= a.size();
  t = t.substr(begin, end - begin);
}

struct DecodeStep {
  enum Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
  std::string a, b;  // Metaspace: replacement; Replace: pattern literal a -> b; Strip: content a
  bool prepend = true;
  size_t start = 0, stop = 0;

  void apply(std::vector<std::string>& tokens) const;
};

void DecodeStep::apply(std::vector<std::string>& tokens) const {
  switch (kind) {
    case kByteLevel:
      decode_byte_level(tokens);
      break;
    case kMetaspace:
      // HF quirk kept on purpose: in the first token every replacement char is dropped, not only the leading
      // one.
      for (size_t k = 0; k < tokens.size(); ++k) replace_all(tokens[k], a, (k == 0 && prepend) ? "" : " ");
      break;
    case kReplace:
      for (auto& t : tokens) replace_all(t, a, b);
      break;
    case kByteFallback:
      decode_byte_fallback(tokens);
      break;
    case kFuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case kStrip:
      for (auto& t : tokens) strip_token(t, a, start, stop);
      break;
  }
}

void parse_decoder(const json& j, std::vector<DecodeStep>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j, "decoder");
  DecodeStep s{};
  if (type == "Sequence") {
    for (const auto& d : field(j, "decoders", "decoder")) parse_decoder(d, out);
    return;
  } else if (type == "ByteLevel") {
    s.kind = DecodeStep::kByteLevel;
  } else if (type == "Metaspace") {
    s.kind = DecodeStep::kMetaspace;
    s.a = str_field(j, "replacement", "Metaspace decoder");
    if (j.contains("prepend_scheme")) {
      s.prepend = str_field(j, "prepend_scheme", "Metaspace decoder") != "never";
    } else {
      s.prepend = bool_field(j, "add_prefix_space", true);
    }
  } else if (type == "Replace") {
    s.kind = DecodeStep::kReplace;
    Pattern p = Pattern::parse(field(j, "pattern", "Replace decoder"), "Replace decoder");
    POLDER_CHECK(!p.regex, "tokenizer: Replace decoder with a Regex pattern is not supported (only String)");
    s.a = p.literal;
    s.b = str_field(j, "content", "Replace decoder");
  } else if (type == "ByteFallback") {
    s.kind = DecodeStep::kByteFallback;
  } else if (type == "Fuse") {
    s.kind = DecodeStep::kFuse;
  } else if (type == "Strip") {
    s.kind = DecodeStep::kStrip;
    s.a = str_field(j, "content", "Strip decoder");
    s.start = field(j, "start", "Strip decoder").get<size_t>();
    s.stop = field(j, "stop", "Strip decoder").get<size_t>();
  } else {
    POLDER_FAIL(
        "tokenizer: decoder type '{}' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, "
        "ByteFallback, Fuse, Strip)",
        type);
  }
  out.push_back(std::move(s));
}

// ---- added tokens
// --------------------------------------------------------------------------------------------

struct AddedToken {
  int32_t id;
  std::string content;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Leftmost-longest matching of added tokens (what HF's aho-corasick does), with lstrip/rstrip/single_word.
class AddedMatcher {
 public:
  void add(const std::string& content, const AddedToken* token) {
    if (content.empty()) return;
    by_first_[static_cast<unsigned char>(content[0])].push_back({content, token});
    empty_ = false;
  }
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(),
                       [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  }
  bool empty() const { return empty_; }

  struct Seg {
    size_t start, end;
    int32_t id;  // -1: plain text
  };
  void split(std::string_view s, std::vector<Seg>& out) const;

 private:
  std::array<std::vector<std::pair<std::string, const AddedToken*>>, 256> by_first_;
  bool empty_ = true;
};

// Word characters for single_word added tokens: Unicode \w as HF uses it (Alphabetic, marks, decimal digits,
// connector punctuation, joiners), so 'é' and U+0301 are word characters and '½' is not.
bool is_word_codepoint(uint32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  static const bpe::Regex word(R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])");
  std::string c;
  bpe::append_utf8(c, cp);
  std::vector<std::pair<size_t, size_t>> hits;
  word.find_all(c, hits);
  return !hits.empty();
}

bool is_word_char_before(std::string_view s, size_t pos) {
  if (pos == 0) return false;
  size_t b = pos - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return is_word_codepoint(bpe::next_codepoint(s, b));
}

bool is_word_char_at(std::string_view s, size_t pos) {
  if (pos >= s.size()) return false;
  return is_word_codepoint(bpe::next_codepoint(s, pos));
}

void AddedMatcher::split(std::string_view s, std::vector<Seg>& out) const {
  out.clear();
  size_t prev_stop = 0;
  size_t i = 0;
  while (i < s.size()) {
    const auto& cands = by_first_[static_cast<unsigned char>(s[i])];
    const AddedToken* hit = nullptr;
    size_t len = 0;
    for (const auto& [content, tok] : cands) {
      if (s.compare(i, content.size(), content) == 0) {
        hit = tok;
        len = content.size();
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    const size_t start_match = i;
    size_t start = i, stop = i + len;
    if (hit->single_word && (is_word_char_before(s, start) || is_word_char_at(s, stop))) {
      i = stop;
      continue;
    }
    if (hit->lstrip) {
      size_t k = start;
      while (k > prev_stop) {
        size_t b = k - 1;
        while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
        size_t j = b;
        if (!bpe::is_unicode_whitespace(bpe::next_codepoint(s, j))) break;
        k = b;
      }
      start = k;
    }
    if (hit->rstrip) {
      while (stop < s.size()) {
        size_t j = stop;
        if (!bpe::is_unicode_whitespace(bpe::next_codepoint(s, j))) break;
        stop = j;
      }
    }
    if (prev_stop < start) out.push_back({prev_stop, start, -1});
    out.push_back({start, stop, hit->id});
    prev_stop = stop;
    // The next match is searched after this match, not after the rstrip'ed whitespace: HF's aho-corasick
    // finds all matches first, so a following token may overlap the stripped spaces (and is still emitted).
    i = start_match + len;
  }
  if (prev_stop < s.size()) out.push_back({prev_stop, s.size(), -1});
}

// ---- BPE model
// -----------------------------------------------------------------------------------------------

struct BpeModel {
  StringMap vocab;
  std::vector<std::string> id_to_token;  // model vocabulary only; "" where no token has that id
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, new id)
  std::optional<int32_t> unk_id;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
  std::array<int32_t, 256> byte_ids{};
  bool has_byte_ids = false;

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
};

struct Symbol {
  int32_t id;
  int32_t prev, next;
  int32_t len;  // bytes; 0 once merged away
};

// The symbols of a word before any merge: one per char (with continuing_subword_prefix before every char
// but the first and end_of_word_suffix after the last) when the vocabulary has it, else its <0xNN> bytes
// under byte_fallback, else the unknown token (one per run of unknown chars under fuse_unk), else nothing.
std::vector<Symbol> initial_symbols(const BpeModel& m, std::string_view w) {
  std::vector<Symbol> sym;
  sym.reserve(w.size());
  auto add = [&](int32_t id, int32_t len) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, -1, len});
    if (n > 0) sym[n - 1].next = n;
  };
  int32_t unk_pending = -1, unk_len = 0;  // an unknown-token symbol not yet added (fuse_unk grows it)
  std::string buf;
  size_t i = 0;
  while (i < w.size()) {
    size_t begin = i;
    size_t n = std::min<size_t>(bpe::utf8_len(static_cast<unsigned char>(w[i])), w.size() - i);
    i += n;
    std::string_view c = w.substr(begin, n);
    if (!m.prefix.empty() || !m.suffix.empty()) {
      buf.clear();
      if (begin != 0) buf += m.prefix;
      buf += c;
      if (i == w.size()) buf += m.suffix;
      c = buf;
    }
    auto it = m.vocab.find(c);
    if (it != m.vocab.end()) {
      if (unk_pending >= 0) {
        add(unk_pending, unk_len);
        unk_pending = -1;
      }
      add(it->second, static_cast<int32_t>(n));
      continue;
    }
    if (m.byte_fallback) {
      bool all = m.has_byte_ids;
      for (unsigned char b : c) all = all && m.byte_ids[b] >= 0;
      if (all) {
        for (unsigned char b : c) add(m.byte_ids[b], 1);
        continue;
      }
    }
    if (m.unk_id) {
      if (unk_pending >= 0 && m.fuse_unk) {
        unk_len += static_cast<int32_t>(n);
      } else {
        if (unk_pending >= 0) add(unk_pending, unk_len);
        unk_pending = *m.unk_id;
        unk_len = static_cast<int32_t>(n);
      }
    }
  }
  if (unk_pending >= 0) add(unk_pending, unk_len);
  return sym;
}

// HF's Word::merge_all: lowest rank first, then leftmost position; stale entries are skipped. Merged-away
// symbols keep len 0.
void merge_symbols(const BpeModel& m, std::vector<Symbol>& sym) {
  struct Merge {
    int32_t pos, rank, new_id;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const auto& merges = m.merges;
  std::priority_queue<Merge> queue;
  for (size_t k = 0; k + 1 < sym.size(); ++k) {
    auto it = merges.find(BpeModel::key(sym[k].id, sym[k + 1].id));
    if (it != merges.end()) queue.push({int32_t(k), it->second.first, it->second.second});
  }
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    if (sym[top.pos].len == 0 || sym[top.pos].next == -1) continue;
    int32_t next_pos = sym[top.pos].next;
    Symbol right = sym[next_pos];
    auto it = merges.find(BpeModel::key(sym[top.pos].id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;
    Symbol& cur = sym[top.pos];
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    sym[next_pos].len = 0;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      auto p = merges.find(BpeModel::key(sym[cur.prev].id, cur.id));
      if (p != merges.end()) queue.push({cur.prev, p->second.first, p->second.second});
    }
    if (cur.next >= 0) {
      auto q = merges.find(BpeModel::key(cur.id, sym[cur.next].id));
      if (q != merges.end()) queue.push({top.pos, q->second.first, q->second.second});
    }
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  std::vector<Symbol> sym = initial_symbols(*this, w);
  merge_symbols(*this, sym);
  for (const auto& s : sym)
    if (s.len != 0) out.push_back(s.id);
}

// Per-thread cache of word -> ids, tagged with the owning tokenizer so two tokenizers never mix entries.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
};
constexpr size_t kCacheMaxWordBytes = 256;
constexpr size_t kCacheMaxEntries = 1 << 18;
std::atomic<uint64_t> g_next_uid{1};

// ---- post-processor
// ------------------------------------------------------------------------------------------

// The single-sequence template as a list of ids with -1 standing for the sequence itself.
void parse_post_processor(const json& j, std::vector<std::vector<int32_t>>& templates) {
  if (j.is_null()) return;
  std::string type = type_of(j, "post_processor");
  if (type == "Sequence") {
    for (const auto& p : field(j, "processors", "post_processor")) parse_post_processor(p, templates);
  } else if (type == "ByteLevel") {
    // Only trims offsets; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& specials = field(j, "special_tokens", "TemplateProcessing");
    std::vector<int32_t> tmpl;
    for (const auto& item : field(j, "single", "TemplateProcessing")) {
      if (item.contains("Sequence")) {
        tmpl.push_back(-1);
      } else if (item.contains("SpecialToken")) {
        std::string name = str_field(item.at("SpecialToken"), "id", "TemplateProcessing.single");
        POLDER_CHECK(specials.contains(name),
                     "tokenizer: TemplateProcessing uses special token '{}' that is not in "
                     "its special_tokens",
                     name);
        for (const auto& id : field(specials.at(name), "ids", "TemplateProcessing.special_tokens"))
          tmpl.push_back(id.get<int32_t>());
      } else {
        POLDER_FAIL("tokenizer: TemplateProcessing item {} is neither Sequence nor SpecialToken",
                    item.dump());
      }
    }
    templates.push_back(std::move(tmpl));
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    int32_t cls = field(j, "cls", type)[1].get<int32_t>();
    int32_t sep = field(j, "sep", type)[1].get<int32_t>();
    templates.push_back({cls, -1, sep});
  } else {
    POLDER_FAIL(
        "tokenizer: post_processor type '{}' is not supported (supported: TemplateProcessing, ByteLevel, "
        "RobertaProcessing, BertProcessing, Sequence)",
        type);
  }
}

}  // namespace

struct Tokenizer::Impl {
  std::string json_text;
  uint64_t uid = 0;
  std::vector<AddedToken> added;
  StringMap added_to_id;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index in `added`
  AddedMatcher raw_matcher, normalized_matcher;
  std::vector<NormStep> normalizers;
  std::vector<PreTokStep> pre_tokenizers;
  BpeModel model;
  std::vector<DecodeStep> decoders;
  bool has_decoder = false;
  std::vector<std::vector<int32_t>> templates;
  int64_t vocab_size = 0;

  // Set when the pre-tokenizer is plain byte-level BPE with a regex (GPT-2, Llama 3): see encode_byte_level.
  const bpe::Regex* fast_regex = nullptr;

  template <typename Compute>
  void cached(std::string_view key, std::vector<int32_t>& out, Compute&& compute) const;
  void model_tokenize(std::string_view word, std::vector<int32_t>& out) const;
  void tokenize_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_byte_level(std::string_view text, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
};

// Looks `key` up in this thread's word cache; on a miss `compute(ids)` fills the ids, which are cached.
template <typename Compute>
void Tokenizer::Impl::cached(std::string_view key, std::vector<int32_t>& out, Compute&& compute) const {
  if (key.size() > kCacheMaxWordBytes) {
    compute(out);
    return;
  }
  thread_local WordCache cache;
  if (cache.owner != uid) {
    cache.map.clear();
    cache.owner = uid;
  }
  auto it = cache.map.find(key);
  if (it != cache.map.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  std::vector<int32_t> ids;
  compute(ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cache.map.size() >= kCacheMaxEntries) cache.map.clear();
  cache.map.emplace(std::string(key), std::move(ids));
}

// The model on one pre-token (already in the vocabulary's alphabet), as HF's BPE::tokenize.
void Tokenizer::Impl::model_tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (model.ignore_merges) {
    auto it = model.vocab.find(word);
    if (it != model.vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  model.merge_word(word, out);
}

void Tokenizer::Impl::tokenize_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  cached(word, out, [&](std::vector<int32_t>& ids) { model_tokenize(word, ids); });
}

// Fast path for [Split(regex, Isolated)] + ByteLevel(use_regex=false) and ByteLevel(use_regex=true), both
// without prefix space: the regex pieces (and the gaps between them) are looked up in the cache as raw bytes,
// and only a cache miss maps them to the byte-level alphabet. Same result as the generic pipeline, without
// its copies.
void Tokenizer::Impl::encode_byte_level(std::string_view text, std::vector<int32_t>& out) const {
  thread_local std::vector<std::pair<size_t, size_t>> hits;
  hits.clear();
  fast_regex->find_all(text, hits);
  auto piece = [&](std::string_view raw) {
    cached(raw, out, [&](std::vector<int32_t>& ids) { model_tokenize(bpe::byte_level_encode(raw), ids); });
  };
  size_t prev = 0;
  for (auto [st, e] : hits) {
    if (st > prev) piece(text.substr(prev, st - prev));
    piece(text.substr(st, e - st));
    prev = e;
  }
  if (prev < text.size()) piece(text.substr(prev));
}

void Tokenizer::Impl::encode_segment(std::string_view raw, bool at_start, std::vector<int32_t>& out) const {
  if (fast_regex != nullptr && normalizers.empty() && normalized_matcher.empty()) {
    encode_byte_level(raw, out);
    return;
  }
  std::string text(raw);
  for (const auto& n : normalizers) n.apply(text);
  std::vector<AddedMatcher::Seg> segs;
  if (normalized_matcher.empty()) {
    segs.push_back({0, text.size(), -1});
  } else {
    normalized_matcher.split(text, segs);
  }
  std::vector<Piece> pieces;
  for (const auto& seg : segs) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    if (seg.end == seg.start) continue;
    if (fast_regex != nullptr) {
      encode_byte_level(std::string_view(text).substr(seg.start, seg.end - seg.start), out);
      continue;
    }
    pieces.clear();
    pieces.push_back({text.substr(seg.start, seg.end - seg.start), at_start && seg.start == 0});
    for (const auto& p : pre_tokenizers) p.apply(pieces);
    for (const auto& p : pieces) tokenize_word(p.text, out);
  }
}

namespace {

// model.vocab, unk_token, the flags and the <0xNN> byte tokens of a BPE model section. Returns the
// largest id.
int64_t parse_bpe_vocab(const json& m, BpeModel& model) {
  if (m.contains("dropout") && !m.at("dropout").is_null()) {
    POLDER_CHECK(m.at("dropout").get<double>() == 0.0,
                 "tokenizer: BPE dropout {} is not supported (only null or 0)", m.at("dropout").dump());
  }
  int64_t max_id = -1;
  for (const auto& [tok, id] : field(m, "vocab", "model").items()) {
    int32_t v = id.get<int32_t>();
    POLDER_CHECK(v >= 0, "tokenizer: vocabulary id {} of '{}' is negative", v, tok);
    model.vocab[tok] = v;
    max_id = std::max<int64_t>(max_id, v);
  }
  model.id_to_token.assign(max_id + 1, "");
  for (const auto& [tok, id] : model.vocab) model.id_to_token[id] = tok;
  if (m.contains("unk_token") && !m.at("unk_token").is_null()) {
    std::string unk = m.at("unk_token").get<std::string>();
    auto it = model.vocab.find(unk);
    POLDER_CHECK(it != model.vocab.end(), "tokenizer: unk_token '{}' is not in the vocabulary", unk);
    model.unk_id = it->second;
  }
  model.fuse_unk = bool_field(m, "fuse_unk", false);
  model.byte_fallback = bool_field(m, "byte_fallback", false);
  model.ignore_merges = bool_field(m, "ignore_merges", false);
  if (m.contains("continuing_subword_prefix") && !m.at("continuing_subword_prefix").is_null())
    model.prefix = m.at("continuing_subword_prefix").get<std::string>();
  if (m.contains("end_of_word_suffix") && !m.at("end_of_word_suffix").is_null())
    model.suffix = m.at("end_of_word_suffix").get<std::string>();
  model.has_byte_ids = true;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = model.vocab.find(std::string_view(name));
    model.byte_ids[b] = it == model.vocab.end() ? -1 : it->second;
  }
  return max_id;
}

// model.merges: "a b" strings or [a, b] pairs, ranked in order; both sides and the result must be in the
// vocabulary.
void parse_bpe_merges(const json& merges, BpeModel& model) {
  model.merges.reserve(merges.size() * 2);
  int32_t rank = 0;
  for (const auto& mj : merges) {
    std::string a, b;
    if (mj.is_string()) {
      std::string line = mj.get<std::string>();
      size_t sp = line.find(' ');
      POLDER_CHECK(sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos,
                   "tokenizer: merge '{}' is not two tokens separated by one space", line);
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else {
      POLDER_CHECK(mj.is_array() && mj.size() == 2, "tokenizer: merge {} is not a pair of tokens", mj.dump());
      a = mj[0].get<std::string>();
      b = mj[1].get<std::string>();
    }
    auto ia = model.vocab.find(a), ib = model.vocab.find(b);
    POLDER_CHECK(ia != model.vocab.end() && ib != model.vocab.end(),
                 "tokenizer: merge ('{}', '{}') uses a token that is not in the vocabulary", a, b);
    std::string merged = a + (model.prefix.empty() ? b : b.substr(std::min(model.prefix.size(), b.size())));
    auto in = model.vocab.find(merged);
    POLDER_CHECK(in != model.vocab.end(),
                 "tokenizer: merge ('{}', '{}') gives '{}' which is not in the vocabulary", a, b, merged);
    model.merges[BpeModel::key(ia->second, ib->second)] = {rank++, in->second};
  }
}

// added_tokens and their lookups by content and id; returns the largest id of vocabulary and added tokens.
int64_t parse_added_tokens(const json& j, Tokenizer::Impl& impl, int64_t max_id) {
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    for (const auto& t : j.at("added_tokens")) {
      AddedToken a{t.at("id").get<int32_t>(),           str_field(t, "content", "added token"),
                   bool_field(t, "single_word", false), bool_field(t, "lstrip", false),
                   bool_field(t, "rstrip", false),      bool_field(t, "normalized", true),
                   bool_field(t, "special", false)};
      max_id = std::max<int64_t>(max_id, a.id);
      impl.added.push_back(std::move(a));
    }
  }
  for (size_t k = 0; k < impl.added.size(); ++k) {
    impl.added_to_id[impl.added[k].content] = impl.added[k].id;
    impl.added_by_id[impl.added[k].id] = k;
  }
  return max_id;
}

// The fast byte-level path applies when the pre-tokenization is exactly GPT-2's ByteLevel regex or a Split
// regex (isolated) followed by ByteLevel without its own regex.
const bpe::Regex* fast_byte_level_regex(const std::vector<PreTokStep>& pre) {
  if (pre.size() == 1 && pre[0].kind == PreTokStep::kByteLevel && pre[0].use_regex &&
      !pre[0].add_prefix_space)
    return pre[0].pattern.regex.get();
  if (pre.size() == 2 && pre[0].kind == PreTokStep::kSplit && pre[0].pattern.regex &&
      pre[0].behavior == Behavior::kIsolated && !pre[0].invert && pre[1].kind == PreTokStep::kByteLevel &&
      !pre[1].use_regex && !pre[1].add_prefix_space)
    return pre[0].pattern.regex.get();
  return nullptr;
}

// Added tokens: non-normalized ones match the raw text, normalized ones match the normalized text (their
// content normalized too, as HF does).
void build_added_matchers(Tokenizer::Impl& impl) {
  for (const auto& a : impl.added) {
    if (a.normalized) {
      std::string content = a.content;
      for (const auto& n : impl.normalizers) n.apply(content);
      impl.normalized_matcher.add(content, &a);
    } else {
      impl.raw_matcher.add(a.content, &a);
    }
  }
  impl.raw_matcher.finish();
  impl.normalized_matcher.finish();
}

std::shared_ptr<Tokenizer::Impl> build(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    POLDER_FAIL("tokenizer: invalid JSON: {}", e.what());
  }
  POLDER_CHECK(j.is_object(), "tokenizer: the top level is {} but a JSON object was expected", j.type_name());
  auto impl = std::make_shared<Tokenizer::Impl>();
  impl->json_text = text;
  impl->uid = g_next_uid.fetch_add(1);
  try {
    const json& m = field(j, "model", "tokenizer.json");
    std::string mtype = m.contains("type") ? type_of(m, "model") : (m.contains("merges") ? "BPE" : "?");
    POLDER_CHECK(mtype == "BPE", "tokenizer: model type '{}' is not supported (only BPE)", mtype);
    const int64_t max_id = parse_bpe_vocab(m, impl->model);
    parse_bpe_merges(field(m, "merges", "model"), impl->model);
    impl->vocab_size = parse_added_tokens(j, *impl, max_id) + 1;

    parse_normalizer(j.value("normalizer", json()), impl->normalizers);
    parse_pre_tokenizer(j.value("pre_tokenizer", json()), impl->pre_tokenizers);
    parse_decoder(j.value("decoder", json()), impl->decoders);
    impl->has_decoder = !j.value("decoder", json()).is_null();
    parse_post_processor(j.value("post_processor", json()), impl->templates);
    impl->fast_regex = fast_byte_level_regex(impl->pre_tokenizers);
    build_added_matchers(*impl);
  } catch (const json::exception& e) {
    POLDER_FAIL("tokenizer: malformed tokenizer.json: {}", e.what());
  }
  return impl;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(const Tokenizer& other) = default;
Tokenizer& Tokenizer::operator=(const Tokenizer& other) = default;
Tokenizer::Tokenizer(Tokenizer&& other) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(const std::string& json_text) {
  return Tokenizer(build(json_text));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  POLDER_CHECK(in.good(), "tokenizer: cannot open '{}'", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const Error& e) {
    throw Error(e.message() + " (in " + path + ")", e.file(), e.line());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& im = *impl_;
  std::string fixed;
  if (!bpe::is_valid_utf8(text)) {
    fixed = bpe::utf8_lossy(text);
    text = fixed;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (im.raw_matcher.empty()) {
    if (!text.empty()) im.encode_segment(text, true, ids);
  } else {
    std::vector<AddedMatcher::Seg> segs;
    im.raw_matcher.split(text, segs);
    for (const auto& seg : segs) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
      } else if (seg.end > seg.start) {
        im.encode_segment(text.substr(seg.start, seg.end - seg.start), seg.start == 0, ids);
      }
    }
  }
  if (add_special_tokens) {
    for (const auto& tmpl : im.templates) {
      std::vector<int32_t> out;
      out.reserve(ids.size() + tmpl.size());
      for (int32_t t : tmpl) {
        if (t == -1) {
          out.insert(out.end(), ids.begin(), ids.end());
        } else {
          out.push_back(t);
        }
      }
      ids = std::move(out);
    }
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto a = im.added_by_id.find(id);
    if (a != im.added_by_id.end()) {
      if (!(skip_special_tokens && im.added[a->second].special))
        tokens.push_back(im.added[a->second].content);
    } else if (id >= 0 && size_t(id) < im.model.id_to_token.size() && !im.model.id_to_token[id].empty()) {
      tokens.push_back(im.model.id_to_token[id]);
    }
  }
  if (!im.has_decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (k > 0) out += ' ';
      out += tokens[k];
    }
    return out;
  }
  for (const auto& d : im.decoders) d.apply(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const {
  return impl_->vocab_size;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto a = impl_->added_to_id.find(token);
  if (a != impl_->added_to_id.end()) return a->second;
  auto m = impl_->model.vocab.find(token);
  if (m != impl_->model.vocab.end()) return m->second;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto a = impl_->added_by_id.find(id);
  if (a != impl_->added_by_id.end()) return impl_->added[a->second].content;
  if (id >= 0 && size_t(id) < impl_->model.id_to_token.size()) return impl_->model.id_to_token[id];
  return "";
}

int32_t Tokenizer::eos_id() const {
  for (const char* name : {"<|end_of_text|>", "<|endoftext|>", "</s>"}) {
    if (auto id = token_to_id(name)) return *id;
  }
  POLDER_FAIL(
      "tokenizer: no end-of-text token: none of <|end_of_text|>, <|endoftext|>, </s> is in the vocabulary");
}

std::string Tokenizer::to_json() const {
  return impl_->json_text;
}

}  // namespace polder::data
