#!/usr/bin/env python3
"""Writes small Megatron MMIDIDX datasets (.bin/.idx) plus the expected token lists as JSON, independently of
polder's C++ writer, following the layout of Megatron-LM's megatron/core/datasets/indexed_dataset.py
(_IndexWriter / IndexedDatasetBuilder). tests/test_data_indexed_dataset.cpp reads them back and compares.

Usage: /usr/bin/python3 scripts/reference/make_idx_fixture.py [out_dir]   (default tests/fixtures/indexed)
Needs only numpy; the output is deterministic (fixed seed)."""
import json
import os
import struct
import sys

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
               np.float32: 7, np.uint16: 8}


def write_dataset(prefix, documents, dtype):
    """documents: list of documents, each a list of sequences (lists of ints)."""
    lengths, doc_indices = [], [0]
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            for seq in doc:
                f.write(np.asarray(seq, dtype=dtype).tobytes(order="C"))
                lengths.append(len(seq))
            doc_indices.append(len(lengths))
    itemsize = np.dtype(dtype).itemsize
    pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) * itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_indices)))
        f.write(np.asarray(lengths, dtype=np.int32).tobytes(order="C"))
        f.write(np.asarray(pointers, dtype=np.int64).tobytes(order="C"))
        f.write(np.asarray(doc_indices, dtype=np.int64).tobytes(order="C"))
    return {
        "dtype": np.dtype(dtype).name,
        "dtype_code": DTYPE_CODES[dtype],
        "sequence_lengths": [int(x) for x in lengths],
        "sequence_pointers": [int(x) for x in pointers],
        "document_indices": doc_indices,
        "documents": [[int(t) for seq in doc for t in seq] for doc in documents],
    }


def random_documents(rng, n_docs, max_id, multi_sequence_doc):
    docs = []
    for d in range(n_docs):
        n_seq = 3 if d == multi_sequence_doc else 1
        docs.append([rng.integers(0, max_id, size=int(rng.integers(1, 40))).tolist() for _ in range(n_seq)])
    return docs


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests",
                                                              "fixtures", "indexed")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    expected = {
        # vocabulary < 65500: Megatron writes uint16; ids reach above 32767 to catch signed reads.
        "ref_u16": write_dataset(os.path.join(out, "ref_u16"), random_documents(rng, 6, 65000, 2), np.uint16),
        # large vocabulary: int32, ids above 65535.
        "ref_i32": write_dataset(os.path.join(out, "ref_i32"), random_documents(rng, 5, 200000, 0), np.int32),
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
