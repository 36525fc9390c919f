// Reader (mmap) and writer of Megatron's MMIDIDX indexed datasets. The .idx arrays start at byte 34, so they
// are not aligned for int32/int64: every read goes through memcpy. Little-endian hosts only (as is Megatron's
// format).
#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "core/error.h"

namespace polder::data {

static_assert(std::endian::native == std::endian::little, "the MMIDIDX format is little-endian");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr size_t kHeaderBytes =
    9 + 8 + 1 + 8 + 8;  // magic, version, dtype code, sequence and document counts

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool is_known_code(uint8_t code) {
  return code >= 1 && code <= 8;
}

// Maps a whole file read-only; returns {nullptr, 0} for an empty file.
std::pair<const std::byte*, size_t> map_file(const std::string& path, const char* what) {
  int fd = ::open(path.c_str(), O_RDONLY);
  POLDER_CHECK(fd >= 0, "cannot open {} file {}: {}", what, path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    POLDER_FAIL("cannot stat {}: {}", path, std::strerror(err));
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes == 0) {
    ::close(fd);
    return {nullptr, 0};
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  POLDER_CHECK(p != MAP_FAILED, "cannot mmap {}: {}", path, std::strerror(err));
  return {static_cast<const std::byte*>(p), bytes};
}

template <typename T>
void convert(const std::byte* src, int64_t count, int32_t* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(load<T>(src + i * sizeof(T)));
}

template <typename T>
void store_tokens(std::span<const int32_t> tokens, std::byte* dst, TokenDType dtype,
                  const std::string& path) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    int64_t t = tokens[i];
    POLDER_CHECK(t >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                     t <= static_cast<int64_t>(std::numeric_limits<T>::max()),
                 "{}: token id {} does not fit the dataset dtype {}", path, t, dtype_name(dtype));
    T v = static_cast<T>(t);
    std::memcpy(dst + i * sizeof(T), &v, sizeof(T));
  }
}

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes == 0) return;
  POLDER_CHECK(std::fwrite(data, 1, bytes, f) == bytes, "cannot write {}: {}", path, std::strerror(errno));
}

}  // namespace

int64_t dtype_size(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kU8:
    case TokenDType::kI8:
      return 1;
    case TokenDType::kI16:
    case TokenDType::kU16:
      return 2;
    case TokenDType::kI32:
    case TokenDType::kF32:
      return 4;
    case TokenDType::kI64:
    case TokenDType::kF64:
      return 8;
  }
  POLDER_FAIL("unknown dtype code {}", static_cast<int>(dtype));
}

const char* dtype_name(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kU8:
      return "uint8";
    case TokenDType::kI8:
      return "int8";
    case TokenDType::kI16:
      return "int16";
    case TokenDType::kI32:
      return "int32";
    case TokenDType::kI64:
      return "int64";
    case TokenDType::kF64:
      return "float64";
    case TokenDType::kF32:
      return "float32";
    case TokenDType::kU16:
      return "uint16";
  }
  return "unknown";
}

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  POLDER_CHECK(vocab_size > 0, "vocabulary size must be positive, got {}", vocab_size);
  POLDER_CHECK(vocab_size <= (int64_t{1} << 31), "vocabulary size {} does not fit int32 token ids",
               vocab_size);
  return vocab_size < 65500 ? TokenDType::kU16 : TokenDType::kI32;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  POLDER_CHECK(std::filesystem::exists(idx_path), "indexed dataset {}: index file {} does not exist", prefix,
               idx_path);
  POLDER_CHECK(std::filesystem::exists(bin_path), "indexed dataset {}: data file {} does not exist", prefix,
               bin_path);
  try {
    std::tie(idx_, idx_bytes_) = map_file(idx_path, "index");
    std::tie(bin_, bin_bytes_) = map_file(bin_path, "data");

    POLDER_CHECK(idx_bytes_ >= kHeaderBytes, "{} is {} bytes, shorter than the {}-byte MMIDIDX header",
                 idx_path, idx_bytes_, kHeaderBytes);
    POLDER_CHECK(std::memcmp(idx_, kMagic, sizeof(kMagic)) == 0,
                 "{} is not a Megatron indexed dataset index: wrong magic (expected \"MMIDIDX\\x00\\x00\")",
                 idx_path);
    uint64_t version = load<uint64_t>(idx_ + 9);
    POLDER_CHECK(version == kVersion, "{}: unsupported index version {} (expected {})", idx_path, version,
                 kVersion);
    uint8_t code = load<uint8_t>(idx_ + 17);
    POLDER_CHECK(is_known_code(code),
                 "{}: unknown dtype code {} (expected 1..8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, "
                 "6 float64, 7 float32, 8 uint16)",
                 idx_path, static_cast<int>(code));
    dtype_ = static_cast<TokenDType>(code);
    POLDER_CHECK(dtype_ != TokenDType::kF32 && dtype_ != TokenDType::kF64,
                 "{}: dtype {} holds no token ids (expected an integer dtype such as uint16 or int32)",
                 idx_path, dtype_name(dtype_));
    uint64_t seq_count = load<uint64_t>(idx_ + 18);
    uint64_t doc_count = load<uint64_t>(idx_ + 26);
    // Bound the counts before multiplying so that a corrupt header cannot overflow the size computation.
    POLDER_CHECK(seq_count < (uint64_t{1} << 40) && doc_count < (uint64_t{1} << 40),
                 "{}: implausible sequence count {} or document count {}", idx_path, seq_count, doc_count);
    POLDER_CHECK(doc_count >= 1, "{}: document count is 0 (expected number of documents + 1)", idx_path);
    lengths_offset_ = kHeaderBytes;
    pointers_offset_ = lengths_offset_ + 4 * seq_count;
    doc_index_offset_ = pointers_offset_ + 8 * seq_count;
    size_t needed = doc_index_offset_ + 8 * doc_count;
    // Megatron's multimodal datasets append one int8 mode per sequence; a longer .idx is therefore accepted.
    POLDER_CHECK(idx_bytes_ >= needed,
                 "{} is {} bytes but its header ({} sequences, {} document indices) needs {} bytes", idx_path,
                 idx_bytes_, seq_count, doc_count, needed);
    num_sequences_ = static_cast<int64_t>(seq_count);
    num_documents_ = static_cast<int64_t>(doc_count) - 1;

    POLDER_CHECK(document_index(0) == 0, "{}: document indices must start with 0, found {}", idx_path,
                 document_index(0));
    for (int64_t d = 0; d < num_documents_; ++d) {
      POLDER_CHECK(document_index(d + 1) >= document_index(d),
                   "{}: document indices decrease at document {} ({} then {})", idx_path, d,
                   document_index(d), document_index(d + 1));
    }
    POLDER_CHECK(document_index(num_documents_) == num_sequences_,
                 "{}: last document index is {} but there are {} sequences", idx_path,
                 document_index(num_documents_), num_sequences_);

    const int64_t item = dtype_size(dtype_);
    for (int64_t s = 0; s < num_sequences_; ++s) {
      int64_t len = sequence_length(s), ptr = sequence_pointer(s);
      POLDER_CHECK(len >= 0 && ptr >= 0, "{}: sequence {} has length {} and byte pointer {}", idx_path, s,
                   len, ptr);
      // Compared without forming ptr + len * item, which a corrupt pointer near 2^63 would overflow.
      const int64_t bin = static_cast<int64_t>(bin_bytes_);
      const int64_t end = ptr <= bin ? ptr + len * item : ptr;
      POLDER_CHECK(
          ptr <= bin && len * item <= bin - ptr,
          "{} is {} bytes but {} says sequence {} ends at byte {} (the .bin is truncated or belongs to "
          "another index)",
          bin_path, bin_bytes_, idx_path, s, end);
      num_tokens_ += len;
    }
    POLDER_CHECK(num_documents_ > 0 && num_tokens_ > 0,
                 "indexed dataset {} is empty ({} documents, {} tokens): expected at least one token", prefix,
                 num_documents_, num_tokens_);
  } catch (...) {
    release();
    throw;
  }
}

IndexedDataset::~IndexedDataset() {
  release();
}

IndexedDataset::IndexedDataset(IndexedDataset&& other) noexcept {
  *this = std::move(other);
}

IndexedDataset& IndexedDataset::operator=(IndexedDataset&& other) noexcept {
  if (this != &other) {
    release();
    prefix_ = std::move(other.prefix_);
    dtype_ = other.dtype_;
    num_sequences_ = other.num_sequences_;
    num_documents_ = other.num_documents_;
    num_tokens_ = other.num_tokens_;
    idx_ = std::exchange(other.idx_, nullptr);
    idx_bytes_ = std::exchange(other.idx_bytes_, 0);
    bin_ = std::exchange(other.bin_, nullptr);
    bin_bytes_ = std::exchange(other.bin_bytes_, 0);
    lengths_offset_ = other.lengths_offset_;
    pointers_offset_ = other.pointers_offset_;
    doc_index_offset_ = other.doc_index_offset_;
  }
  return *this;
}

void IndexedDataset::release() {
  if (idx_) ::munmap(const_cast<std::byte*>(idx_), idx_bytes_);
  if (bin_) ::munmap(const_cast<std::byte*>(bin_), bin_bytes_);
  idx_ = bin_ = nullptr;
  idx_bytes_ = bin_bytes_ = 0;
}

int32_t IndexedDataset::sequence_length(int64_t seq) const {
  return load<int32_t>(idx_ + lengths_offset_ + 4 * static_cast<size_t>(seq));
}

int64_t IndexedDataset::sequence_pointer(int64_t seq) const {
  return load<int64_t>(idx_ + pointers_offset_ + 8 * static_cast<size_t>(seq));
}

int64_t IndexedDataset::document_index(int64_t i) const {
  return load<int64_t>(idx_ + doc_index_offset_ + 8 * static_cast<size_t>(i));
}

int64_t IndexedDataset::document_length(int64_t doc) const {
  POLDER_CHECK(doc >= 0 && doc < num_documents_, "{}: document {} out of range [0, {})", prefix_, doc,
               num_documents_);
  int64_t n = 0;
  for (int64_t s = document_index(doc); s < document_index(doc + 1); ++s) n += sequence_length(s);
  return n;
}

void IndexedDataset::read_tokens(int64_t byte_offset, int64_t count, int32_t* out) const {
  const std::byte* src = bin_ + byte_offset;
  switch (dtype_) {
    case TokenDType::kU8:
      return convert<uint8_t>(src, count, out);
    case TokenDType::kI8:
      return convert<int8_t>(src, count, out);
    case TokenDType::kI16:
      return convert<int16_t>(src, count, out);
    case TokenDType::kU16:
      return convert<uint16_t>(src, count, out);
    case TokenDType::kI32:
      return convert<int32_t>(src, count, out);
    case TokenDType::kI64:
      return convert<int64_t>(src, count, out);
    default:
      POLDER_FAIL("{}: cannot read tokens of dtype {}", prefix_, dtype_name(dtype_));
  }
}

std::vector<int32_t> IndexedDataset::sequence(int64_t seq) const {
  POLDER_CHECK(seq >= 0 && seq < num_sequences_, "{}: sequence {} out of range [0, {})", prefix_, seq,
               num_sequences_);
  std::vector<int32_t> out(static_cast<size_t>(sequence_length(seq)));
  read_tokens(sequence_pointer(seq), static_cast<int64_t>(out.size()), out.data());
  return out;
}

std::vector<int32_t> IndexedDataset::document(int64_t doc) const {
  std::vector<int32_t> out(static_cast<size_t>(document_length(doc)));
  read_document(doc, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

void IndexedDataset::read_document(int64_t doc, int64_t offset, int64_t count, int32_t* out) const {
  POLDER_CHECK(doc >= 0 && doc < num_documents_, "{}: document {} out of range [0, {})", prefix_, doc,
               num_documents_);
  const int64_t item = dtype_size(dtype_);
  int64_t skip = offset;
  for (int64_t s = document_index(doc); s < document_index(doc + 1) && count > 0; ++s) {
    int64_t len = sequence_length(s);
    if (skip >= len) {
      skip -= len;
      continue;
    }
    int64_t n = std::min(count, len - skip);
    read_tokens(sequence_pointer(s) + skip * item, n, out);
    out += n;
    count -= n;
    skip = 0;
  }
  POLDER_CHECK(count == 0, "{}: read past the end of document {} (offset {})", prefix_, doc, offset);
}

void IndexedDataset::check_vocab(int64_t vocab_size) const {
  // Each thread scans whole sequences; the lowest offending sequence is then reported, so the message does
  // not depend on the thread count.
  std::atomic<int64_t> first_bad{num_sequences_};
#pragma omp parallel
  {
    std::vector<int32_t> buf;
#pragma omp for schedule(dynamic, 256)
    for (int64_t s = 0; s < num_sequences_; ++s) {
      if (s > first_bad.load(std::memory_order_relaxed)) continue;
      buf.resize(static_cast<size_t>(sequence_length(s)));
      read_tokens(sequence_pointer(s), static_cast<int64_t>(buf.size()), buf.data());
      for (int32_t t : buf) {
        if (t < 0 || t >= vocab_size) {
          int64_t cur = first_bad.load();
          while (s < cur && !first_bad.compare_exchange_weak(cur, s)) {
          }
          break;
        }
      }
    }
  }
  int64_t s = first_bad.load();
  if (s == num_sequences_) return;
  std::vector<int32_t> tokens = sequence(s);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      // The document holding sequence s: the last d with document_index(d) <= s (binary search).
      int64_t lo = 0, hi = num_documents_;
      while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        (document_index(mid) <= s ? lo : hi) = mid;
      }
      const int64_t doc = lo;
      POLDER_FAIL(
          "{}.bin: token id {} (document {}, sequence {}, position {}) is outside the vocabulary of {} "
          "tokens (expected 0 <= id < {}): the dataset was prepared with another tokenizer",
          prefix_, tokens[i], doc, s, i, vocab_size, vocab_size);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDType dtype)
    : prefix_(std::move(prefix)), dtype_(dtype) {
  POLDER_CHECK(
      is_known_code(static_cast<uint8_t>(dtype)) && dtype != TokenDType::kF32 && dtype != TokenDType::kF64,
      "indexed dataset writer {}: dtype code {} is not an integer token dtype", prefix_,
      static_cast<int>(dtype));
  std::filesystem::path parent = std::filesystem::path(prefix_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  const std::string tmp = prefix_ + ".bin.tmp";
  bin_ = std::fopen(tmp.c_str(), "wb");
  POLDER_CHECK(bin_ != nullptr, "cannot create {}: {}", tmp, std::strerror(errno));
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (finalized_) return;
  if (bin_) std::fclose(bin_);
  std::error_code ec;
  std::filesystem::remove(prefix_ + ".bin.tmp", ec);
  std::filesystem::remove(prefix_ + ".idx.tmp", ec);
}

void IndexedDatasetWriter::add_sequence(std::span<const int32_t> tokens) {
  POLDER_CHECK(!finalized_, "indexed dataset writer {}: add after finalize()", prefix_);
  POLDER_CHECK(tokens.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "{}: a sequence of {} tokens exceeds the int32 length field", prefix_, tokens.size());
  const std::string path = prefix_ + ".bin";
  buffer_.resize(tokens.size() * static_cast<size_t>(dtype_size(dtype_)));
  switch (dtype_) {
    case TokenDType::kU8:
      store_tokens<uint8_t>(tokens, buffer_.data(), dtype_, path);
      break;
    case TokenDType::kI8:
      store_tokens<int8_t>(tokens, buffer_.data(), dtype_, path);
      break;
    case TokenDType::kI16:
      store_tokens<int16_t>(tokens, buffer_.data(), dtype_, path);
      break;
    case TokenDType::kU16:
      store_tokens<uint16_t>(tokens, buffer_.data(), dtype_, path);
      break;
    case TokenDType::kI32:
      store_tokens<int32_t>(tokens, buffer_.data(), dtype_, path);
      break;
    case TokenDType::kI64:
      store_tokens<int64_t>(tokens, buffer_.data(), dtype_, path);
      break;
    default:
      POLDER_FAIL("{}: cannot write dtype {}", prefix_, dtype_name(dtype_));
  }
  write_all(bin_, buffer_.data(), buffer_.size(), prefix_ + ".bin.tmp");
  sequence_lengths_.push_back(static_cast<int32_t>(tokens.size()));
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetWriter::end_document() {
  POLDER_CHECK(!finalized_, "indexed dataset writer {}: end_document after finalize()", prefix_);
  document_indices_.push_back(static_cast<int64_t>(sequence_lengths_.size()));
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> tokens) {
  add_sequence(tokens);
  end_document();
}

void IndexedDatasetWriter::finalize() {
  POLDER_CHECK(!finalized_, "indexed dataset writer {}: finalize() called twice", prefix_);
  POLDER_CHECK(document_indices_.back() == static_cast<int64_t>(sequence_lengths_.size()),
               "indexed dataset writer {}: the last {} sequences were not closed with end_document()",
               prefix_, static_cast<int64_t>(sequence_lengths_.size()) - document_indices_.back());
  POLDER_CHECK(num_documents() > 0 && num_tokens_ > 0,
               "indexed dataset writer {}: no tokens were added (an empty dataset cannot be trained on)",
               prefix_);
  const std::string bin_tmp = prefix_ + ".bin.tmp", idx_tmp = prefix_ + ".idx.tmp";
  int rc = std::fclose(bin_);
  bin_ = nullptr;
  POLDER_CHECK(rc == 0, "cannot write {}: {}", bin_tmp, std::strerror(errno));

  std::FILE* idx = std::fopen(idx_tmp.c_str(), "wb");
  POLDER_CHECK(idx != nullptr, "cannot create {}: {}", idx_tmp, std::strerror(errno));
  try {
    const uint8_t code = static_cast<uint8_t>(dtype_);
    const uint64_t seq_count = sequence_lengths_.size(), doc_count = document_indices_.size();
    write_all(idx, kMagic, sizeof(kMagic), idx_tmp);
    write_all(idx, &kVersion, 8, idx_tmp);
    write_all(idx, &code, 1, idx_tmp);
    write_all(idx, &seq_count, 8, idx_tmp);
    write_all(idx, &doc_count, 8, idx_tmp);
    write_all(idx, sequence_lengths_.data(), 4 * seq_count, idx_tmp);
    std::vector<int64_t> pointers(seq_count);
    int64_t ptr = 0;
    for (size_t s = 0; s < seq_count; ++s) {
      pointers[s] = ptr;
      ptr += int64_t{sequence_lengths_[s]} * dtype_size(dtype_);
    }
    write_all(idx, pointers.data(), 8 * seq_count, idx_tmp);
    write_all(idx, document_indices_.data(), 8 * doc_count, idx_tmp);
  } catch (...) {
    std::fclose(idx);
    throw;
  }
  POLDER_CHECK(std::fclose(idx) == 0, "cannot write {}: {}", idx_tmp, std::strerror(errno));

  // An existing .idx goes first: any .idx on disk then always describes the .bin beside it.
  std::filesystem::remove(prefix_ + ".idx");
  std::filesystem::rename(bin_tmp, prefix_ + ".bin");
  std::filesystem::rename(idx_tmp, prefix_ + ".idx");
  finalized_ = true;
}

}  // namespace polder::data
