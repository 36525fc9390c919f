// Pure address and fragment arithmetic of the sm_90a flash-attention forward (flash_attention_sm90.cu),
// __host__ __device__ so that tests/test_cuda_flash_attention_sm90.cpp checks on a CPU what the kernel cannot
// check without a GPU: that the bytes TMA's 128-byte swizzle gives each element of the Q, K and V tiles are
// the bytes wgmma reads through the kernel's descriptors (modelled by gemm_sm90_layout.h's
// wgmma_smem_address), that the accumulator fragment of S = Q K^T is the register A operand of O += P V, and
// the causal tile range.
#pragma once

#include <cstdint>

#include "kernels/cuda/gemm_sm90_layout.h"

namespace polder::kernels::fa_sm90 {

namespace L = sm90_layout;

// Tiles: 128 queries per CTA (two consumer warpgroups of 64 rows), 128 keys per K/V tile, two K/V stages.
constexpr int kBr = 128, kBc = 128, kStages = 2, kWgRows = 64;
constexpr int kBox = L::kBoxInner;  // head-dim elements per TMA box: 64 bf16/f16 = one 128-byte swizzle row

// A tile of `rows` rows (queries or keys) of head dim D is loaded as D / 64 TMA boxes of 64 elements x `rows`
// rows, box j (head-dim elements 64 j ..) at j * rows * 128 bytes, each 1024-aligned.
POLDER_SM90_HD constexpr uint32_t tile_bytes(int rows, int D) {
  return static_cast<uint32_t>(rows) * static_cast<uint32_t>(D) * 2;
}
POLDER_SM90_HD constexpr uint32_t box_bytes(int rows) {
  return static_cast<uint32_t>(rows) * L::kRowBytes;
}

// Shared memory (from a 1024-aligned base): Q, K stages, V stages, then the mbarriers (8 bytes each):
// q_full, k_full[kStages], v_full[kStages], empty[kStages].
template <int D>
struct Smem {
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQ + tile_bytes(kBr, D);
  static constexpr uint32_t kV = kK + kStages * tile_bytes(kBc, D);
  static constexpr uint32_t kBars = kV + kStages * tile_bytes(kBc, D);
  static constexpr uint32_t kBarCount = 1 + 3 * kStages;
  // Plus up to 1023 bytes to align the base.
  static constexpr uint32_t kBytes = kBars + 8 * kBarCount + L::kAtomBytes;
  static_assert(kBytes <= 227 * 1024,
                "Q and two K/V stages must fit the 227 KiB a Hopper block may opt into");
  static_assert(kK % L::kAtomBytes == 0 && kV % L::kAtomBytes == 0 && kBars % 8 == 0, "1024-aligned tiles");
};

// Where TMA puts element (row, d) of such a tile, relative to the tile's start (128-byte swizzle per box).
POLDER_SM90_HD uint32_t tile_offset(int rows, uint32_t row, uint32_t d) {
  return (d / kBox) * box_bytes(rows) + L::tma_box_offset(row, d % kBox);
}

// K-major operand (the rows of the tile are M or N, the head dim is K): Q as A of S = Q K^T (rows row0 .. +
// 63 of a warpgroup) and K as B (all kBc rows). k16 slice ks (0 .. D / 16 - 1) lies in box ks / 4, 32 bytes
// per slice further into each 128-byte row; 8-row groups 1024 bytes apart (SBO); LBO unused (16).
POLDER_SM90_HD L::DescFields kmajor_desc(uint32_t tile, int rows, uint32_t row0, int ks) {
  return L::operand_desc(tile + static_cast<uint32_t>(ks / 4) * box_bytes(rows), false, row0, ks % 4);
}

// V as the MN-major B operand of O += P V (K = keys, N = head dim, stored key-major with the head dim
// contiguous): k16 slice ks (keys 16 ks ..) starts 16 rows (2048 bytes) into every box; 8-key groups 1024
// bytes apart (SBO); the next 64 head-dim elements are the next box (LBO = kBc * 128 bytes).
POLDER_SM90_HD L::DescFields v_desc(uint32_t tile, int ks) {
  L::DescFields f;
  f.swizzle = L::kSwizzle128;
  f.start = tile + static_cast<uint32_t>(ks) * 16 * L::kRowBytes;
  f.lbo = box_bytes(kBc);
  f.sbo = L::kAtomBytes;
  return f;
}

// ---- Register fragments (PTX ISA, "Register Fragments and Shared Memory Matrix Layouts" of wgmma .m64nNk16;
// tid = thread in the warpgroup, w = tid / 32, g = lane / 4, q = lane % 4).
// Accumulator D (64 x N, f32): element i (0 .. N / 2 - 1) of a thread is row 16 w + g + 8 ((i / 2) % 2),
// column 8 (i / 4) + 2 q + i % 2.
struct RowCol {
  uint32_t row = 0, col = 0;
};
POLDER_SM90_HD RowCol acc_coord(uint32_t tid, uint32_t i) {
  const uint32_t w = tid / 32, g = (tid % 32) / 4, q = tid % 4;
  return {16 * w + g + 8 * ((i / 2) % 2), 8 * (i / 4) + 2 * q + i % 2};
}
// A from registers (64 x 16, bf16/f16): four 32-bit registers of two elements; half h of register r is row
// 16 w + g + 8 (r % 2), column 2 q + h + 8 (r / 2) (the m16n8k16 A layout per warp, warp w on rows 16 w ..).
POLDER_SM90_HD RowCol a_coord(uint32_t tid, uint32_t r, uint32_t h) {
  const uint32_t w = tid / 32, g = (tid % 32) / 4, q = tid % 4;
  return {16 * w + g + 8 * (r % 2), 2 * q + h + 8 * (r / 2)};
}
// So P (the S accumulator after the softmax, 64 x kBc) feeds the k16 slice kk of O += P V with no data
// movement: half h of A register r is the thread's own accumulator element 8 kk + 2 r + h (same row; column
// 16 kk + a_coord's column). The kernel packs registers with exactly this index.
POLDER_SM90_HD uint32_t p_index(uint32_t kk, uint32_t r, uint32_t h) {
  return 8 * kk + 2 * r + h;
}

// ---- Tiles of keys a 128-query block visits. Causal (keys aligned to the end: query t sees s <= t + S - T):
// the block's last query q0 + 127 sees keys < q0 + 128 + S - T, so later tiles are skipped; 0 tiles when no
// query of the block sees a key (S < T). A tile needs masking where it reaches past S or, causal, past the
// first key hidden from the first row of the warpgroup (row0).
POLDER_SM90_HD int key_tiles(int64_t T, int64_t S, bool causal, int64_t q0) {
  int64_t end = S;
  if (causal) {
    const int64_t last = q0 + kBr + (S - T);
    end = last < S ? last : S;
  }
  return end > 0 ? static_cast<int>((end + kBc - 1) / kBc) : 0;
}
POLDER_SM90_HD bool tile_needs_mask(int64_t T, int64_t S, bool causal, int64_t row0, int64_t k0) {
  return k0 + kBc > S || (causal && k0 + kBc - 1 > row0 + (S - T));
}
POLDER_SM90_HD bool masked(int64_t T, int64_t S, bool causal, int64_t row, int64_t col) {
  return col >= S || (causal && col > row + (S - T));
}

}  // namespace polder::kernels::fa_sm90
