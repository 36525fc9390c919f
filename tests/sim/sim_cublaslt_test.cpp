// Tests of the emulated cuBLASLt (tests/sim/sim_cublaslt.cpp): cublasLtMatmul against a double-precision
// triple loop on random data (every transpose pair, f32 / bf16 / f16 / f64, bf16 and f16 into f32, alpha and
// beta, beta 0 over a NaN C, ld > rows, strided batches, in place), bit for bit against the float k-order sum
// the emulator promises where the compiler cannot contract into FMAs, and the statuses and "sim: ..." lines
// of the arguments cuBLASLt refuses. Descriptors are built as kernels/cuda/gemm.cu builds them.
// POLDER_SIM_CUBLASLT_STUB: a local build without the runtime (sim_cudart.cpp); device memory is host memory
// and sim::enqueue runs the operation at once.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef POLDER_SIM_CUBLASLT_STUB
cudaError_t sim::enqueue(cudaStream_t, std::string, std::function<void()> op) {
  op();
  return cudaSuccess;
}
bool sim::is_device_pointer(const void*) {
  return true;
}
void sim::device_fault(cudaError_t, const std::string& what, const std::string& message) {
  std::fprintf(stderr, "sim: %s: %s\n", what.c_str(), message.c_str());
  std::abort();
}
const char* cudaGetErrorString(cudaError_t) {
  return "stub";
}
cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  std::memset(*p, 0xff, n);
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;
}
#endif

namespace {

#define LT_OK(call) REQUIRE((call) == CUBLAS_STATUS_SUCCESS)
#define CUDA_OK(call) REQUIRE((call) == cudaSuccess)

enum class Ty { f32, bf16, f16, f64 };

const char* ty_name(Ty t) {
  return t == Ty::f32 ? "f32" : t == Ty::bf16 ? "bf16" : t == Ty::f16 ? "f16" : "f64";
}
cudaDataType_t cuda_type(Ty t) {
  return t == Ty::f32 ? CUDA_R_32F : t == Ty::bf16 ? CUDA_R_16BF : t == Ty::f16 ? CUDA_R_16F : CUDA_R_64F;
}
size_t ty_size(Ty t) {
  return t == Ty::f64 ? 8 : t == Ty::f32 ? 4 : 2;
}
// Host values are kept as doubles holding exactly what the device type holds.
double round_to(Ty t, double v) {
  switch (t) {
    case Ty::bf16:
      return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v)));
    case Ty::f16:
      return __half2float(__float2half_rn(static_cast<float>(v)));
    case Ty::f32:
      return static_cast<float>(v);
    default:
      return v;
  }
}
void store(Ty t, void* base, size_t i, double v) {
  char* p = static_cast<char*>(base) + i * ty_size(t);
  if (t == Ty::bf16) {
    const __nv_bfloat16 h = __float2bfloat16_rn(static_cast<float>(v));
    std::memcpy(p, &h, 2);
  } else if (t == Ty::f16) {
    const __half h = __float2half_rn(static_cast<float>(v));
    std::memcpy(p, &h, 2);
  } else if (t == Ty::f32) {
    const float f = static_cast<float>(v);
    std::memcpy(p, &f, 4);
  } else {
    std::memcpy(p, &v, 8);
  }
}
double load(Ty t, const void* base, size_t i) {
  const char* p = static_cast<const char*>(base) + i * ty_size(t);
  if (t == Ty::bf16) {
    __nv_bfloat16 h;
    std::memcpy(&h, p, 2);
    return __bfloat162float(h);
  }
  if (t == Ty::f16) {
    __half h;
    std::memcpy(&h, p, 2);
    return __half2float(h);
  }
  if (t == Ty::f32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  double d;
  std::memcpy(&d, p, 8);
  return d;
}

// A host image of a device matrix (column-major, `batch` of them `stride` elements apart) and its copy.
struct Matrix {
  Ty ty;
  int64_t rows, cols, ld, batch, stride;
  std::vector<char> host;
  void* dev = nullptr;

  Matrix(Ty t, int64_t r, int64_t c, int64_t ld_, int64_t b, int64_t s)
      : ty(t), rows(r), cols(c), ld(ld_), batch(b), stride(s) {
    host.resize(bytes());
    CUDA_OK(cudaMalloc(&dev, bytes()));
  }
  ~Matrix() { cudaFree(dev); }
  Matrix(const Matrix&) = delete;
  size_t elems() const { return static_cast<size_t>((batch - 1) * stride + ld * cols); }
  size_t bytes() const { return elems() * ty_size(ty); }
  size_t at(int64_t b, int64_t i, int64_t j) const { return static_cast<size_t>(b * stride + j * ld + i); }
  double get(int64_t b, int64_t i, int64_t j) const { return load(ty, host.data(), at(b, i, j)); }
  // Everything (padding included) random in [-1, 1], or `fill` everywhere.
  void randomize(std::mt19937& rng) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (size_t i = 0; i < elems(); ++i) store(ty, host.data(), i, u(rng));
  }
  void fill(double v) {
    for (size_t i = 0; i < elems(); ++i) store(ty, host.data(), i, v);
  }
  void upload() { CUDA_OK(cudaMemcpy(dev, host.data(), bytes(), cudaMemcpyHostToDevice)); }
  std::vector<char> download() const {
    std::vector<char> out(bytes());
    REQUIRE(cudaMemcpy(out.data(), dev, bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
    return out;
  }
};

struct Case {
  Ty ab = Ty::f32, c = Ty::f32;
  bool ta = false, tb = false;
  int64_t m = 1, n = 1, k = 1, batch = 1, pad = 0;  // pad: ld - rows of every matrix
  double alpha = 1, beta = 0;
  bool in_place = true;  // C == D, as kernels/cuda/gemm.cu calls it
};

std::string describe(const Case& c) {
  return std::string(ty_name(c.ab)) + "->" + ty_name(c.c) + (c.ta ? " T" : " N") + (c.tb ? "T" : "N") +
         " m " + std::to_string(c.m) + " n " + std::to_string(c.n) + " k " + std::to_string(c.k) + " batch " +
         std::to_string(c.batch) + " pad " + std::to_string(c.pad) + " alpha " + std::to_string(c.alpha) +
         " beta " + std::to_string(c.beta) + (c.in_place ? " in place" : "");
}

struct Descs {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t l[4] = {};
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descs() {
    for (auto x : l) cublasLtMatrixLayoutDestroy(x);
    cublasLtMatmulDescDestroy(desc);
    cublasLtMatmulPreferenceDestroy(pref);
  }
};

cublasLtMatrixLayout_t layout(const Matrix& x) {
  cublasLtMatrixLayout_t l = nullptr;
  REQUIRE(cublasLtMatrixLayoutCreate(&l, cuda_type(x.ty), static_cast<uint64_t>(x.rows),
                                     static_cast<uint64_t>(x.cols), x.ld) == CUBLAS_STATUS_SUCCESS);
  if (x.batch > 1) {
    const int32_t count = static_cast<int32_t>(x.batch);
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &x.stride,
                                             sizeof(x.stride)) == CUBLAS_STATUS_SUCCESS);
  }
  return l;
}

cublasLtHandle_t handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    REQUIRE(cublasLtCreate(&x) == CUBLAS_STATUS_SUCCESS);
    return x;
  }();
  return h;
}

// Runs one case through heuristic and matmul and checks every element of D (padding untouched).
void run_case(const Case& cs, std::mt19937& rng) {
  INFO(describe(cs));
  const int64_t ar = cs.ta ? cs.k : cs.m, ac = cs.ta ? cs.m : cs.k;
  const int64_t br = cs.tb ? cs.n : cs.k, bc = cs.tb ? cs.k : cs.n;
  const int64_t stride_extra = 3;  // batches not back to back
  Matrix A(cs.ab, ar, ac, ar + cs.pad, cs.batch, (ar + cs.pad) * ac + stride_extra);
  Matrix B(cs.ab, br, bc, br + cs.pad, cs.batch, (br + cs.pad) * bc + stride_extra);
  Matrix D(cs.c, cs.m, cs.n, cs.m + cs.pad, cs.batch, (cs.m + cs.pad) * cs.n + stride_extra);
  Matrix C(cs.c, cs.m, cs.n, cs.m + cs.pad, cs.batch, (cs.m + cs.pad) * cs.n + stride_extra);
  A.randomize(rng);
  B.randomize(rng);
  A.upload();
  B.upload();
  // C's values (NaN when beta is 0: it must not be read); D starts as C in place, else as sentinels.
  if (cs.beta == 0)
    C.fill(std::numeric_limits<double>::quiet_NaN());
  else
    C.randomize(rng);
  C.upload();
  Matrix& Dst = cs.in_place ? C : D;
  const std::vector<char> before = Dst.host;
  if (!cs.in_place) {
    D.fill(7.0);
    D.upload();
  }
  const std::vector<char> d_before = cs.in_place ? C.host : D.host;

  const bool f64 = cs.ab == Ty::f64;
  Descs d;
  LT_OK(cublasLtMatmulDescCreate(&d.desc, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                 f64 ? CUDA_R_64F : CUDA_R_32F));
  const cublasOperation_t op_a = cs.ta ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = cs.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  LT_OK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LT_OK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  d.l[0] = layout(A);
  d.l[1] = layout(B);
  d.l[2] = layout(C);
  d.l[3] = layout(Dst);
  LT_OK(cublasLtMatmulPreferenceCreate(&d.pref));
  const uint64_t ws = 1 << 20;
  LT_OK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof(ws)));
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  LT_OK(cublasLtMatmulAlgoGetHeuristic(handle(), d.desc, d.l[0], d.l[1], d.l[2], d.l[3], d.pref, 1, &r,
                                       &found));
  REQUIRE(found == 1);
  REQUIRE(r.state == CUBLAS_STATUS_SUCCESS);
  REQUIRE(r.workspaceSize <= ws);
  const float alpha32 = static_cast<float>(cs.alpha), beta32 = static_cast<float>(cs.beta);
  const void* alpha = f64 ? static_cast<const void*>(&cs.alpha) : &alpha32;
  const void* beta = f64 ? static_cast<const void*>(&cs.beta) : &beta32;
  void* workspace = nullptr;
  CUDA_OK(cudaMalloc(&workspace, ws));
  LT_OK(cublasLtMatmul(handle(), d.desc, alpha, A.dev, d.l[0], B.dev, d.l[1], beta, C.dev, d.l[2], Dst.dev,
                       d.l[3], &r.algo, workspace, ws, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  cudaFree(workspace);
  const std::vector<char> out = Dst.download();

  // The oracle: double sums; the bound covers float accumulation (k terms) and the rounding of D.
  const double acc_eps = f64 ? 0x1p-53 : 0x1p-24;
  const double out_eps = cs.c == Ty::bf16  ? 0x1p-8
                         : cs.c == Ty::f16 ? 0x1p-11
                         : cs.c == Ty::f32 ? 0x1p-24
                                           : 0x1p-53;
  int64_t bad = 0, exact_bad = 0;
  double worst = 0;
  for (int64_t b = 0; b < cs.batch; ++b)
    for (int64_t j = 0; j < cs.n; ++j)
      for (int64_t i = 0; i < cs.m; ++i) {
        double sum = 0, mag = 0;
        float fsum = 0;
        for (int64_t p = 0; p < cs.k; ++p) {
          const double a = cs.ta ? A.get(b, p, i) : A.get(b, i, p);
          const double x = cs.tb ? B.get(b, j, p) : B.get(b, p, j);
          sum += a * x;
          mag += std::fabs(a * x);
          fsum += static_cast<float>(a) * static_cast<float>(x);
        }
        const double c = cs.beta == 0 ? 0.0 : C.get(b, i, j);
        const double ref = cs.alpha * sum + cs.beta * c;
        const double got = load(cs.c, out.data(), Dst.at(b, i, j));
        const double tol = 2 * (cs.k * acc_eps * (std::fabs(cs.alpha) * mag + std::fabs(cs.beta * c)) +
                                out_eps * std::fabs(ref)) +
                           1e-300;
        const double err = std::fabs(got - ref);
        if (!(err <= tol)) ++bad;
        worst = std::max(worst, err / tol);
#if !defined(__FMA__) && !defined(__aarch64__)
        if (!f64) {  // the emulator's promise: float products summed in k order from 0, then alpha, beta
          const float fd = cs.beta == 0 ? alpha32 * fsum : alpha32 * fsum + beta32 * static_cast<float>(c);
          if (round_to(cs.c, fd) != got) ++exact_bad;
        }
#endif
      }
  INFO("worst error / tolerance " << worst);
  CHECK(bad == 0);
  CHECK(exact_bad == 0);
  // Padding between rows and ld, and between batches, is untouched.
  int64_t touched = 0;
  for (size_t e = 0; e < Dst.elems(); ++e) {
    const int64_t b = static_cast<int64_t>(e) / Dst.stride, rem = static_cast<int64_t>(e) % Dst.stride;
    const bool inside = b < cs.batch && rem / Dst.ld < cs.n && rem % Dst.ld < cs.m;
    if (!inside &&
        std::memcmp(out.data() + e * ty_size(cs.c), d_before.data() + e * ty_size(cs.c), ty_size(cs.c)) != 0)
      ++touched;
  }
  CHECK(touched == 0);
  (void)before;
}

// Captures what the code under test writes to stderr.
struct StderrCapture {
  int saved = -1;
  FILE* file = nullptr;
  StderrCapture() {
    std::fflush(stderr);
    file = std::tmpfile();
    saved = dup(2);
    dup2(fileno(file), 2);
  }
  std::string text() {
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    saved = -1;
    std::string s;
    std::rewind(file);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file)) > 0) s.append(buf, n);
    std::fclose(file);
    return s;
  }
  ~StderrCapture() {
    if (saved >= 0) text();
  }
};

}  // namespace

TEST_CASE("cublasLtMatmul matches a double oracle for every transpose pair and dtype", "[sim][cublaslt]") {
  std::mt19937 rng(21);
  const std::pair<Ty, Ty> types[] = {{Ty::f32, Ty::f32}, {Ty::bf16, Ty::bf16}, {Ty::bf16, Ty::f32},
                                     {Ty::f16, Ty::f16}, {Ty::f16, Ty::f32},   {Ty::f64, Ty::f64}};
  for (auto [ab, c] : types)
    for (int t = 0; t < 4; ++t) {
      Case cs;
      cs.ab = ab, cs.c = c, cs.ta = t & 1, cs.tb = t & 2;
      cs.m = 37, cs.n = 29, cs.k = 53;
      cs.alpha = 1.0, cs.beta = 0.0;
      run_case(cs, rng);
      cs.alpha = -0.75, cs.beta = 0.5, cs.pad = 5, cs.batch = 3;
      run_case(cs, rng);
      cs.in_place = false, cs.beta = 0.0, cs.alpha = 2.0;  // separate C (NaN, unread) and D
      run_case(cs, rng);
      cs.beta = 1.25;
      run_case(cs, rng);
    }
}

TEST_CASE("cublasLtMatmul crosses its cache blocks (m, n, k beyond one block, odd edges)",
          "[sim][cublaslt]") {
  std::mt19937 rng(7);
  for (auto [m, n, k] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {130, 131, 517}, {67, 260, 300}, {200, 5, 1000}})
    for (int t = 0; t < 4; ++t) {
      Case cs;
      cs.ab = Ty::bf16, cs.c = Ty::f32, cs.ta = t & 1, cs.tb = t & 2;
      cs.m = m, cs.n = n, cs.k = k, cs.pad = 3, cs.beta = 1.0, cs.alpha = 0.5;
      run_case(cs, rng);
    }
}

TEST_CASE("cublasLtMatmul of a 512 x 2048 x 2048 bf16 GEMM runs in CI time", "[sim][cublaslt]") {
  const int64_t m = 2048, n = 512, k = 2048;
  Matrix A(Ty::bf16, m, k, m, 1, 0), B(Ty::bf16, k, n, k, 1, 0), D(Ty::bf16, m, n, m, 1, 0);
  std::mt19937 rng(3);
  A.randomize(rng);
  B.randomize(rng);
  A.upload();
  B.upload();
  Descs d;
  LT_OK(cublasLtMatmulDescCreate(&d.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  d.l[0] = layout(A);
  d.l[1] = layout(B);
  d.l[2] = layout(D);
  const float alpha = 1, beta = 0;
  const auto t0 = std::chrono::steady_clock::now();
  LT_OK(cublasLtMatmul(handle(), d.desc, &alpha, A.dev, d.l[0], B.dev, d.l[1], &beta, D.dev, d.l[2], D.dev,
                       d.l[2], nullptr, nullptr, 0, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("sim cublasLtMatmul %lld x %lld x %lld bf16: %.3f s (%.2f GFLOP/s)\n",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), s,
              2.0 * m * n * k / s * 1e-9);
  // One spot check of the result (the oracle tests above cover the numerics).
  const std::vector<char> out = D.download();
  double ref = 0;
  for (int64_t p = 0; p < k; ++p) ref += A.get(0, 5, p) * B.get(0, p, 7);
  CHECK(std::fabs(load(Ty::bf16, out.data(), D.at(0, 5, 7)) - ref) <= 0x1p-7 * std::fabs(ref) + 1e-3);
}

namespace {

// A valid f32 problem (m 8, n 6, k 4) whose pieces the error tests break one at a time.
struct Bad {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  void* buf = nullptr;
  float alpha = 1, beta = 0;
  Bad(cudaDataType_t ab = CUDA_R_32F, cudaDataType_t ct = CUDA_R_32F) {
    REQUIRE(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&a, ab, 8, 4, 8) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&b, ab, 4, 6, 4) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&c, ct, 8, 6, 8) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cudaMalloc(&buf, 4096) == cudaSuccess);
  }
  ~Bad() {
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatmulDescDestroy(desc);
    cublasLtMatmulPreferenceDestroy(pref);
    cudaFree(buf);
  }
  char* at(size_t off) const { return static_cast<char*>(buf) + off; }
  cublasStatus_t heuristic(cublasLtMatmulHeuristicResult_t* r = nullptr) {
    cublasLtMatmulHeuristicResult_t local{};
    int found = 0;
    return cublasLtMatmulAlgoGetHeuristic(handle(), desc, a, b, c, c, pref, 1, r ? r : &local, &found);
  }
  cublasStatus_t matmul(const cublasLtMatmulAlgo_t* algo = nullptr, size_t a_off = 0) {
    return cublasLtMatmul(handle(), desc, &alpha, at(a_off), a, at(1024), b, &beta, at(2048), c, at(2048), c,
                          algo, nullptr, 0, nullptr);
  }
};

// The status of `call` and that its stderr line starts "sim: <fn>: " and contains `needle`.
template <typename F>
void expect_refusal(F call, cublasStatus_t status, const std::string& fn, const std::string& needle) {
  StderrCapture cap;
  const cublasStatus_t st = call();
  const std::string err = cap.text();
  INFO("stderr: " << err);
  CHECK(st == status);
  CHECK(err.rfind("sim: " + fn + ": ", 0) == 0);
  CHECK(err.find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("cublasLtMatmul refuses what cuBLASLt refuses, naming the value", "[sim][cublaslt]") {
  SECTION("inner dimensions differ") {
    Bad x;
    const uint64_t rows = 5;
    LT_OK(cublasLtMatrixLayoutSetAttribute(x.b, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, sizeof(rows)));
    expect_refusal([&] { return x.matmul(); }, CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul",
                   "op(B) has 5 rows");
    expect_refusal([&] { return x.heuristic(); }, CUBLAS_STATUS_INVALID_VALUE,
                   "cublasLtMatmulAlgoGetHeuristic", "k = 4");
  }
  SECTION("op(A) rows differ from m") {
    Bad x;
    const cublasOperation_t t = CUBLAS_OP_T;
    LT_OK(cublasLtMatmulDescSetAttribute(x.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    expect_refusal([&] { return x.matmul(); }, CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul",
                   "op(A) has 4 rows but D has m = 8");
  }
  SECTION("ld below rows") {
    Bad x;
    const int64_t ld = 7;
    LT_OK(cublasLtMatrixLayoutSetAttribute(x.a, CUBLASLT_MATRIX_LAYOUT_LD, &ld, sizeof(ld)));
    expect_refusal([&] { return x.matmul(); }, CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul",
                   "Adesc: ld 7 < rows 8");
  }
  SECTION("unsupported type combinations") {
    Bad half_into_other(CUDA_R_16BF, CUDA_R_16F);
    expect_refusal([&] { return half_into_other.matmul(); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "C CUDA_R_16F (2)");
    Bad f32_into_bf16(CUDA_R_32F, CUDA_R_16BF);
    expect_refusal([&] { return f32_into_bf16.heuristic(); }, CUBLAS_STATUS_NOT_SUPPORTED,
                   "cublasLtMatmulAlgoGetHeuristic", "A CUDA_R_32F (0)");
    Bad f32_in_f64;
    const int32_t compute = CUBLAS_COMPUTE_64F, scale = CUDA_R_64F;
    LT_OK(cublasLtMatmulDescSetAttribute(f32_in_f64.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &compute,
                                         sizeof(compute)));
    LT_OK(cublasLtMatmulDescSetAttribute(f32_in_f64.desc, CUBLASLT_MATMUL_DESC_SCALE_TYPE, &scale,
                                         sizeof(scale)));
    expect_refusal([&] { return f32_in_f64.matmul(); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "CUBLAS_COMPUTE_64F (70)");
    Bad tf32;
    const int32_t fast = CUBLAS_COMPUTE_32F_FAST_TF32;
    LT_OK(cublasLtMatmulDescSetAttribute(tf32.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &fast, sizeof(fast)));
    expect_refusal([&] { return tf32.matmul(); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "CUBLAS_COMPUTE_32F_FAST_TF32 (77)");
  }
  SECTION("row-major layouts, epilogues and TRANSC are not emulated") {
    Bad row;
    const int32_t order = CUBLASLT_ORDER_ROW;
    LT_OK(cublasLtMatrixLayoutSetAttribute(row.c, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof(order)));
    expect_refusal([&] { return row.matmul(); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "Cdesc: order 1");
    Bad relu;
    const uint32_t epilogue = CUBLASLT_EPILOGUE_RELU;
    LT_OK(cublasLtMatmulDescSetAttribute(relu.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                         sizeof(epilogue)));
    expect_refusal([&] { return relu.matmul(); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "epilogue 2");
  }
  SECTION("batch counts differ, D's batches overlap") {
    Bad x;
    const int32_t two = 2;
    LT_OK(cublasLtMatrixLayoutSetAttribute(x.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two, sizeof(two)));
    expect_refusal([&] { return x.matmul(); }, CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul",
                   "Adesc: batch count 2 but Ddesc's is 1");
    Bad y;
    for (auto l : {y.a, y.b, y.c})
      LT_OK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two, sizeof(two)));
    const int64_t stride = 40;  // < 8 * 6
    LT_OK(cublasLtMatrixLayoutSetAttribute(y.c, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                           sizeof(stride)));
    expect_refusal([&] { return y.matmul(); }, CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul",
                   "strided batch offset 40 < 48");
  }
  SECTION("attribute sizes, algorithm counts, handles") {
    Bad x;
    const int64_t wide = CUBLAS_OP_T;
    expect_refusal(
        [&] {
          return cublasLtMatmulDescSetAttribute(x.desc, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof(wide));
        },
        CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescSetAttribute",
        "sizeInBytes 8 but the attribute is 4");
    cublasLtMatmulHeuristicResult_t r{};
    int found = -1;
    expect_refusal(
        [&] {
          return cublasLtMatmulAlgoGetHeuristic(handle(), x.desc, x.a, x.b, x.c, x.c, x.pref, 0, &r, &found);
        },
        CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulAlgoGetHeuristic", "requestedAlgoCount 0");
    expect_refusal(
        [&] {
          return cublasLtMatmul(nullptr, x.desc, &x.alpha, x.at(0), x.a, x.at(1024), x.b, &x.beta, x.at(2048),
                                x.c, x.at(2048), x.c, nullptr, nullptr, 0, nullptr);
        },
        CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtMatmul", "lightHandle");
    size_t written = 0;
    int32_t got = -1;
    LT_OK(cublasLtMatmulDescGetAttribute(x.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, nullptr, 0, &written));
    CHECK(written == sizeof(int32_t));
    LT_OK(cublasLtMatmulDescGetAttribute(x.desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &got, sizeof(got),
                                         &written));
    CHECK(got == CUBLAS_COMPUTE_32F);
  }
  SECTION("a pointer less aligned than the algorithm was chosen for; in place with another ld") {
    Bad x;
    cublasLtMatmulHeuristicResult_t r{};
    LT_OK(x.heuristic(&r));
    CHECK(x.matmul(&r.algo, 0) == CUBLAS_STATUS_SUCCESS);
    expect_refusal([&] { return x.matmul(&r.algo, 4); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "is not 16-byte aligned");
    const uint32_t four = 4;
    LT_OK(cublasLtMatmulPreferenceSetAttribute(x.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &four,
                                               sizeof(four)));
    LT_OK(x.heuristic(&r));
    CHECK(x.matmul(&r.algo, 4) == CUBLAS_STATUS_SUCCESS);
    expect_refusal([&] { return x.matmul(nullptr, 2); }, CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul",
                   "is not 4-byte aligned, its element size");
    cublasLtMatrixLayout_t d = nullptr;
    LT_OK(cublasLtMatrixLayoutCreate(&d, CUDA_R_32F, 8, 6, 9));
    expect_refusal(
        [&] {
          return cublasLtMatmul(handle(), x.desc, &x.alpha, x.at(0), x.a, x.at(1024), x.b, &x.beta,
                                x.at(2048), x.c, x.at(2048), d, nullptr, nullptr, 0, nullptr);
        },
        CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul", "ldc 8 / ldd 9");
    cublasLtMatrixLayoutDestroy(d);
  }
  CUDA_OK(cudaDeviceSynchronize());
}

TEST_CASE("cuBLASLt version and status strings", "[sim][cublaslt]") {
  CHECK(cublasLtGetVersion() == 130100);
  CHECK(std::string(cublasLtGetStatusString(CUBLAS_STATUS_INVALID_VALUE)) ==
        "an invalid numeric value was used as an argument");
  CHECK(std::string(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED)) == "CUBLAS_STATUS_NOT_SUPPORTED");
}
