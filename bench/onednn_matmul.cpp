// oneDNN matmul rates on the CPU for the GEMM shapes of polder's CPU benchmarks (bench/train_cpu.sh), f32 and
// bf16: plain row-major operands with C in f32, the same with B pre-packed (format_tag::any, reordered once),
// and plain with C in the operands' type. The measurement behind the choice of GEMM library and version
// (docs/perf/NOTES.md, "The GEMM library, by measurement").
// Standalone (not built by CMake) so that it compiles against any oneDNN 2.x or 3.x:
//   g++ -O2 -std=c++17 bench/onednn_matmul.cpp -o /tmp/onednn_matmul -ldnnl -fopenmp       # Debian's oneDNN
//   g++ -O2 -std=c++17 bench/onednn_matmul.cpp -o /tmp/onednn_matmul32 -I<wheel>/include -L<wheel>/lib -ldnnl
//   \
//       -fopenmp -Wl,-rpath,<wheel>/lib          # e.g. PyPI onednn-cpu-gomp + onednn-devel-cpu-gomp unpacked
//   OMP_NUM_THREADS=2 /tmp/onednn_matmul
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

using namespace dnnl;
using dt = memory::data_type;

namespace {

double median_seconds(const std::function<void()>& f) {
  std::vector<double> t;
  for (int r = 0; r < 12; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin() + 2, t.end());  // the first two are warm-up
  return t[7];
}

matmul::primitive_desc make_pd(const engine& eng, const memory::desc& a, const memory::desc& b,
                               const memory::desc& c) {
#if DNNL_VERSION_MAJOR >= 3
  return matmul::primitive_desc(eng, a, b, c);
#else
  return matmul::primitive_desc(matmul::desc(a, b, c), eng);
#endif
}

}  // namespace

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  struct Shape {
    const char* name;
    int64_t M, N, K;
    bool trans_a, trans_b;
  };
  const Shape shapes[] = {
      {"2048^3", 2048, 2048, 2048, false, false},
      {"tiny head fwd 512x32000x256 (B^T)", 512, 32000, 256, false, true},
      {"tiny head dX 512x256x32000", 512, 256, 32000, false, false},
      {"tiny head dW 32000x256x512 (A^T)", 32000, 256, 512, true, false},
      {"tiny MLP fwd 512x688x256 (B^T)", 512, 688, 256, false, true},
      {"tiny MLP dX 512x256x688", 512, 256, 688, false, false},
      {"tiny1 head fwd 2048x32000x256 (B^T)", 2048, 32000, 256, false, true},
      {"tiny1 head dX 2048x256x32000", 2048, 256, 32000, false, false},
      {"tiny1 head dW 32000x256x2048 (A^T)", 32000, 256, 2048, true, false},
      {"125m head fwd 256x32000x768 (B^T)", 256, 32000, 768, false, true},
      {"125m MLP fwd 256x2048x768 (B^T)", 256, 2048, 768, false, true},
      {"125m, 4 x 2048 tokens: MLP fwd (B^T)", 8192, 2048, 768, false, true},
      {"125m, 4 x 2048 tokens: MLP dX", 8192, 768, 2048, false, false},
      {"125m, 4 x 2048 tokens: head fwd (B^T)", 8192, 32000, 768, false, true},
  };
  std::printf("oneDNN %d.%d.%d, GFLOP/s (median of 10)\n", DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR,
              DNNL_VERSION_PATCH);
  std::printf("%-5s %-36s %8s %10s %8s %s\n", "dtype", "shape (M x N x K)", "plain", "prepacked", "C in T",
              "pack once");
  for (const dt t : {dt::f32, dt::bf16})
    for (const Shape& x : shapes) {
      const memory::desc a({x.M, x.K}, t, x.trans_a ? memory::dims{1, x.M} : memory::dims{x.K, 1});
      const memory::desc b({x.K, x.N}, t, x.trans_b ? memory::dims{1, x.K} : memory::dims{x.N, 1});
      const memory::desc c({x.M, x.N}, dt::f32, memory::dims{x.N, 1});
      const memory::desc b_any({x.K, x.N}, t, memory::format_tag::any);
      const auto pd = make_pd(eng, a, b, c), pd_packed = make_pd(eng, a, b_any, c);
      matmul mm(pd), mm_packed(pd_packed);
      memory A(a, eng), B(b, eng), C(c, eng), BP(pd_packed.weights_desc(), eng);
      std::fill_n(static_cast<char*>(A.get_data_handle()), a.get_size(), 0x3c);
      std::fill_n(static_cast<char*>(B.get_data_handle()), b.get_size(), 0x3c);
      reorder(B, BP).execute(s, B, BP);
      s.wait();
      const double plain = median_seconds([&] {
        mm.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
        s.wait();
      });
      const double packed = median_seconds([&] {
        mm_packed.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, BP}, {DNNL_ARG_DST, C}});
        s.wait();
      });
      const double pack = median_seconds([&] {
        reorder(B, BP).execute(s, B, BP);
        s.wait();
      });
      // The same product writing C in the operands' type (bf16 logits in polder's bf16 policy).
      const memory::desc c_same({x.M, x.N}, t, memory::dims{x.N, 1});
      const auto pd_same = make_pd(eng, a, b, c_same);
      matmul mm_same(pd_same);
      memory CS(c_same, eng);
      const double same = median_seconds([&] {
        mm_same.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, CS}});
        s.wait();
      });
      const double gflop = 2.0 * static_cast<double>(x.M * x.N * x.K) / 1e9;
      std::printf("%-5s %-36s %8.1f %10.1f %8.1f %.2f ms (%.0f%% of a plain call)\n",
                  t == dt::f32 ? "f32" : "bf16", x.name, gflop / plain, gflop / packed, gflop / same,
                  pack * 1e3, 100 * pack / plain);
    }
}
