// The shared-memory layout of the TMA GEMM (kernels/cuda/gemm_sm90_layout.h), on a CPU: for every element of
// every k16 slice of both operand tiles, in K-major and MN-major orientation, the byte where the producer's
// TMA loads put it (the 128-byte swizzle rule and the kernel's box placement) must be the byte wgmma reads
// for it through the kernel's descriptor (the PTX ISA's canonical layouts, decoded from the descriptor's
// bits). The canonical-layout function is itself checked against the PTX ISA's worked examples, and mutated
// descriptors must fail the comparison (the test can fail). Also: the descriptor bit packing against
// hand-computed words, and the persistent loop's tile order visiting every tile exactly once.
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/gemm_sm90_layout.h"

namespace L = polder::kernels::sm90_layout;

namespace {

using Mutation = std::function<void(L::DescFields&)>;

struct Operand {
  const char* name;
  uint32_t stage_base;  // where the kernel puts this stage (1024-aligned base assumed at 0x400)
  int rows;             // tile rows along M or N (128 for A, 256 for B)
  int wg_rows;          // rows one wgmma covers (64 for A: each warpgroup its half; 256 for B)
};

// Elements of the operand whose TMA byte and wgmma byte differ, over every warpgroup slice, k16 slice and
// element; `first` describes the first one.
int64_t mismatches(const Operand& op, bool mn_major, const Mutation& mutate, std::string* first) {
  int64_t bad = 0;
  for (int mn0 = 0; mn0 < op.rows; mn0 += op.wg_rows)
    for (int ks = 0; ks < L::kBK / 16; ++ks) {
      L::DescFields f = L::operand_desc(op.stage_base, mn_major, static_cast<uint32_t>(mn0), ks);
      if (mutate) mutate(f);
      const uint64_t desc = L::encode_desc(f);
      for (int mn = 0; mn < op.wg_rows; ++mn)
        for (int k = 0; k < 16; ++k) {
          const uint32_t tma = op.stage_base + L::tma_tile_offset(mn_major, static_cast<uint32_t>(mn0 + mn),
                                                                  static_cast<uint32_t>(ks * 16 + k));
          const uint32_t mma =
              L::wgmma_smem_address(desc, mn_major, static_cast<uint32_t>(mn), static_cast<uint32_t>(k));
          if (tma != mma && bad++ == 0 && first) {
            std::ostringstream s;
            s << op.name << (mn_major ? " MN-major" : " K-major") << " rows " << mn0 << ".. ks " << ks
              << " element (" << mn << ", " << k << "): TMA byte " << tma << ", wgmma byte " << mma;
            *first = s.str();
          }
        }
    }
  return bad;
}

const uint32_t kBase = 0x400;  // a 1024-aligned dynamic shared-memory base
const Operand kA{"A", kBase + L::kSmemA + 2 * L::kStageBytesA, L::kBM, L::kWgRows};
const Operand kB{"B", kBase + L::kSmemB + 3 * L::kStageBytesB, L::kBN, L::kBN};

// Swizzle<b,4,3> on a byte address, written out for the worked examples.
uint32_t swizzle_bytes(uint32_t addr, int b) {
  const uint32_t mask = ((1u << b) - 1) << 4;
  return addr ^ ((addr >> 3) & mask);
}

}  // namespace

TEST_CASE("sm90 layout: TMA's swizzled boxes are what wgmma's descriptors read", "[gemm_sm90_layout]") {
  for (const Operand* op : {&kA, &kB})
    for (bool mn_major : {false, true}) {
      std::string first;
      const int64_t bad = mismatches(*op, mn_major, nullptr, &first);
      INFO(op->name << (mn_major ? " MN-major" : " K-major") << ": " << bad
                    << " mismatches; first: " << first);
      CHECK(bad == 0);
    }
}

TEST_CASE("sm90 layout: mutated descriptors are caught", "[gemm_sm90_layout]") {
  struct Case {
    const char* what;
    bool mn_major;
    Mutation mutate;
  };
  const Case cases[] = {
      {"K-major SBO 512", false, [](L::DescFields& f) { f.sbo = 512; }},
      {"K-major k16 step 16 bytes instead of 32", false,
       [](L::DescFields& f) { f.start -= (f.start % 128) / 2; }},
      {"K-major swizzle 64B", false, [](L::DescFields& f) { f.swizzle = L::kSwizzle64; }},
      {"K-major no swizzle", false, [](L::DescFields& f) { f.swizzle = L::kSwizzleNone; }},
      {"MN-major LBO and SBO swapped", true, [](L::DescFields& f) { std::swap(f.lbo, f.sbo); }},
      {"MN-major LBO 1024", true, [](L::DescFields& f) { f.lbo = 1024; }},
      {"MN-major SBO 2048", true, [](L::DescFields& f) { f.sbo = 2048; }},
      {"MN-major start off by one row", true, [](L::DescFields& f) { f.start += L::kRowBytes; }},
  };
  for (const Case& c : cases)
    for (const Operand* op : {&kA, &kB}) {
      // A's MN-major wgmma spans one 64-element box: its LBO is never used.
      if (op == &kA && std::string(c.what) == "MN-major LBO 1024") continue;
      const int64_t bad = mismatches(*op, c.mn_major, c.mutate, nullptr);
      INFO(op->name << " " << c.what << ": " << bad << " mismatches");
      CHECK(bad > 0);
    }
  // The orientations are not interchangeable: the K-major descriptor read as MN-major (the transpose bit
  // flipped) and the other way round.
  for (const Operand* op : {&kA, &kB})
    for (bool mn_major : {false, true}) {
      int64_t bad = 0;
      for (int ks = 0; ks < 4; ++ks) {
        const uint64_t desc = L::encode_desc(L::operand_desc(op->stage_base, mn_major, 0, ks));
        for (uint32_t mn = 0; mn < 64; ++mn)
          for (uint32_t k = 0; k < 16; ++k)
            bad += L::wgmma_smem_address(desc, !mn_major, mn, k) !=
                   op->stage_base + L::tma_tile_offset(mn_major, mn, static_cast<uint32_t>(ks * 16) + k);
      }
      INFO(op->name << " transpose bit flipped from " << (mn_major ? "MN" : "K") << "-major: " << bad);
      CHECK(bad > 0);
    }
}

TEST_CASE("sm90 layout: TMA tiles fill their stage exactly once, 1024-aligned", "[gemm_sm90_layout]") {
  for (const Operand* op : {&kA, &kB})
    for (bool mn_major : {false, true}) {
      std::set<uint32_t> bytes;
      int odd = 0;
      for (uint32_t mn = 0; mn < static_cast<uint32_t>(op->rows); ++mn)
        for (uint32_t k = 0; k < static_cast<uint32_t>(L::kBK); ++k) {
          const uint32_t o = L::tma_tile_offset(mn_major, mn, k);
          odd += o % 2;
          bytes.insert(o);
        }
      INFO(op->name << (mn_major ? " MN-major" : " K-major"));
      CHECK(odd == 0);
      CHECK(bytes.size() == static_cast<size_t>(op->rows * L::kBK));
      CHECK(*bytes.rbegin() == static_cast<uint32_t>(op->rows * L::kBK * 2 - 2));
      CHECK(op->stage_base % L::kAtomBytes == 0);
    }
  for (int j = 0; j < L::kBN / L::kBoxInner; ++j) CHECK(L::mn_box_start(j) % L::kAtomBytes == 0);
  CHECK(L::kSmemBars % 8 == 0);
  CHECK(L::kSmemBytes <= 232448u);  // cudaDevAttrMaxSharedMemoryPerBlockOptin on H100/H200
}

TEST_CASE("sm90 layout: TMA swizzle rule and descriptor bits by hand", "[gemm_sm90_layout]") {
  // Row 0 is not permuted; row 3's chunk 1 (bytes 16..31, elements 8..15) lands in chunk 1 ^ 3 = 2.
  CHECK(L::tma_box_offset(0, 9) == 18u);
  CHECK(L::tma_box_offset(3, 8) == 3 * 128u + 32u);
  CHECK(L::tma_box_offset(7, 63) == 7 * 128u + (7u ^ 7u) * 16u + 14u);
  CHECK(L::tma_box_offset(9, 0) == 9 * 128u + 16u);  // row 9: 9 % 8 = 1
  // K-major A, stage at 0x1000, k16 slice 1: start 0x1020 -> 0x102, LBO 16 -> 1, SBO 1024 -> 64, 128B -> 1.
  const uint64_t d = L::encode_desc(L::operand_desc(0x1000, false, 0, 1));
  CHECK(d == (0x102ull | (1ull << 16) | (64ull << 32) | (1ull << 62)));
  // MN-major B, stage at 0x8000, slice 3: start 0x8000 + 3 * 2048 = 0x9800 -> 0x980, LBO 8192 -> 512, SBO 64.
  const uint64_t e = L::encode_desc(L::operand_desc(0x8000, true, 0, 3));
  CHECK(e == (0x980ull | (512ull << 16) | (64ull << 32) | (1ull << 62)));
  const L::DescFields f = L::decode_desc(e);
  CHECK(f.start == 0x9800u);
  CHECK(f.lbo == 8192u);
  CHECK(f.sbo == 1024u);
  CHECK(f.swizzle == L::kSwizzle128);
  CHECK(f.base_offset == 0u);
  L::DescFields g = f;
  g.base_offset = 2;
  CHECK(L::wgmma_smem_address(L::encode_desc(g), true, 0, 0) == ~0u);  // not modelled: refused
}

TEST_CASE("sm90 layout: canonical layouts match the PTX ISA's bf16 examples", "[gemm_sm90_layout]") {
  // PTX ISA "Canonical Layouts" examples for bf16, MN-major, m = 2, k = 2 (strides in elements):
  //   no swizzle: ((8,1,2),(8,2)):((1,8,64),(8,128)), LBO 128 el, SBO 64 el
  //   32B:        Swizzle<1,4,3> o ((8,2,2),(8,2)):((1,8,128),(16,256)), LBO 128 el, SBO 256 el
  //   64B:        Swizzle<2,4,3> o ((8,4,2),(8,2)):((1,8,256),(32,512)), LBO 256 el, SBO 512 el
  struct Example {
    uint32_t swizzle;
    int b, units;
    uint32_t lbo_el, sbo_el;
  };
  const Example ex[] = {
      {L::kSwizzleNone, 0, 1, 128, 64}, {L::kSwizzle32, 1, 2, 128, 256}, {L::kSwizzle64, 2, 4, 256, 512}};
  for (const Example& x : ex) {
    L::DescFields f;
    f.start = 0x2000;
    f.lbo = x.lbo_el * 2;
    f.sbo = x.sbo_el * 2;
    f.swizzle = x.swizzle;
    const uint64_t desc = L::encode_desc(f);
    int64_t bad = 0;
    const uint32_t mn_extent = 8 * x.units * 2;
    for (uint32_t mn = 0; mn < mn_extent; ++mn)
      for (uint32_t k = 0; k < 16; ++k) {
        uint32_t el = 0;
        if (x.swizzle == L::kSwizzleNone)
          el = (mn % 8) + (mn / 8) * x.sbo_el + (k % 8) * 8 + (k / 8) * x.lbo_el;
        else
          el = (mn % 8) + ((mn / 8) % x.units) * 8 + (mn / (8 * x.units)) * x.lbo_el + (k % 8) * 8 * x.units +
               (k / 8) * x.sbo_el;
        bad += L::wgmma_smem_address(desc, true, mn, k) != swizzle_bytes(f.start + 2 * el, x.b);
      }
    INFO("MN-major example with swizzle mode " << x.swizzle << ": " << bad << " mismatches");
    CHECK(bad == 0);
  }
  // K-major, no swizzle, as gemm_sm90.cu lays it out: 8 x 16-byte core matrices, LBO 128 (next along K), SBO
  // 512 (next 8 rows along M/N): element (r, k) at ((r / 8) * 4 + k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2.
  L::DescFields f;
  f.start = 0;
  f.lbo = 128;
  f.sbo = 512;
  const uint64_t desc = L::encode_desc(f);
  int64_t bad = 0;
  for (uint32_t r = 0; r < 64; ++r)
    for (uint32_t k = 0; k < 16; ++k)
      bad += L::wgmma_smem_address(desc, false, r, k) !=
             ((r / 8) * 4 + k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2;
  CHECK(bad == 0);
}

TEST_CASE("sm90 layout: the persistent tile order visits every tile once", "[gemm_sm90_layout]") {
  struct Grid {
    int tiles_m, tiles_n;
    int64_t batch;
  };
  for (const Grid& g :
       {Grid{1, 1, 1}, Grid{3, 5, 1}, Grid{8, 2, 1}, Grid{17, 17, 2}, Grid{9, 1, 3}, Grid{64, 16, 1}}) {
    std::vector<int> seen(static_cast<size_t>(g.batch * g.tiles_m * g.tiles_n), 0);
    bool in_range = true;
    for (int64_t t = 0; t < static_cast<int64_t>(seen.size()); ++t) {
      const L::TileCoord c = L::tile_coord(t, g.tiles_m, g.tiles_n);
      if (c.batch < 0 || c.batch >= g.batch || c.tm < 0 || c.tm >= g.tiles_m || c.tn < 0 ||
          c.tn >= g.tiles_n) {
        in_range = false;
        continue;
      }
      ++seen[static_cast<size_t>((c.batch * g.tiles_m + c.tm) * g.tiles_n + c.tn)];
    }
    INFO("tiles " << g.tiles_m << " x " << g.tiles_n << " batch " << g.batch);
    CHECK(in_range);
    int once = 0;
    for (int s : seen) once += s == 1;
    CHECK(once == static_cast<int>(seen.size()));
  }
  // Grouped: the first kGroup tiles are the first column of the first 8 tile rows.
  const L::TileCoord c = L::tile_coord(5, 20, 7);
  CHECK(c.tm == 5);
  CHECK(c.tn == 0);
  const L::TileCoord d = L::tile_coord(8, 20, 7);
  CHECK(d.tm == 0);
  CHECK(d.tn == 1);
}
