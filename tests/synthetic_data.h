// A small learnable synthetic corpus for training tests and benchmarks: documents of 5-44 tokens where the
// next token is (3 t + 1) mod V with probability 0.7 (else random), written as a Megatron .bin/.idx pair.
// Deterministic from the seed (Philox), so every rank of a multi-rank test writes or reads the same data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "kernels/philox.h"

namespace polder::testing {

inline void write_synthetic_dataset(const std::string& prefix, int64_t docs, int64_t vocab, uint64_t seed) {
  data::IndexedDatasetWriter w(prefix, data::TokenDType::kU16);
  for (int64_t d = 0; d < docs; ++d) {
    const int64_t len = 5 + static_cast<int64_t>(philox::uniform(seed, 1, static_cast<uint64_t>(d)) * 40);
    std::vector<int32_t> toks;
    int32_t t = static_cast<int32_t>(philox::uniform(seed, 2, static_cast<uint64_t>(d)) * vocab) % vocab;
    for (int64_t i = 0; i < len; ++i) {
      toks.push_back(t);
      const double u = philox::uniform(seed, 3, static_cast<uint64_t>(d * 1000 + i));
      t = u < 0.7 ? static_cast<int32_t>((t * 3 + 1) % vocab) : static_cast<int32_t>(u * 1e6) % vocab;
    }
    w.add_document(toks);
  }
  w.finalize();
}

}  // namespace polder::testing
