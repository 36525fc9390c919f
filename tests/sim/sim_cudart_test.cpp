// Tests of the emulated CUDA device's runtime (tests/sim/sim_cudart.cpp): streams that really run apart from
// the host and from each other, events that order them, NaN-filled memory, host access to device memory
// killed, the cross-stream free check, out-of-memory and old-driver failures, launch errors, pool numbers.
// Checks that kill or poison the process (aborts, sticky faults, knobs read once) run in a child: forked, or
// this executable run again on a hidden test case with the knob in its environment.
#include <cuda_runtime.h>
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

struct ChildResult {
  bool aborted = false;  // killed by SIGABRT
  int code = -1;         // exit status when it exited
  std::string err;       // what it wrote to stderr (and stdout)
};

ChildResult collect(pid_t pid, int fd) {
  ChildResult r;
  char buf[512];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) r.err.append(buf, static_cast<size_t>(n));
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  r.aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs f in a forked child (its return value is the exit status).
ChildResult in_child(const std::function<int()>& f) {
  int fd[2];
  REQUIRE(pipe(fd) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not Catch2's handler: the child reports through its stderr only
    dup2(fd[1], 2);
    close(fd[0]);
    _exit(f());
  }
  close(fd[1]);
  return collect(pid, fd[0]);
}

// Runs this executable's hidden test case `name` in a fresh process with one more environment variable.
ChildResult in_fresh_process(const char* name, const char* var, const char* value) {
  int fd[2];
  REQUIRE(pipe(fd) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setenv(var, value, 1);
    dup2(fd[1], 1);
    dup2(fd[1], 2);
    close(fd[0]);
    execl("/proc/self/exe", "test_sim_cudart", name, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fd[1]);
  return collect(pid, fd[0]);
}

// A host function that blocks its stream until the test opens the gate.
struct Gate {
  std::promise<void> open_;
  std::shared_future<void> opened = open_.get_future().share();
  void open() { open_.set_value(); }
};
void CUDART_CB wait_gate(void* gate) {
  static_cast<Gate*>(gate)->opened.wait();
}

// Host functions appending to a log, to see the order streams ran in.
struct Log {
  std::mutex mu;
  std::string s;
};
struct Append {
  Log* log;
  char c;
};
void CUDART_CB append(void* a) {
  auto* ap = static_cast<Append*>(a);
  std::lock_guard<std::mutex> lock(ap->log->mu);
  ap->log->s += ap->c;
}
std::string read_log(Log& log) {
  std::lock_guard<std::mutex> lock(log.mu);
  return log.s;
}

void fill_index(float* x, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] = static_cast<float>(i);
}
void affine(const float* x, float* y, int n, float a, float b) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) y[i] = a * x[i] + b;
}
// Reads through a table of device pointers kept in device memory (blocks not among the launch's arguments).
void gather_rows(float* const* rows, float* out, int cols) {
  const int r = static_cast<int>(blockIdx.x), c = static_cast<int>(threadIdx.x);
  if (c < cols) out[r * cols + c] = rows[r][c] * 10.0f;
}

sim::LaunchConfig cfg(unsigned grid, unsigned block, cudaStream_t stream = nullptr, size_t smem = 0) {
  return sim::LaunchConfig{dim3(grid), dim3(block), smem, stream};
}

std::vector<float> to_host(const float* d, size_t n) {
  std::vector<float> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

bool all_poison(const std::vector<float>& v) {
  for (float f : v) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (u != 0xFFFFFFFFu || !std::isnan(f)) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("cudart: the device is one emulated H100", "[sim][cudart]") {
  int n = 0, major = 0, minor = -1, sms = 0, optin = 0;
  REQUIRE(cudaGetDeviceCount(&n) == cudaSuccess);
  CHECK(n == 1);
  cudaDeviceProp p;
  REQUIRE(cudaGetDeviceProperties(&p, 0) == cudaSuccess);
  CHECK(std::string(p.name) == "NVIDIA H100 80GB HBM3 (emulated)");
  CHECK(p.multiProcessorCount == 132);
  CHECK(p.major == 9);
  CHECK(p.minor == 0);
  CHECK(p.clockRate == 1980000);
  CHECK(p.sharedMemPerBlockOptin == 232448);
  CHECK(p.totalGlobalMem == (size_t(80) << 30));
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
  CHECK(major == 9);
  CHECK(minor == 0);
  CHECK(sms == 132);
  CHECK(optin == 232448);
  char bus[32];
  REQUIRE(cudaDeviceGetPCIBusId(bus, sizeof bus, 0) == cudaSuccess);
  CHECK(std::string(bus) == "0000:19:00.0");
  CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice);
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice);
  CHECK(cudaGetLastError() == cudaSuccess);
  int least = 1, greatest = 1;
  REQUIRE(cudaDeviceGetStreamPriorityRange(&least, &greatest) == cudaSuccess);
  CHECK(least == 0);
  CHECK(greatest == -5);
  int driver = 0, runtime = 0;
  REQUIRE(cudaDriverGetVersion(&driver) == cudaSuccess);
  REQUIRE(cudaRuntimeGetVersion(&runtime) == cudaSuccess);
  CHECK(driver == 13000);
  CHECK(runtime == 13000);
}

TEST_CASE("cudart: error names and strings are CUDA's", "[sim][cudart]") {
  CHECK(std::string(cudaGetErrorName(cudaErrorInsufficientDriver)) == "cudaErrorInsufficientDriver");
  CHECK(std::string(cudaGetErrorString(cudaErrorInsufficientDriver)) ==
        "CUDA driver version is insufficient for CUDA runtime version");
  CHECK(std::string(cudaGetErrorName(cudaErrorMemoryAllocation)) == "cudaErrorMemoryAllocation");
  CHECK(std::string(cudaGetErrorString(cudaErrorMemoryAllocation)) == "out of memory");
  CHECK(std::string(cudaGetErrorString(cudaErrorIllegalAddress)) ==
        "an illegal memory access was encountered");
  CHECK(std::string(cudaGetErrorString(cudaErrorLaunchFailure)) == "unspecified launch failure");
  CHECK(std::string(cudaGetErrorString(cudaErrorNoDevice)) == "no CUDA-capable device is detected");
  CHECK(std::string(cudaGetErrorString(cudaSuccess)) == "no error");
  CHECK(std::string(cudaGetErrorName(cudaErrorNotReady)) == "cudaErrorNotReady");
}

TEST_CASE("cudart: memory copies round-trip and copy kinds are checked against the pointers",
          "[sim][cudart]") {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal;
  std::vector<float> h(1000);
  for (float& v : h) v = normal(rng);
  float *a = nullptr, *b = nullptr;
  REQUIRE(cudaMalloc(&a, h.size() * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&b, h.size() * sizeof(float)) == cudaSuccess);
  CHECK(sim::is_device_pointer(a));
  CHECK(!sim::is_device_pointer(h.data()));
  REQUIRE(cudaMemcpy(a, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(b, a, h.size() * sizeof(float), cudaMemcpyDefault) == cudaSuccess);  // inferred D2D
  CHECK(to_host(b, h.size()) == h);
  std::vector<float> out(h.size());
  // A DeviceToHost whose source is host memory, a HostToDevice whose destination is host memory.
  CHECK(cudaMemcpy(out.data(), h.data(), 16, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(out.data(), h.data(), 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(out.data(), a, (h.size() + 1) * sizeof(float), cudaMemcpyDeviceToHost) ==
        cudaErrorInvalidValue);  // past the block's end
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  // 2-D: every other row of a (10 x 100) matrix.
  float* c = nullptr;
  REQUIRE(cudaMalloc(&c, 5 * 100 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMemcpy2DAsync(c, 100 * sizeof(float), a, 200 * sizeof(float), 100 * sizeof(float), 5,
                            cudaMemcpyDeviceToDevice) == cudaSuccess);
  const std::vector<float> rows = to_host(c, 500);
  for (int r = 0; r < 5; ++r)
    for (int k = 0; k < 100; ++k) CHECK(rows[size_t(r * 100 + k)] == h[size_t(r * 200 + k)]);
  // Memset, then a pinned buffer as an async destination.
  REQUIRE(cudaMemset(b, 0, 400) == cudaSuccess);
  float* pinned = nullptr;
  REQUIRE(cudaMallocHost(&pinned, 200 * sizeof(float)) == cudaSuccess);
  CHECK(!sim::is_device_pointer(pinned));
  REQUIRE(cudaMemcpyAsync(pinned, b, 200 * sizeof(float), cudaMemcpyDeviceToHost, nullptr) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
  for (int i = 0; i < 200; ++i) CHECK(pinned[i] == (i < 100 ? 0.0f : h[size_t(i)]));
  REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
  REQUIRE(cudaFree(a) == cudaSuccess);
  REQUIRE(cudaFree(b) == cudaSuccess);
  REQUIRE(cudaFree(c) == cudaSuccess);
  CHECK(cudaFree(a) == cudaErrorInvalidValue);  // twice
  (void)cudaGetLastError();
}

TEST_CASE("cudart: device memory starts NaN-filled, and again after a free and reallocation",
          "[sim][cudart]") {
  const size_t n = 3000;
  float* a = nullptr;
  REQUIRE(cudaMalloc(&a, n * sizeof(float)) == cudaSuccess);
  CHECK(all_poison(to_host(a, n)));
  REQUIRE(sim::launch(fill_index, cfg(12, 256), a, static_cast<int>(n)) == cudaSuccess);
  std::vector<float> got = to_host(a, n);
  CHECK(got[0] == 0.0f);
  CHECK(got[n - 1] == float(n - 1));
  REQUIRE(cudaFree(a) == cudaSuccess);
  REQUIRE(cudaMalloc(&a, n * sizeof(float)) == cudaSuccess);
  CHECK(all_poison(to_host(a, n)));
  REQUIRE(cudaFree(a) == cudaSuccess);

  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  float* b = nullptr;
  REQUIRE(cudaMallocAsync(&b, n * sizeof(float), s) == cudaSuccess);
  REQUIRE(sim::launch(fill_index, cfg(12, 256, s), b, static_cast<int>(n)) == cudaSuccess);
  REQUIRE(cudaFreeAsync(b, s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  float* c = nullptr;
  REQUIRE(cudaMallocAsync(&c, n * sizeof(float), s) == cudaSuccess);
  std::vector<float> h(n);
  REQUIRE(cudaMemcpyAsync(h.data(), c, n * sizeof(float), cudaMemcpyDeviceToHost, s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(all_poison(h));
  REQUIRE(cudaFreeAsync(c, s) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
}

TEST_CASE("cudart: kernels compute on the stream's worker, also through pointers held in device memory",
          "[sim][cudart]") {
  const int n = 1000;
  float *x = nullptr, *y = nullptr;
  REQUIRE(cudaMalloc(&x, n * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&y, n * sizeof(float)) == cudaSuccess);
  REQUIRE(sim::launch(fill_index, cfg(4, 256), x, n) == cudaSuccess);
  REQUIRE(sim::launch(affine, cfg(8, 128), x, y, n, 2.0f, 1.0f) == cudaSuccess);
  const std::vector<float> got = to_host(y, n);
  for (int i = 0; i < n; i += 37) CHECK(got[size_t(i)] == 2.0f * float(i) + 1.0f);
  // rows[r] -> x + 100 r: the kernel reaches x only through the table in device memory.
  float** rows = nullptr;
  float* out = nullptr;
  REQUIRE(cudaMalloc(&rows, 3 * sizeof(float*)) == cudaSuccess);
  REQUIRE(cudaMalloc(&out, 3 * 50 * sizeof(float)) == cudaSuccess);
  float* table[3] = {x, x + 100, x + 200};
  REQUIRE(cudaMemcpy(rows, table, sizeof table, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(sim::launch(gather_rows, cfg(3, 64), rows, out, 50) == cudaSuccess);
  const std::vector<float> g = to_host(out, 150);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 50; c += 7) CHECK(g[size_t(r * 50 + c)] == 10.0f * float(100 * r + c));
  {
    sim::DeviceAccess access;  // the emulator's own synchronous work may read device memory
    CHECK(y[5] == 11.0f);
  }
  for (void* p :
       {static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(rows), static_cast<void*>(out)})
    REQUIRE(cudaFree(p) == cudaSuccess);
}

TEST_CASE(
    "cudart: a stream runs apart from the host; two streams run out of order unless an event orders them",
    "[sim][cudart]") {
  cudaStream_t a, b;
  REQUIRE(cudaStreamCreate(&a) == cudaSuccess);
  REQUIRE(cudaStreamCreate(&b) == cudaSuccess);
  SECTION("the host goes on while a host function blocks the stream") {
    Gate gate;
    Log log;
    Append after{&log, 'x'};
    REQUIRE(cudaLaunchHostFunc(a, wait_gate, &gate) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(a, append, &after) == cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(cudaStreamQuery(a) == cudaErrorNotReady);
    CHECK(read_log(log).empty());
    gate.open();
    REQUIRE(cudaStreamSynchronize(a) == cudaSuccess);
    CHECK(cudaStreamQuery(a) == cudaSuccess);
    CHECK(read_log(log) == "x");
  }
  SECTION("without an event, b finishes while a is still blocked") {
    Gate gate;
    Log log;
    Append ea{&log, 'A'}, eb{&log, 'B'};
    REQUIRE(cudaLaunchHostFunc(a, wait_gate, &gate) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(a, append, &ea) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(b, append, &eb) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(b) == cudaSuccess);
    CHECK(read_log(log) == "B");
    gate.open();
    REQUIRE(cudaStreamSynchronize(a) == cudaSuccess);
    CHECK(read_log(log) == "BA");
  }
  SECTION("an event wait holds b until a's recorded work is done") {
    Gate gate;
    Log log;
    Append ea{&log, 'A'}, eb{&log, 'B'};
    cudaEvent_t e;
    REQUIRE(cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
    CHECK(cudaEventQuery(e) == cudaSuccess);  // never recorded: complete
    REQUIRE(cudaLaunchHostFunc(a, wait_gate, &gate) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(a, append, &ea) == cudaSuccess);
    REQUIRE(cudaEventRecord(e, a) == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(b, e, 0) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(b, append, &eb) == cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CHECK(cudaEventQuery(e) == cudaErrorNotReady);
    CHECK(cudaStreamQuery(b) == cudaErrorNotReady);
    CHECK(read_log(log).empty());
    gate.open();
    REQUIRE(cudaStreamSynchronize(b) == cudaSuccess);
    CHECK(read_log(log) == "AB");
    CHECK(cudaEventQuery(e) == cudaSuccess);
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e, e) == cudaErrorInvalidResourceHandle);  // timing disabled
    (void)cudaGetLastError();
    REQUIRE(cudaEventDestroy(e) == cudaSuccess);
  }
  SECTION("kernels: b reads a's result only with the event wait") {
    const int n = 512;
    float *x = nullptr, *y = nullptr;
    REQUIRE(cudaMalloc(&x, n * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMalloc(&y, n * sizeof(float)) == cudaSuccess);
    for (const bool wait : {false, true}) {
      REQUIRE(cudaMemset(x, 0xFF, n * sizeof(float)) == cudaSuccess);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      Gate gate;
      cudaEvent_t e;
      REQUIRE(cudaEventCreate(&e) == cudaSuccess);
      REQUIRE(cudaLaunchHostFunc(a, wait_gate, &gate) == cudaSuccess);
      REQUIRE(sim::launch(fill_index, cfg(2, 256, a), x, n) == cudaSuccess);
      REQUIRE(cudaEventRecord(e, a) == cudaSuccess);
      if (wait) REQUIRE(cudaStreamWaitEvent(b, e, 0) == cudaSuccess);
      REQUIRE(sim::launch(affine, cfg(2, 256, b), x, y, n, 2.0f, 1.0f) == cudaSuccess);
      if (!wait) REQUIRE(cudaStreamSynchronize(b) == cudaSuccess);  // done while a is blocked
      gate.open();
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const std::vector<float> got = to_host(y, n);
      if (wait) {
        for (int i = 0; i < n; i += 31) CHECK(got[size_t(i)] == 2.0f * float(i) + 1.0f);
      } else {
        CHECK(all_poison(got));  // computed from the poison a had not overwritten yet
      }
      REQUIRE(cudaEventDestroy(e) == cudaSuccess);
    }
    REQUIRE(cudaFree(x) == cudaSuccess);
    REQUIRE(cudaFree(y) == cudaSuccess);
  }
  REQUIRE(cudaStreamDestroy(a) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(b) == cudaSuccess);
  CHECK(cudaStreamQuery(a) == cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
}

TEST_CASE("cudart: the legacy default stream waits for blocking streams; non-blocking streams do not",
          "[sim][cudart]") {
  cudaStream_t blocking, nonblocking;
  REQUIRE(cudaStreamCreate(&blocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking) == cudaSuccess);
  Gate gate;
  Log log;
  Append legacy{&log, 'L'}, nb{&log, 'N'}, after{&log, 'b'};
  REQUIRE(cudaLaunchHostFunc(blocking, wait_gate, &gate) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(nullptr, append, &legacy) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(blocking, append, &after) == cudaSuccess);  // after the legacy op
  REQUIRE(cudaLaunchHostFunc(nonblocking, append, &nb) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(nonblocking) == cudaSuccess);
  CHECK(read_log(log) == "N");
  CHECK(cudaStreamQuery(nullptr) == cudaErrorNotReady);
  gate.open();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(read_log(log) == "NLb");
  REQUIRE(cudaStreamDestroy(blocking) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(nonblocking) == cudaSuccess);
}

TEST_CASE("cudart: destroying a stream finishes its work first; events time the work between them",
          "[sim][cudart]") {
  cudaStream_t s;
  REQUIRE(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, -5) == cudaSuccess);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusActive;
  REQUIRE(cudaStreamIsCapturing(s, &capture) == cudaSuccess);
  CHECK(capture == cudaStreamCaptureStatusNone);
  cudaEvent_t start, stop;
  REQUIRE(cudaEventCreate(&start) == cudaSuccess);
  REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
  Log log;
  Append last{&log, 'z'};
  REQUIRE(cudaEventRecord(start, s) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(
              s, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(40)); }, nullptr) ==
          cudaSuccess);
  REQUIRE(cudaEventRecord(stop, s) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(s, append, &last) == cudaSuccess);
  float ms = -1;
  CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaErrorNotReady);
  (void)cudaGetLastError();
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(read_log(log) == "z");
  REQUIRE(cudaEventSynchronize(stop) == cudaSuccess);
  REQUIRE(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
  CHECK(ms >= 40.0f);
  CHECK(ms < 5000.0f);
  REQUIRE(cudaEventDestroy(start) == cudaSuccess);
  REQUIRE(cudaEventDestroy(stop) == cudaSuccess);
}

TEST_CASE("cudart: launch configuration errors come back from cudaGetLastError of the launching thread",
          "[sim][cudart]") {
  float* x = nullptr;
  REQUIRE(cudaMalloc(&x, 64 * sizeof(float)) == cudaSuccess);
  CHECK(sim::launch(fill_index, cfg(1, 2048), x, 64) == cudaErrorInvalidConfiguration);
  cudaError_t other = cudaErrorUnknown;
  std::thread([&] { other = cudaGetLastError(); }).join();
  CHECK(other == cudaSuccess);  // per host thread
  CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);
  // Dynamic shared memory above 48 KiB only after cudaFuncSetAttribute, at most 227 KiB.
  CHECK(sim::launch(fill_index, cfg(1, 64, nullptr, 64 * 1024), x, 64) == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  REQUIRE(cudaFuncSetAttribute(fill_index, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) ==
          cudaSuccess);
  CHECK(cudaFuncSetAttribute(fill_index, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448 + 1) ==
        cudaErrorInvalidValue);
  (void)cudaGetLastError();
  REQUIRE(sim::launch(fill_index, cfg(1, 64, nullptr, 64 * 1024), x, 64) == cudaSuccess);
  CHECK(to_host(x, 64)[63] == 63.0f);
  cudaFuncAttributes attr;
  REQUIRE(cudaFuncGetAttributes(&attr, fill_index) == cudaSuccess);
  CHECK(attr.maxThreadsPerBlock == 1024);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  REQUIRE(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) ==
          cudaSuccess);
  CHECK(q == cudaDriverEntryPointSuccess);
  CHECK(fn != nullptr);
  REQUIRE(cudaGetDriverEntryPointByVersion("cuMemMap", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess);
  CHECK(q == cudaDriverEntryPointSymbolNotFound);
  CHECK(fn == nullptr);
  REQUIRE(cudaFree(x) == cudaSuccess);
}

TEST_CASE("cudart: default pool statistics", "[sim][cudart]") {
  cudaMemPool_t pool;
  REQUIRE(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess);
  auto get = [&](cudaMemPoolAttr a) {
    unsigned long long v = ~0ull;
    REQUIRE(cudaMemPoolGetAttribute(pool, a, &v) == cudaSuccess);
    return v;
  };
  auto set = [&](cudaMemPoolAttr a, unsigned long long v) { return cudaMemPoolSetAttribute(pool, a, &v); };
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const unsigned long long used0 = get(cudaMemPoolAttrUsedMemCurrent);
  CHECK(get(cudaMemPoolAttrReservedMemCurrent) == used0);  // trimmed at the synchronisation (threshold 0)
  REQUIRE(set(cudaMemPoolAttrUsedMemHigh, 0) == cudaSuccess);
  REQUIRE(set(cudaMemPoolAttrReservedMemHigh, 0) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemHigh) == used0);
  CHECK(set(cudaMemPoolAttrUsedMemHigh, 5) == cudaErrorInvalidValue);  // only a reset to 0
  (void)cudaGetLastError();
  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  // 10000 bytes take three 4 KiB pages: 12288 bytes each.
  void* p[3];
  for (void*& q : p) REQUIRE(cudaMallocAsync(&q, 10000, s) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemCurrent) == used0 + 3 * 12288);
  CHECK(get(cudaMemPoolAttrUsedMemHigh) == used0 + 3 * 12288);
  REQUIRE(cudaFreeAsync(p[0], s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemCurrent) == used0 + 2 * 12288);
  CHECK(get(cudaMemPoolAttrReservedMemCurrent) == used0 + 2 * 12288);
  CHECK(get(cudaMemPoolAttrUsedMemHigh) == used0 + 3 * 12288);
  CHECK(get(cudaMemPoolAttrReservedMemHigh) == used0 + 3 * 12288);
  REQUIRE(set(cudaMemPoolAttrUsedMemHigh, 0) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemHigh) == used0 + 2 * 12288);
  // With a release threshold the pool keeps what it reserved across synchronisations.
  REQUIRE(set(cudaMemPoolAttrReleaseThreshold, 1ull << 30) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrReleaseThreshold) == 1ull << 30);
  REQUIRE(cudaFreeAsync(p[1], s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemCurrent) == used0 + 12288);
  CHECK(get(cudaMemPoolAttrReservedMemCurrent) == used0 + 2 * 12288);
  REQUIRE(set(cudaMemPoolAttrReleaseThreshold, 0) == cudaSuccess);
  REQUIRE(cudaFreeAsync(p[2], s) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(get(cudaMemPoolAttrUsedMemCurrent) == used0);
  CHECK(get(cudaMemPoolAttrReservedMemCurrent) == used0);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
}

TEST_CASE("cudart: a host thread touching device memory dies with one line", "[sim][cudart]") {
  ChildResult r = in_child([] {
    float* p = nullptr;
    if (cudaMalloc(&p, 256) != cudaSuccess) return 3;
    volatile float v = *p;
    (void)v;
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err.find("sim: host thread read device memory at 0x") == 0);
  CHECK(
      r.err.find("(block of 256 bytes allocated by cudaMalloc); copy it to the host with cudaMemcpy first") !=
      std::string::npos);
  r = in_child([] {
    cudaStream_t s;
    float* p = nullptr;
    if (cudaStreamCreate(&s) != cudaSuccess || cudaMallocAsync(&p, 64, s) != cudaSuccess) return 3;
    p[1] = 1.0f;
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err.find("sim: host thread wrote device memory at 0x") == 0);
  CHECK(r.err.find("(block of 64 bytes allocated by cudaMallocAsync on stream#") != std::string::npos);
  r = in_child([] {
    cudaStream_t s;
    float* p = nullptr;
    if (cudaStreamCreate(&s) != cudaSuccess || cudaMallocAsync(&p, 64, s) != cudaSuccess) return 3;
    if (cudaFreeAsync(p, s) != cudaSuccess || cudaStreamSynchronize(s) != cudaSuccess) return 4;
    sim::DeviceAccess access;  // even device work may not touch a freed block
    volatile float v = *p;
    (void)v;
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err.find("device memory at 0x") != std::string::npos);
  CHECK(r.err.find("use after free: block of 64 bytes freed on stream#") != std::string::npos);
}

TEST_CASE(
    "cudart: device work past a block's end or into a freed block, host functions touching device "
    "memory: one line and abort",
    "[sim][cudart]") {
  // 1000 floats take one page; index 1024 is the guard page after it.
  ChildResult r = in_child([] {
    float* p = nullptr;
    if (cudaMalloc(&p, 1000 * sizeof(float)) != cudaSuccess) return 3;
    sim::launch(fill_index, cfg(5, 256), p, 1100);
    cudaDeviceSynchronize();
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(
      r.err.find("sim: device operation 'kernel (anonymous namespace)::fill_index(float*, int)' wrote device "
                 "memory at 0x") == 0);
  CHECK(r.err.find("outside every allocation (96 bytes past the end of the block of 4000 bytes at 0x") !=
        std::string::npos);
  r = in_child([] {
    float* p = nullptr;
    if (cudaMalloc(&p, 64) != cudaSuccess || cudaFree(p) != cudaSuccess) return 3;
    sim::launch(fill_index, cfg(1, 16), p, 16);
    cudaDeviceSynchronize();
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err.find("use after free: block of 64 bytes freed by cudaFree on the host") != std::string::npos);
  r = in_child([] {
    cudaLaunchHostFunc(
        nullptr, [](void*) { cudaDeviceSynchronize(); }, nullptr);
    cudaDeviceSynchronize();
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err ==
        "sim: cudaDeviceSynchronize called by 'cudaLaunchHostFunc' on default stream's worker: a stream "
        "operation cannot wait for the device\n");
  r = in_child([] {
    static float* p = nullptr;
    if (cudaMalloc(&p, 64) != cudaSuccess) return 3;
    cudaLaunchHostFunc(
        nullptr, [](void*) { p[0] = 1.0f; }, nullptr);
    cudaDeviceSynchronize();
    return 0;
  });
  INFO(r.err);
  CHECK(r.aborted);
  CHECK(r.err.find("sim: host thread wrote device memory at 0x") == 0);
}

TEST_CASE("cudart: a free not ordered after another stream's use is reported; an event wait orders it",
          "[sim][cudart]") {
  // Stream b's kernel uses p but waits behind a gate; stream a frees p with nothing ordering the two.
  ChildResult r = in_child([] {
    cudaStream_t a, b;
    float* p = nullptr;
    if (cudaStreamCreate(&a) || cudaStreamCreate(&b) || cudaMallocAsync(&p, 1024, a)) return 3;
    Gate gate;
    cudaLaunchHostFunc(b, wait_gate, &gate);
    if (sim::launch(fill_index, cfg(1, 256, b), p, 256) != cudaSuccess) return 4;
    cudaFreeAsync(p, a);
    const cudaError_t e = cudaStreamSynchronize(a);
    gate.open();
    cudaStreamSynchronize(b);  // the kernel is skipped: the fault is sticky
    return e == cudaErrorIllegalAddress && cudaGetLastError() == cudaErrorIllegalAddress &&
                   cudaGetLastError() == cudaErrorIllegalAddress &&
                   cudaMalloc(&p, 16) == cudaErrorIllegalAddress
               ? 0
               : 5;
  });
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(r.err.find("sim: block 0x") == 0);
  CHECK(r.err.find(" (1024 bytes) freed on stream#") != std::string::npos);
  CHECK(r.err.find("(op 'cudaFreeAsync') while stream#") != std::string::npos);
  CHECK(r.err.find("may still use it (op 'kernel (anonymous namespace)::fill_index(float*, int)' launched") !=
        std::string::npos);
  CHECK(r.err.find("launched before without an event wait)") != std::string::npos);
  // Ordered: by an event wait, by a host synchronisation, or by using and freeing on the same stream.
  for (int how = 0; how < 3; ++how) {
    r = in_child([how] {
      cudaStream_t a, b;
      cudaEvent_t e;
      float* p = nullptr;
      if (cudaStreamCreate(&a) || cudaStreamCreate(&b) || cudaEventCreate(&e) || cudaMallocAsync(&p, 1024, a))
        return 3;
      Gate gate;
      cudaLaunchHostFunc(b, wait_gate, &gate);
      if (sim::launch(fill_index, cfg(1, 256, b), p, 256) != cudaSuccess) return 4;
      if (how == 0) {
        cudaEventRecord(e, b);
        cudaStreamWaitEvent(a, e, 0);
      }
      gate.open();
      if (how == 1) cudaStreamSynchronize(b);
      cudaFreeAsync(p, how == 2 ? b : a);
      return cudaDeviceSynchronize() == cudaSuccess && cudaGetLastError() == cudaSuccess ? 0 : 5;
    });
    INFO("how " << how << ": " << r.err);
    CHECK(r.code == 0);
    CHECK(r.err.empty());
  }
}

TEST_CASE("cudart: a device fault is sticky", "[sim][cudart]") {
  const ChildResult r = in_child([] {
    cudaStream_t s;
    if (cudaStreamCreate(&s) != cudaSuccess) return 3;
    Log log;
    Append x{&log, 'x'};
    Gate gate;
    cudaLaunchHostFunc(s, wait_gate, &gate);
    cudaLaunchHostFunc(s, append, &x);
    sim::device_fault(cudaErrorLaunchFailure, "test op", "made up");
    gate.open();
    const cudaError_t sync = cudaStreamSynchronize(s);
    void* p = nullptr;
    const bool ok = sync == cudaErrorLaunchFailure && cudaMalloc(&p, 16) == cudaErrorLaunchFailure &&
                    cudaGetLastError() == cudaErrorLaunchFailure &&
                    cudaGetLastError() == cudaErrorLaunchFailure &&
                    cudaPeekAtLastError() == cudaErrorLaunchFailure && read_log(log).empty();  // skipped
    return ok ? 0 : 5;
  });
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(r.err == "sim: test op: made up\n");
}

TEST_CASE("cudart: out of device memory at the capacity", "[sim][cudart]") {
  const ChildResult r = in_fresh_process("cudart child: out of memory", "POLDER_SIM_MEMORY", "1M");
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(
      r.err.find("sim: out of device memory: cudaMalloc asked for 262144 bytes, 917504 in use (pool 262144, "
                 "cudaMalloc 524288, libraries 131072) of 1048576\n") != std::string::npos);
  CHECK(r.err.find("sim: out of device memory: NCCL buffers asked for 200000 bytes") != std::string::npos);
}

TEST_CASE("cudart child: out of memory", "[.cudart-child]") {
  REQUIRE(sim::device_memory() == (size_t(1) << 20));
  cudaDeviceProp p;
  REQUIRE(cudaGetDeviceProperties(&p, 0) == cudaSuccess);
  CHECK(p.totalGlobalMem == (size_t(1) << 20));
  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  void *a = nullptr, *b = nullptr, *c = nullptr;
  REQUIRE(cudaMalloc(&a, 512 * 1024) == cudaSuccess);
  REQUIRE(cudaMallocAsync(&b, 256 * 1024, s) == cudaSuccess);
  REQUIRE(sim::reserve_capacity(128 * 1024, "NCCL buffers"));
  CHECK(cudaMalloc(&c, 256 * 1024) == cudaErrorMemoryAllocation);
  CHECK(c == nullptr);
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
  CHECK(!sim::reserve_capacity(200000, "NCCL buffers"));
  REQUIRE(cudaMalloc(&c, 128 * 1024) == cudaSuccess);  // exactly the rest
  REQUIRE(cudaFree(c) == cudaSuccess);
  sim::release_capacity(128 * 1024);
  REQUIRE(cudaFreeAsync(b, s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  REQUIRE(cudaMalloc(&c, 512 * 1024) == cudaSuccess);  // all of it back
  REQUIRE(cudaFree(c) == cudaSuccess);
  REQUIRE(cudaFree(a) == cudaSuccess);
}

TEST_CASE("cudart: an old driver fails every call with cudaErrorInsufficientDriver; no device",
          "[sim][cudart]") {
  ChildResult r = in_fresh_process("cudart child: old driver", "POLDER_SIM_DRIVER", "12040");
  INFO(r.err);
  CHECK(r.code == 0);
  r = in_fresh_process("cudart child: no device", "POLDER_SIM_DEVICES", "0");
  INFO(r.err);
  CHECK(r.code == 0);
}

TEST_CASE("cudart child: old driver", "[.cudart-child]") {
  int n = -1, driver = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  CHECK(e == cudaErrorInsufficientDriver);
  CHECK(std::string(cudaGetErrorName(e)) == "cudaErrorInsufficientDriver");
  CHECK(n == -1);
  void* p = nullptr;
  CHECK(cudaMalloc(&p, 16) == cudaErrorInsufficientDriver);
  CHECK(cudaStreamSynchronize(nullptr) == cudaErrorInsufficientDriver);
  REQUIRE(cudaDriverGetVersion(&driver) == cudaSuccess);
  CHECK(driver == 12040);
}

TEST_CASE("cudart child: no device", "[.cudart-child]") {
  int n = -1;
  CHECK(cudaGetDeviceCount(&n) == cudaErrorNoDevice);
  CHECK(std::string(cudaGetErrorName(cudaErrorNoDevice)) == "cudaErrorNoDevice");
}

TEST_CASE("cudart: many thousands of allocations", "[sim][cudart]") {
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> size(1, 20000);
  std::vector<std::pair<float*, size_t>> live;
  for (int i = 0; i < 6000; ++i) {
    if (!live.empty() && rng() % 3 == 0) {
      const size_t k = rng() % live.size();
      REQUIRE(cudaFree(live[k].first) == cudaSuccess);
      live[k] = live.back();
      live.pop_back();
    } else {
      float* p = nullptr;
      const size_t n = size(rng);
      REQUIRE(cudaMalloc(&p, n) == cudaSuccess);
      REQUIRE(reinterpret_cast<uintptr_t>(p) % 4096 == 0);
      live.push_back({p, n});
    }
  }
  // Disjoint: sorted by address, each ends before the next begins.
  std::sort(live.begin(), live.end());
  for (size_t i = 1; i < live.size(); ++i)
    CHECK(reinterpret_cast<uintptr_t>(live[i - 1].first) + live[i - 1].second <=
          reinterpret_cast<uintptr_t>(live[i].first));
  for (auto& [p, n] : live) REQUIRE(cudaFree(p) == cudaSuccess);
}

TEST_CASE("cudart: exit neither hangs nor crashes with work queued or a stream blocked for ever",
          "[sim][cudart]") {
  const auto start = std::chrono::steady_clock::now();
  const ChildResult r = in_fresh_process("cudart child: exit with work pending", "POLDER_SIM_MEMORY", "64M");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(r.err.find("All tests passed") != std::string::npos);
  CHECK(seconds < 20.0);
}

TEST_CASE("cudart child: exit with work pending", "[.cudart-child]") {
  static Gate& never = *new Gate;  // never opened (nor destroyed): the worker stays in its host function
  cudaStream_t blocked, queued;
  REQUIRE(cudaStreamCreate(&blocked) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&queued, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(blocked, wait_gate, &never) == cudaSuccess);
  float* x = nullptr;
  REQUIRE(cudaMalloc(&x, 1 << 20) == cudaSuccess);
  for (int i = 0; i < 50; ++i)
    REQUIRE(sim::launch(fill_index, cfg(64, 64, queued), x, 1 << 18) == cudaSuccess);
  CHECK(cudaStreamQuery(blocked) == cudaErrorNotReady);
}
