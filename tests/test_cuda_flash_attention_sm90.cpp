// The sm_90a flash-attention forward (kernels/cuda/flash_attention_sm90.cu). On every machine (no GPU
// needed): its address and fragment arithmetic (kernels/cuda/flash_attention_sm90_layout.h) — for every
// element of every k16 slice of Q, K and V at D 64 and 128, the byte TMA's 128-byte swizzle puts it at is the
// byte wgmma reads through the kernel's descriptor (the PTX ISA's canonical layouts, modelled by
// gemm_sm90_layout.h); the S accumulator fragment is the register A operand of P V element for element; the
// causal tile range against brute force; mutated descriptors and mappings must fail. With CUDA: the one-line
// argument errors (checked before any device call). On an sm_90a device (skipped elsewhere, with a message),
// last in the file because a fault would spoil later cases: the forward against the f32 CPU twin (D 64/128, T
// = 1, 7, 129, 1000, S != T both ways, GQA 1/4/8, causal and not, bf16/f16, outputs poisoned; bf16 < 2e-2,
// f16 < 1e-2, lse < 1e-4), and the dispatcher under POLDER_ATTENTION_SM90=1.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include "kernels/cuda/flash_attention_sm90_layout.h"

namespace F = polder::kernels::fa_sm90;
namespace L = polder::kernels::sm90_layout;

namespace {

using Mutation = std::function<void(L::DescFields&)>;

const uint32_t kBase = 0x400;  // a 1024-aligned dynamic shared-memory base

// Elements of a K-major tile (Q as A: per warpgroup; K as B: all rows) whose TMA byte and wgmma byte differ.
int64_t kmajor_mismatches(int D, int rows, int wg_rows, uint32_t tile, const Mutation& mutate,
                          std::string* first) {
  int64_t bad = 0;
  for (int row0 = 0; row0 < rows; row0 += wg_rows)
    for (int ks = 0; ks < D / 16; ++ks) {
      L::DescFields f = F::kmajor_desc(tile, rows, static_cast<uint32_t>(row0), ks);
      if (mutate) mutate(f);
      const uint64_t desc = L::encode_desc(f);
      for (int mn = 0; mn < wg_rows; ++mn)
        for (int k = 0; k < 16; ++k) {
          const uint32_t tma = tile + F::tile_offset(rows, static_cast<uint32_t>(row0 + mn),
                                                     static_cast<uint32_t>(ks * 16 + k));
          const uint32_t mma =
              L::wgmma_smem_address(desc, false, static_cast<uint32_t>(mn), static_cast<uint32_t>(k));
          if (tma != mma && bad++ == 0 && first) {
            std::ostringstream s;
            s << "D " << D << " rows " << row0 << ".. ks " << ks << " element (" << mn << ", " << k
              << "): TMA byte " << tma << ", wgmma byte " << mma;
            *first = s.str();
          }
        }
    }
  return bad;
}

// V (kBc keys x D) as the MN-major B operand: element (n = head dim, k = key in the slice).
int64_t v_mismatches(int D, uint32_t tile, const Mutation& mutate, std::string* first) {
  int64_t bad = 0;
  for (int ks = 0; ks < F::kBc / 16; ++ks) {
    L::DescFields f = F::v_desc(tile, ks);
    if (mutate) mutate(f);
    const uint64_t desc = L::encode_desc(f);
    for (int n = 0; n < D; ++n)
      for (int k = 0; k < 16; ++k) {
        const uint32_t tma =
            tile + F::tile_offset(F::kBc, static_cast<uint32_t>(ks * 16 + k), static_cast<uint32_t>(n));
        const uint32_t mma =
            L::wgmma_smem_address(desc, true, static_cast<uint32_t>(n), static_cast<uint32_t>(k));
        if (tma != mma && bad++ == 0 && first) {
          std::ostringstream s;
          s << "V D " << D << " ks " << ks << " element (n " << n << ", k " << k << "): TMA byte " << tma
            << ", wgmma byte " << mma;
          *first = s.str();
        }
      }
  }
  return bad;
}

template <int D>
struct Tiles {
  using S = F::Smem<D>;
  static uint32_t q() { return kBase + S::kQ; }
  static uint32_t k(int stage) {
    return kBase + S::kK + static_cast<uint32_t>(stage) * F::tile_bytes(F::kBc, D);
  }
  static uint32_t v(int stage) {
    return kBase + S::kV + static_cast<uint32_t>(stage) * F::tile_bytes(F::kBc, D);
  }
};

// Where A register r (half h) of slice kk finds its element, per thread: mismatches against the accumulator.
int64_t fragment_mismatches(const std::function<uint32_t(uint32_t, uint32_t, uint32_t)>& index) {
  int64_t bad = 0;
  for (uint32_t tid = 0; tid < 128; ++tid)
    for (uint32_t kk = 0; kk < F::kBc / 16; ++kk)
      for (uint32_t r = 0; r < 4; ++r)
        for (uint32_t h = 0; h < 2; ++h) {
          const F::RowCol a = F::a_coord(tid, r, h), c = F::acc_coord(tid, index(kk, r, h));
          bad += c.row != a.row || c.col != 16 * kk + a.col;
        }
  return bad;
}

}  // namespace

TEST_CASE("fa sm90 layout: TMA's swizzled Q, K, V boxes are what wgmma's descriptors read",
          "[fa_sm90_layout]") {
  std::string first;
  int64_t bad = kmajor_mismatches(64, F::kBr, F::kWgRows, Tiles<64>::q(), nullptr, &first);
  bad += kmajor_mismatches(64, F::kBc, F::kBc, Tiles<64>::k(1), nullptr, &first);
  bad += v_mismatches(64, Tiles<64>::v(1), nullptr, &first);
  bad += kmajor_mismatches(128, F::kBr, F::kWgRows, Tiles<128>::q(), nullptr, &first);
  bad += kmajor_mismatches(128, F::kBc, F::kBc, Tiles<128>::k(0), nullptr, &first);
  bad += kmajor_mismatches(128, F::kBc, F::kBc, Tiles<128>::k(1), nullptr, &first);
  bad += v_mismatches(128, Tiles<128>::v(0), nullptr, &first);
  bad += v_mismatches(128, Tiles<128>::v(1), nullptr, &first);
  INFO(bad << " mismatches; first: " << first);
  CHECK(bad == 0);
}

TEST_CASE("fa sm90 layout: mutated descriptors are caught", "[fa_sm90_layout]") {
  // The GEMM's MN-major LBO (8 KiB boxes of 64 K rows) is wrong for 128-key V boxes (16 KiB apart).
  CHECK(v_mismatches(
            128, Tiles<128>::v(0), [](L::DescFields& f) { f.lbo = L::kMnBoxBytes; }, nullptr) > 0);
  CHECK(v_mismatches(
            128, Tiles<128>::v(0), [](L::DescFields& f) { f.sbo = 2048; }, nullptr) > 0);
  CHECK(v_mismatches(
            64, Tiles<64>::v(0), [](L::DescFields& f) { f.start += 1024; }, nullptr) > 0);
  CHECK(v_mismatches(
            64, Tiles<64>::v(0), [](L::DescFields& f) { f.swizzle = L::kSwizzle64; }, nullptr) > 0);
  // K-major slices 4.. of D = 128 live in the second box: staying in the first (start 4 slices back) fails.
  CHECK(kmajor_mismatches(
            128, F::kBc, F::kBc, Tiles<128>::k(0),
            [](L::DescFields& f) {
              if (f.start - Tiles<128>::k(0) >= F::box_bytes(F::kBc)) f.start -= F::box_bytes(F::kBc);
            },
            nullptr) > 0);
  CHECK(kmajor_mismatches(
            64, F::kBr, F::kWgRows, Tiles<64>::q(), [](L::DescFields& f) { f.sbo = 512; }, nullptr) > 0);
  CHECK(kmajor_mismatches(
            64, F::kBr, F::kWgRows, Tiles<64>::q(), [](L::DescFields& f) { f.start += 16; }, nullptr) > 0);
  // The transpose bit: V read as K-major.
  int64_t bad = 0;
  const uint64_t desc = L::encode_desc(F::v_desc(Tiles<64>::v(0), 0));
  for (uint32_t n = 0; n < 64; ++n)
    for (uint32_t k = 0; k < 16; ++k)
      bad += L::wgmma_smem_address(desc, false, n, k) != Tiles<64>::v(0) + F::tile_offset(F::kBc, k, n);
  CHECK(bad > 0);
}

TEST_CASE("fa sm90 layout: tiles fill their buffers exactly once and fit", "[fa_sm90_layout]") {
  for (int D : {64, 128})
    for (int rows : {F::kBr, F::kBc}) {
      std::set<uint32_t> bytes;
      for (uint32_t r = 0; r < static_cast<uint32_t>(rows); ++r)
        for (uint32_t d = 0; d < static_cast<uint32_t>(D); ++d) bytes.insert(F::tile_offset(rows, r, d));
      INFO("D " << D << " rows " << rows);
      CHECK(bytes.size() == static_cast<size_t>(rows * D));
      CHECK(*bytes.rbegin() == F::tile_bytes(rows, D) - 2);
    }
  CHECK(F::Smem<64>::kBytes <= 232448u);  // cudaDevAttrMaxSharedMemoryPerBlockOptin on H100/H200
  CHECK(F::Smem<128>::kBytes <= 232448u);
  CHECK(F::Smem<128>::kBytes == 128u * 128 * 2 + 4u * 128 * 128 * 2 + 8 * 7 + 1024);
  CHECK(F::box_bytes(F::kBc) % L::kAtomBytes == 0);
}

TEST_CASE("fa sm90 layout: the S accumulator is P's register A operand", "[fa_sm90_layout]") {
  // Hand-checked points of the PTX ISA figures: thread 5 (warp 0, g 1, q 1), accumulator element 3 is row 9,
  // column 3; thread 37 (warp 1, g 1, q 1) element 6 is row 25, column 10; its A register 2 half 1 is row 17,
  // column 11.
  CHECK(F::acc_coord(5, 3).row == 9);
  CHECK(F::acc_coord(5, 3).col == 3);
  CHECK(F::acc_coord(37, 6).row == 25);
  CHECK(F::acc_coord(37, 6).col == 10);
  CHECK(F::a_coord(37, 2, 1).row == 17);
  CHECK(F::a_coord(37, 2, 1).col == 11);
  // Both fragments cover their tiles exactly once (64 x kBc accumulator, 64 x 16 A).
  std::set<std::pair<uint32_t, uint32_t>> acc, a;
  for (uint32_t tid = 0; tid < 128; ++tid) {
    for (uint32_t i = 0; i < F::kBc / 2; ++i)
      acc.insert({F::acc_coord(tid, i).row, F::acc_coord(tid, i).col});
    for (uint32_t r = 0; r < 4; ++r)
      for (uint32_t h = 0; h < 2; ++h) a.insert({F::a_coord(tid, r, h).row, F::a_coord(tid, r, h).col});
  }
  CHECK(acc.size() == 64u * F::kBc);
  CHECK(a.size() == 64u * 16);
  CHECK(fragment_mismatches(F::p_index) == 0);
  // Mutations: registers 1 and 2 swapped (rows g+8 and columns +8 confused), and the slice stride of 4 (one
  // 8-column block per slice) must fail.
  CHECK(fragment_mismatches([](uint32_t kk, uint32_t r, uint32_t h) {
          const uint32_t rr = r == 1 ? 2 : r == 2 ? 1 : r;
          return 8 * kk + 2 * rr + h;
        }) > 0);
  CHECK(fragment_mismatches([](uint32_t kk, uint32_t r, uint32_t h) { return 4 * kk + 2 * r + h; }) > 0);
}

TEST_CASE("fa sm90 layout: causal tile range and masking against brute force", "[fa_sm90_layout]") {
  int64_t bad = 0, checked = 0;
  for (int64_t T : {1, 7, 128, 129, 300, 1000})
    for (int64_t S : {1, 77, 128, 137, 300, 1000})
      for (bool causal : {true, false})
        for (int64_t q0 = 0; q0 < T; q0 += F::kBr) {
          // Keys any stored row of the block sees (rows past T are not stored).
          int64_t end = 0;
          for (int64_t t = q0; t < std::min(T, q0 + F::kBr); ++t) {
            int64_t e = 0;
            for (int64_t s = 0; s < S; ++s)
              if (!(causal && s > t + (S - T))) e = s + 1;
            end = std::max(end, e);
          }
          bad += F::key_tiles(T, S, causal, q0) != (end + F::kBc - 1) / F::kBc;
          // No unmasked tile may hide a key from a row of a warpgroup.
          for (int64_t row0 = q0; row0 < q0 + F::kBr; row0 += F::kWgRows)
            for (int tile = 0; tile < F::key_tiles(T, S, causal, q0); ++tile) {
              const int64_t k0 = int64_t(tile) * F::kBc;
              if (F::tile_needs_mask(T, S, causal, row0, k0)) continue;
              for (int64_t r = row0; r < row0 + F::kWgRows; ++r)
                for (int64_t c = k0; c < k0 + F::kBc; ++c) bad += F::masked(T, S, causal, r, c), ++checked;
            }
        }
  INFO(checked << " elements of unmasked tiles checked");
  CHECK(checked > 0);
  CHECK(bad == 0);
  CHECK(F::key_tiles(300, 77, true, 0) ==
        0);  // S < T: queries 0 .. 222 see no key, the first block skips all
  CHECK(F::key_tiles(300, 77, true, 128) == 1);  // its last query sees keys 0 .. 32
  CHECK(F::key_tiles(300, 300, true, 128) == 2);
}

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/attention_testing.h"
#include "tests/cuda_testing.h"
#include "tests/emulated.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/attention.h"

using namespace polder;
using kernels::AttentionShape;
using polder::testing::DevBuf;
using polder::testing::randn;
using polder::testing::to_f32;

namespace {

AttentionShape shape(int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, bool causal) {
  return testing::attention_shape(B, T, S, Hq, Hkv, D, causal);
}

template <typename T>
double tol() {
  return testing::attention_tol<T>();
}
constexpr double kTolLse = 1e-4;

#define CHECK_ERR POLDER_CHECK_NERR

bool sm90_present() {
  if (!testing::have_gpu()) {
    WARN("skipped: no CUDA device (cudaGetDeviceCount reports 0); [cuda] tests run on a GPU machine");
    return false;
  }
  if (!kernels::cuda::flash_attention_sm90_available()) {
    WARN(
        "skipped: the sm_90a flash-attention forward needs a compute capability 9.0 device running the "
        "sm_90a image");
    return false;
  }
  return true;
}

// The forward of the sm_90a kernel (or the dispatcher) against the f32 CPU twin on the same rounded inputs.
template <typename T>
void check_forward(const AttentionShape& s, uint64_t seed, bool dispatch = false) {
  INFO("B=" << s.B << " T=" << s.T << " S=" << s.S << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << s.D
            << " causal=" << s.causal);
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  const size_t nl = static_cast<size_t>(s.B * s.Hq * s.T);
  const auto q = randn<T>(nq, seed), k = randn<T>(nk, seed + 1), v = randn<T>(nk, seed + 2);
  const auto qf = to_f32(q), kf = to_f32(k), vf = to_f32(v);
  std::vector<float> o(nq), lse(nl);
  kernels::cpu::attention_forward<float>(s, qf.data(), kf.data(), vf.data(), o.data(), lse.data());
  DevBuf<T> gq(q), gk(k), gv(v), go(nq);  // go and glse start as NaN bytes
  DevBuf<float> glse(nl);
  if (dispatch)
    kernels::cuda::attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), nullptr);
  else
    kernels::cuda::flash_attention_sm90_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                   nullptr);
  CHECK_ERR("o", go.host(), o, tol<T>());
  CHECK_ERR("lse", glse.host(), lse, kTolLse);
}

// Error text of flash_attention_sm90_forward<T> on these arguments, "" when it does not throw
// invalid_argument.
template <typename T>
std::string error_of(const AttentionShape& s, const void* q = nullptr) {
  try {
    kernels::cuda::flash_attention_sm90_forward<T>(s, static_cast<const T*>(q), nullptr, nullptr, nullptr,
                                                   nullptr, nullptr);
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception&) {  // a device-side reason (no sm_90a device): not an argument error
  }
  return {};
}

}  // namespace

TEST_CASE("fa sm90: unsupported arguments throw one line naming the reason", "[cuda]") {
  struct Case {
    std::string what, expect;
    std::function<std::string()> run;
  };
  alignas(16) static bf16 buf[16];
  const Case cases[] = {
      {"f32", "bf16 or f16", [] { return error_of<float>(shape(1, 4, 4, 2, 1, 64, true)); }},
      {"D 96", "D=96", [] { return error_of<bf16>(shape(1, 4, 4, 2, 1, 96, true)); }},
      {"Hq 6 over Hkv 4", "Hq=6", [] { return error_of<f16>(shape(1, 4, 4, 6, 4, 128, true)); }},
      {"Hkv 0", "Hkv=0", [] { return error_of<bf16>(shape(1, 4, 4, 2, 0, 64, false)); }},
      {"B 70000", "B=70000", [] { return error_of<bf16>(shape(70000, 4, 4, 2, 1, 64, true)); }},
      {"T 2^31", "T=2147483648",
       [] { return error_of<bf16>(shape(1, int64_t(1) << 31, 4, 2, 1, 64, true)); }},
      {"misaligned q", "16-byte", [] { return error_of<bf16>(shape(1, 4, 4, 2, 1, 64, true), buf + 1); }},
  };
  for (const Case& c : cases) {
    const std::string msg = c.run();
    INFO(c.what << ": '" << msg << "'");
    CHECK(msg.find("flash_attention_sm90_forward: ") == 0);
    CHECK(msg.find(c.expect) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
  CHECK_FALSE(kernels::cuda::flash_attention_sm90_supported<bf16>(shape(1, 4, 4, 2, 1, 96, true), {}));
  CHECK_FALSE(kernels::cuda::flash_attention_sm90_supported<bf16>(shape(1, 4, 4, 2, 1, 64, true), {buf + 1}));
  CHECK(kernels::cuda::flash_attention_sm90_supported<bf16>(shape(1, 4, 4, 2, 1, 64, true), {buf}));
  CHECK(kernels::cuda::flash_attention_sm90_supported<f16>(shape(2, 1000, 77, 8, 1, 128, false), {buf}));
}

// ---- Kernel-running cases: last in the file (a trap or fault would spoil later cases). ----

TEMPLATE_TEST_CASE("fa sm90: the forward matches the CPU twin", "[cuda]", bf16, f16) {
  if (!sm90_present()) return;
  uint64_t seed = 7000;
  for (int64_t D : {64, 128})
    for (bool causal : {true, false}) {
      seed += 100;
      check_forward<TestType>(shape(1, 1, causal ? 1 : 5, 8, 1, D, causal), seed);  // one query, ratio 8
      check_forward<TestType>(shape(2, 7, causal ? 7 : 13, 4, 1, D, causal), seed + 10);  // ratio 4, S > T
      check_forward<TestType>(shape(1, 129, 129, 2, 2, D, causal), seed + 20);  // ratio 1, partial blocks
      check_forward<TestType>(shape(1, 129, 77, 4, 1, D, causal), seed + 30);   // S < T: queries without keys
      check_forward<TestType>(shape(1, 100, 137, 2, 1, D, causal), seed + 40);  // S > T: aligned to the end
      const int64_t long_t = testing::gpu_or_emulated<int64_t>(1000, 320);  // several tiles through the ring
      check_forward<TestType>(shape(1, long_t, long_t, std::is_same_v<TestType, bf16> ? 8 : 4, 1, D, causal),
                              seed + 50);  // many tiles through the 2-stage ring
      check_forward<TestType>(shape(2, 300, 300, 4, 4, D, causal),
                              seed + 60);  // batches: TMA's 4th coordinate
    }
}

TEST_CASE("fa sm90: the dispatcher offers it under POLDER_ATTENTION_SM90=1", "[cuda]") {
  if (!sm90_present()) return;
  // Read once per process by the dispatcher: this is the binary's first dispatcher call.
  setenv("POLDER_ATTENTION_SM90", "1", 1);
  kernels::cuda::set_attention_impl("polder");  // "polder" prefers the sm_90a forward under the variable
  check_forward<bf16>(shape(1, 200, 200, 4, 1, 128, true), 8100, true);
  kernels::cuda::set_attention_impl("auto");  // measured against the baseline; any result must be the twin's
  const AttentionShape s = shape(1, 300, 300, 8, 2, 64, false);
  check_forward<f16>(s, 8200, true);
  const std::string choice = kernels::cuda::attention_choice(s, DType::f16, false);
  INFO("auto chose " << choice);
  CHECK(!choice.empty());
}

#endif
