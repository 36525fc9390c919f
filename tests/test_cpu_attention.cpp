// The CPU attention kernels (kernels/cpu/attention.cpp): the blocked f32/bf16/f16 kernels (query x key tiles,
// vectorized exp) against the f64 row kernels (one query or key row at a time, libm exp), an independent
// implementation, on shapes that cross tile boundaries (tiles of 32 queries x 64 keys): partial tiles,
// causal with more or fewer keys than queries (queries that see no key), grouped-query heads, batches.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "attention_testing.h"
#include "host_random.h"
#include "kernels/attention.h"
#include "kernels/cpu/isa.h"
#include "kernels/half.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

using namespace polder;
using polder::testing::attention_shape;

namespace {

template <typename T>
std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<double>(static_cast<float>(x[i]));
  return y;
}

// Fixed random inputs for shape s, and the CPU kernels' forward and backward outputs on them.
template <typename T>
struct Run {
  std::vector<T> q, k, v, g, o, dq, dk, dv;
  std::vector<float> lse;
};
template <typename T>
Run<T> run_kernels(const kernels::AttentionShape& s) {
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  Run<T> r{testing::randn<T>(nq, 1),
           testing::randn<T>(nk, 2),
           testing::randn<T>(nk, 3),
           testing::randn<T>(nq, 4),
           std::vector<T>(nq),
           std::vector<T>(nq),
           std::vector<T>(nk),
           std::vector<T>(nk),
           std::vector<float>(static_cast<size_t>(s.B * s.Hq * s.T))};
  kernels::cpu::attention_forward<T>(s, r.q.data(), r.k.data(), r.v.data(), r.o.data(), r.lse.data());
  kernels::cpu::attention_backward<T>(s, r.q.data(), r.k.data(), r.v.data(), r.o.data(), r.lse.data(),
                                      r.g.data(), r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

template <typename T>
void check_against_f64(const kernels::AttentionShape& s) {
  const Run<T> r = run_kernels<T>(s);
  const auto& [q, k, v, g, o, dq, dk, dv, lse] = r;
  const size_t nq = q.size(), nk = k.size();
  // The oracle: the same inputs (already rounded to T) in f64 through the row kernels.
  const auto qd = widen(q), kd = widen(k), vd = widen(v), gd = widen(g);
  std::vector<double> od(nq), dqd(nq), dkd(nk), dvd(nk), lsed(lse.size());
  kernels::cpu::attention_forward<double>(s, qd.data(), kd.data(), vd.data(), od.data(), lsed.data());
  kernels::cpu::attention_backward<double>(s, qd.data(), kd.data(), vd.data(), od.data(), lsed.data(),
                                           gd.data(), dqd.data(), dkd.data(), dvd.data());
  const double tol = polder::testing::attention_tol<T>();
  INFO("B " << s.B << " T " << s.T << " S " << s.S << " Hq " << s.Hq << " Hkv " << s.Hkv << " D " << s.D
            << " causal " << s.causal);
  POLDER_CHECK_NERR("o", o, od, tol);
  POLDER_CHECK_NERR("lse", lse, lsed, tol);
  POLDER_CHECK_NERR("dq", dq, dqd, tol);
  POLDER_CHECK_NERR("dk", dk, dkd, tol);
  POLDER_CHECK_NERR("dv", dv, dvd, tol);
}

const std::vector<kernels::AttentionShape>& shapes() {
  static const std::vector<kernels::AttentionShape> all = {
      attention_shape(2, 70, 70, 4, 2, 40, true),    // partial query and key tiles, GQA 2
      attention_shape(1, 100, 150, 6, 3, 64, true),  // more keys than queries (queries aligned to the end)
      attention_shape(1, 150, 100, 2, 1, 32, true),  // fewer keys: the first 50 queries see none
      attention_shape(1, 33, 129, 4, 4, 24, false),  // not causal, keys over three tiles
      attention_shape(3, 128, 128, 8, 4, 32, true),  // the tiny model's shape (whole tiles)
      // From 512 queries the kernels pack every tile once per call (kPrepackMinT): batches, partial tiles,
      // GQA, more keys than queries.
      attention_shape(2, 530, 530, 2, 1, 24, true),
      attention_shape(1, 515, 700, 2, 2, 16, true),
  };
  return all;
}

}  // namespace

TEST_CASE("CPU attention, blocked f32 kernels vs the f64 row kernels", "[attention][cpu]") {
  for (const auto& s : shapes()) check_against_f64<float>(s);
}

TEST_CASE("CPU attention, blocked bf16 and f16 kernels vs f64 on the same rounded inputs",
          "[attention][cpu]") {
  for (const auto& s : shapes()) {
    check_against_f64<bf16>(s);
    check_against_f64<f16>(s);
  }
}

// A masked-out key must not matter: changing a key the causal mask hides from every query leaves all outputs
// and the other gradients bit-identical, and its own gradients zero.
TEST_CASE("CPU attention: a key no query sees has no effect and zero gradient", "[attention][cpu]") {
  const auto s = attention_shape(1, 40, 40, 2, 1, 16, true);
  const size_t nq = static_cast<size_t>(s.T * s.Hq * s.D), nk = static_cast<size_t>(s.S * s.Hkv * s.D);
  auto q = testing::randn<float>(nq, 5), k = testing::randn<float>(nk, 6), v = testing::randn<float>(nk, 7),
       g = testing::randn<float>(nq, 8);
  // Queries 0..9 only: key 39 is visible to query 39 alone, so zero that query's gradient instead and check
  // key 39's gradients vanish.
  for (int64_t h = 0; h < s.Hq; ++h)
    for (int64_t d = 0; d < s.D; ++d) g[static_cast<size_t>((39 * s.Hq + h) * s.D + d)] = 0.0f;
  std::vector<float> o(nq), dq(nq), dk(nk), dv(nk), lse(static_cast<size_t>(s.Hq * s.T));
  kernels::cpu::attention_forward<float>(s, q.data(), k.data(), v.data(), o.data(), lse.data());
  kernels::cpu::attention_backward<float>(s, q.data(), k.data(), v.data(), o.data(), lse.data(), g.data(),
                                          dq.data(), dk.data(), dv.data());
  for (int64_t d = 0; d < s.D; ++d) {
    CHECK(dk[static_cast<size_t>(39 * s.D + d)] == 0.0f);
    CHECK(dv[static_cast<size_t>(39 * s.D + d)] == 0.0f);
  }
  std::vector<float> o2(nq), lse2(lse.size());
  k[static_cast<size_t>(39 * s.D)] += 100.0f;  // only query 39 sees it
  kernels::cpu::attention_forward<float>(s, q.data(), k.data(), v.data(), o2.data(), lse2.data());
  for (int64_t t = 0; t < 39; ++t)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t d = 0; d < s.D; ++d) {
        const size_t i = static_cast<size_t>((t * s.Hq + h) * s.D + d);
        CHECK(o2[i] == o[i]);
      }
}

namespace {
// FNV-1a over the bits of every output of the kernels on fixed inputs.
template <typename T>
uint64_t output_hash() {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const auto& v) {
    for (const auto& e : v) {
      uint32_t u = 0;
      std::memcpy(&u, &e, sizeof e);
      h = (h ^ u) * 1099511628211ull;
    }
  };
  for (const auto& s : shapes()) {
    const Run<T> r = run_kernels<T>(s);
    mix(r.o), mix(r.lse), mix(r.dq), mix(r.dk), mix(r.dv);
  }
  // The cross-entropy kernels (vectorized exp, 16-lane row sums) on a 1000-wide vocabulary.
  const int64_t rows = 64, cols = 1000;
  const auto logits = testing::randn<T>(static_cast<size_t>(rows * cols), 9);
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[static_cast<size_t>(r)] = static_cast<int32_t>((r * 37) % cols);
  std::vector<float> loss(static_cast<size_t>(rows)), lse(static_cast<size_t>(rows)),
      dloss(static_cast<size_t>(rows), 1.0f / static_cast<float>(rows));
  std::vector<T> dlogits(logits.size());
  kernels::cpu::cross_entropy_forward<T, int32_t>(logits.data(), targets.data(), loss.data(), lse.data(),
                                                  rows, cols, -100);
  kernels::cpu::cross_entropy_backward<T, int32_t>(logits.data(), targets.data(), lse.data(), dloss.data(),
                                                   dlogits.data(), rows, cols, -100);
  mix(loss), mix(lse), mix(dlogits);
  // The fused forward-backward of linear_cross_entropy (in place), and RMSNorm (16-lane row sums).
  std::vector<T> fused = logits;
  kernels::cpu::cross_entropy_forward_backward<T, int32_t>(fused.data(), targets.data(), loss.data(), rows,
                                                           cols, -100, 1.0f / static_cast<float>(rows));
  mix(loss), mix(fused);
  const auto w = testing::randn<T>(static_cast<size_t>(cols), 10);
  std::vector<T> y(logits.size()), dx(logits.size());
  std::vector<float> rstd(static_cast<size_t>(rows)), dw(static_cast<size_t>(cols));
  kernels::cpu::rms_norm_forward<T>(logits.data(), w.data(), y.data(), rstd.data(), rows, cols, 1e-5f);
  kernels::cpu::rms_norm_backward<T>(logits.data(), w.data(), rstd.data(), dlogits.data(), dx.data(),
                                     dw.data(), rows, cols);
  mix(y), mix(rstd), mix(dx), mix(dw);
  return h;
}
}  // namespace

// Run by the test below in a child process per ISA level.
TEST_CASE("CPU attention output hash", "[.isa-hash]") {
  std::printf("ATTENTION-HASH %016llx %016llx\n", static_cast<unsigned long long>(output_hash<float>()),
              static_cast<unsigned long long>(output_hash<bf16>()));
}

// The tiled attention, the cross-entropy and the RMSNorm kernels sum every element in the same order whatever
// the vector width, so their AVX2 and AVX-512 builds give the same bits (checked where the CPU runs both; the
// baseline has no FMA and differs).
TEST_CASE("CPU attention, cross-entropy and RMSNorm: AVX2 and AVX-512 give identical bits",
          "[attention][cpu]") {
  if (kernels::cpu::cpu_isa_supported() != kernels::cpu::CpuIsa::avx512) {
    WARN("skipped: needs a CPU with AVX-512");
    return;
  }
  char self[4096] = {};
  REQUIRE(readlink("/proc/self/exe", self, sizeof self - 1) > 0);  // this test binary (popen's shell is not)
  auto run = [&](const char* level) {
    const std::string cmd = std::string("POLDER_CPU_ISA=") + level + " '" + self +
                            "' '[.isa-hash]' 2>&1 | grep '^ATTENTION-HASH'";
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char line[256] = {};
    const bool got = std::fgets(line, sizeof line, p) != nullptr;
    pclose(p);
    REQUIRE(got);
    return std::string(line);
  };
  const std::string avx2 = run("avx2"), avx512 = run("avx512");
  INFO("avx2: " << avx2 << "avx512: " << avx512);
  CHECK(avx2 == avx512);
}
