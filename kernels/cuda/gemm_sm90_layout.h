// Pure address arithmetic of the TMA GEMM (kernels/cuda/gemm_sm90_tma.cu), __host__ __device__ so that
// tests/test_gemm_sm90_layout.cpp checks on a CPU what the kernel cannot check without a GPU: that the byte
// where TMA's 128-byte swizzle puts each element of a tile is the byte wgmma reads for it through the
// kernel's descriptors. The two sides are written independently: (1) from the TMA swizzle rule (16-byte chunk
// index within a 128-byte row XOR row % 8), (2) from the PTX ISA's canonical wgmma layouts (section
// "Shared Memory Matrix Layout": ((8,m),(T,2k)):((8T,SBO),(1,T)) K-major,
// ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) MN-major for 128B swizzling, then Swizzle<3,4,3> on the byte address)
// and the descriptor bit fields. bf16 only (T = 8 elements per 16 bytes).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define POLDER_SM90_HD __host__ __device__ __forceinline__
#else
#define POLDER_SM90_HD inline
#endif

namespace polder::kernels::sm90_layout {

// Block tile (M x N x K) and ring: 128 x 256 x 64, 4 stages of 48 KiB (192 KiB of the 227 KiB an H100 block
// may have); two consumer warpgroups of 64 x 256 each (128 fp32 accumulators per thread).
constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kWgRows = 64, kGroup = 8;
constexpr int kBoxInner = 64;  // elements in a TMA box's contiguous dimension: 128 bytes, the swizzle span
constexpr uint32_t kRowBytes = 128, kAtomBytes = 1024;  // one swizzled row; 8 rows: the pattern's period
constexpr uint32_t kMnBoxBytes = kBK * kRowBytes;       // MN-major box: 64 K rows x 64 MN elements (8 KiB)
constexpr uint32_t kStageBytesA = kBM * kBK * 2;        // 16 KiB
constexpr uint32_t kStageBytesB = kBN * kBK * 2;        // 32 KiB
constexpr uint32_t kSmemA = 0;                          // stage s of A at kSmemA + s * kStageBytesA
constexpr uint32_t kSmemB = kSmemA + kStages * kStageBytesA;     // stage s of B at kSmemB + s * kStageBytesB
constexpr uint32_t kSmemBars = kSmemB + kStages * kStageBytesB;  // full[s] at + 8 s, empty[s] at + 8 (S + s)
// Dynamic shared memory: the above from a 1024-aligned base, plus up to 1023 bytes to align the base.
constexpr uint32_t kSmemBytes = kSmemBars + 16 * kStages + kAtomBytes;
static_assert(kSmemBytes <= 227 * 1024, "the ring must fit the 227 KiB a Hopper block may opt into");
static_assert(kStageBytesA % kAtomBytes == 0 && kStageBytesB % kAtomBytes == 0, "stages keep 1024 alignment");

// Descriptor swizzle modes (bits 62-63 of a wgmma matrix descriptor).
enum : uint32_t { kSwizzleNone = 0, kSwizzle128 = 1, kSwizzle64 = 2, kSwizzle32 = 3 };

// ---- (1) TMA: where the 128-byte swizzle puts element (row, col) of a box whose rows are 128 bytes (64
// bf16), relative to the box's shared-memory start (1024-aligned): the 16-byte chunk index within the row is
// XORed with row % 8.
POLDER_SM90_HD uint32_t tma_box_offset(uint32_t row, uint32_t col) {
  const uint32_t byte = col * 2, chunk = byte / 16;
  return row * kRowBytes + ((chunk ^ (row % 8)) * 16) + byte % 16;
}

// Byte offset of box j of an MN-major operand tile in its stage (one box per 64 M or N elements).
POLDER_SM90_HD uint32_t mn_box_start(int j) {
  return static_cast<uint32_t>(j) * kMnBoxBytes;
}

// Where the producer's TMA loads put element (mn, k) of an operand tile (mn < 128 for A, < 256 for B; k < 64)
// relative to the stage buffer. K-major (A as stored, B^T as stored): one box of kBK x rows, box row mn,
// column k. MN-major (A^T, B): boxes of 64 (MN, contiguous) x 64 (K), box mn / 64, box row k, column mn % 64.
POLDER_SM90_HD uint32_t tma_tile_offset(bool mn_major, uint32_t mn, uint32_t k) {
  if (!mn_major) return tma_box_offset(mn, k);
  return mn_box_start(static_cast<int>(mn / kBoxInner)) + tma_box_offset(k, mn % kBoxInner);
}

// ---- The wgmma matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address bits 0-13, leading
// dimension byte offset 16-29, stride dimension byte offset 32-45 (each (x & 0x3FFFF) >> 4), base offset
// 49-51, swizzle mode 62-63.
struct DescFields {
  uint32_t start = 0;         // shared-memory byte address
  uint32_t lbo = 0, sbo = 0;  // bytes
  uint32_t base_offset = 0, swizzle = kSwizzleNone;
};

POLDER_SM90_HD uint64_t encode_desc(const DescFields& f) {
  auto enc = [](uint32_t x) { return static_cast<uint64_t>((x & 0x3FFFFu) >> 4); };
  return enc(f.start) | (enc(f.lbo) << 16) | (enc(f.sbo) << 32) |
         (static_cast<uint64_t>(f.base_offset & 7u) << 49) | (static_cast<uint64_t>(f.swizzle & 3u) << 62);
}

POLDER_SM90_HD DescFields decode_desc(uint64_t d) {
  DescFields f;
  f.start = static_cast<uint32_t>(d & 0x3FFFu) << 4;
  f.lbo = static_cast<uint32_t>((d >> 16) & 0x3FFFu) << 4;
  f.sbo = static_cast<uint32_t>((d >> 32) & 0x3FFFu) << 4;
  f.base_offset = static_cast<uint32_t>((d >> 49) & 7u);
  f.swizzle = static_cast<uint32_t>(d >> 62);
  return f;
}

// The descriptor the consumers pass to wgmma for the k16 slice ks (0..3) of an operand tile whose stage
// buffer starts at `stage` (1024-aligned), starting at tile row `mn0` (A: the warpgroup's 64 rows; B: 0).
// K-major, 128B swizzle: 8-row groups 1024 bytes apart (SBO); LBO unused ("assumed 1": 16 bytes); the k16
// slice starts 32 bytes further into each 128-byte row (the swizzle is a function of the address, so the
// start may sit inside the pattern). MN-major, 128B swizzle: LBO = next 64 MN elements (the next box, 8 KiB),
// SBO = next 8 K rows (1024 bytes); the k16 slice starts 16 rows (2048 bytes) further.
POLDER_SM90_HD DescFields operand_desc(uint32_t stage, bool mn_major, uint32_t mn0, int ks) {
  DescFields f;
  f.swizzle = kSwizzle128;
  f.sbo = kAtomBytes;
  if (!mn_major) {
    f.start = stage + mn0 * kRowBytes + static_cast<uint32_t>(ks) * 32;
    f.lbo = 16;
  } else {
    f.start =
        stage + mn_box_start(static_cast<int>(mn0 / kBoxInner)) + static_cast<uint32_t>(ks) * 16 * kRowBytes;
    f.lbo = kMnBoxBytes;
  }
  return f;
}

// ---- (2) wgmma: the shared-memory byte address wgmma reads for element (mn, k) (mn < 64 for A, < N for B;
// k < 16) of an operand described by `desc`, from the PTX ISA's canonical layouts (T = 8 bf16 per 16 bytes;
// W = swizzle bytes, W / 16 16-byte units per swizzled row):
//   K-major, swizzled:   ((8,m),(T,2k)):((W/16 T, SBO),(1,T))      no swizzle:
//   ((8,m),(T,2k)):((1T,SBO),(1,LBO)) MN-major, swizzled:  ((T,W/16,m),(8,k)):((1,T,LBO),(W/16 T,SBO)) no
//   swizzle: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
// (strides in elements, LBO/SBO in bytes), then Swizzle<log2(W/16),4,3> on the byte address: bits [7, 7 + b)
// XORed into bits [4, 4 + b). Base offset 0 only (the patterns start 1024/512/256-aligned): returns ~0u
// otherwise.
POLDER_SM90_HD uint32_t wgmma_smem_address(uint64_t desc, bool mn_major, uint32_t mn, uint32_t k) {
  const DescFields f = decode_desc(desc);
  if (f.base_offset != 0) return ~0u;
  const uint32_t units = f.swizzle == kSwizzle128  ? 8
                         : f.swizzle == kSwizzle64 ? 4
                         : f.swizzle == kSwizzle32 ? 2
                                                   : 1;
  const uint32_t T = 8, e = 2;  // elements per 16 bytes, bytes per element
  uint32_t off = 0;
  if (!mn_major) {
    const uint32_t k_outer = f.swizzle == kSwizzleNone ? f.lbo : T * e;  // the "2k" mode's stride
    off = (mn % 8) * units * T * e + (mn / 8) * f.sbo + (k % T) * e + (k / T) * k_outer;
  } else if (f.swizzle == kSwizzleNone) {
    off = (mn % T) * e + (mn / T) * f.sbo + (k % 8) * T * e + (k / 8) * f.lbo;
  } else {
    off = (mn % T) * e + ((mn / T) % units) * T * e + (mn / (T * units)) * f.lbo + (k % 8) * units * T * e +
          (k / 8) * f.sbo;
  }
  const uint32_t addr = f.start + off;
  const uint32_t mask = (units - 1) << 4;  // b = log2(units) bits from bit 4
  return addr ^ ((addr >> 3) & mask);
}

// ---- Tile order: output tile t (0 .. batch * tiles_m * tiles_n - 1) of the persistent loop -> (batch, tile
// row, tile column), batch-major, then groups of kGroup tile rows walked column by column (the L2-friendly
// order of gemm_own.cuh), so that CTAs running side by side share B columns and A rows in L2.
struct TileCoord {
  int64_t batch = 0;
  int tm = 0, tn = 0;
};

POLDER_SM90_HD TileCoord tile_coord(int64_t t, int tiles_m, int tiles_n) {
  const int64_t per = static_cast<int64_t>(tiles_m) * tiles_n;
  TileCoord c;
  c.batch = t / per;
  const int64_t pid = t % per, width = static_cast<int64_t>(kGroup) * tiles_n, group = pid / width;
  const int first_m = static_cast<int>(group) * kGroup;
  const int rows = tiles_m - first_m < kGroup ? tiles_m - first_m : kGroup;
  c.tm = first_m + static_cast<int>((pid % width) % rows);
  c.tn = static_cast<int>((pid % width) / rows);
  return c;
}

}  // namespace polder::kernels::sm90_layout
