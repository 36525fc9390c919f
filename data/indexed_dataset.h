// Megatron-compatible mmap indexed datasets: <prefix>.bin holds the token ids back to back, <prefix>.idx the
// index, byte for byte as Megatron-LM's indexed_dataset.py writes it (layout in docs/DATA_FORMAT.md), so
// corpora prepared for Megatron load as they are. Tokens are returned as int32 whatever the on-disk dtype.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace polder::data {

// Megatron's dtype codes. Token datasets use u16 (vocabulary < 65500) or i32; the float codes are read from a
// header only to name them in the error that rejects them.
enum class TokenDType : uint8_t {
  kU8 = 1,
  kI8 = 2,
  kI16 = 3,
  kI32 = 4,
  kI64 = 5,
  kF64 = 6,
  kF32 = 7,
  kU16 = 8,
};

int64_t dtype_size(TokenDType dtype);
const char* dtype_name(TokenDType dtype);  // numpy's name: "uint16", "int32", ...
// Megatron's choice: uint16 when every id fits below 65500, else int32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);

// A read-only, memory-mapped view of <prefix>.idx and <prefix>.bin. Opening validates the whole index (magic,
// version, dtype, counts, file sizes, monotone document indices, every sequence inside the .bin) and throws
// polder::Error with one line naming the file and what was expected. A document is the run of sequences
// document_indices[d] .. document_indices[d+1]; with polder's writer (and Megatron's default preprocessing)
// every document is one sequence.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(IndexedDataset&& other) noexcept;
  IndexedDataset& operator=(IndexedDataset&& other) noexcept;
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_documents_; }  // header's document count minus one
  int64_t num_tokens() const { return num_tokens_; }

  int32_t sequence_length(int64_t seq) const;
  int64_t sequence_pointer(int64_t seq) const;  // byte offset in the .bin
  int64_t document_index(int64_t i) const;      // i in [0, num_documents]: first sequence of document i
  int64_t document_length(int64_t doc) const;   // tokens in the document (sum over its sequences)

  std::vector<int32_t> sequence(int64_t seq) const;
  std::vector<int32_t> document(int64_t doc) const;
  // Copies tokens [offset, offset + count) of document `doc` into out (count int32 values).
  void read_document(int64_t doc, int64_t offset, int64_t count, int32_t* out) const;

  // Scans every token (in parallel) and throws if one is negative or >= vocab_size, naming the first
  // offender.
  void check_vocab(int64_t vocab_size) const;

 private:
  void read_tokens(int64_t byte_offset, int64_t count, int32_t* out) const;
  void release();

  std::string prefix_;
  TokenDType dtype_ = TokenDType::kU16;
  int64_t num_sequences_ = 0;
  int64_t num_documents_ = 0;
  int64_t num_tokens_ = 0;
  const std::byte* idx_ = nullptr;  // whole .idx mapping
  size_t idx_bytes_ = 0;
  const std::byte* bin_ = nullptr;  // whole .bin mapping (null when the .bin is empty)
  size_t bin_bytes_ = 0;
  size_t lengths_offset_ = 0, pointers_offset_ = 0, doc_index_offset_ = 0;  // byte offsets in the .idx
};

// Streams tokens to <prefix>.bin and writes <prefix>.idx at finalize(). Both are written under temporary
// names and renamed at the end (.bin first, .idx last, an old .idx removed before), so a crash never leaves a
// .idx that does not describe its .bin. Destroying an unfinalized writer removes the temporary files.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::string prefix, TokenDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One document made of one sequence (what `polder data prepare` writes).
  void add_document(std::span<const int32_t> tokens);
  // Megatron's add_item/end_document: several sequences (e.g. sentences) forming one document.
  void add_sequence(std::span<const int32_t> tokens);
  void end_document();
  void finalize();

  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t num_tokens() const { return num_tokens_; }

 private:
  std::string prefix_;
  TokenDType dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<int32_t> sequence_lengths_;
  std::vector<int64_t> document_indices_{0};
  std::vector<std::byte> buffer_;
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

}  // namespace polder::data
