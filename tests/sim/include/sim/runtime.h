// The CPU emulator of the CUDA subset polder's tensor-core kernels use (tests only; see docs/perf/NOTES.md,
// "Emulated tensor-core tests"). Modelled from the CUDA programming guide and the PTX ISA, not from polder's
// kernels: every CUDA thread of a block is a coroutine on one OS thread; __syncthreads is a block barrier and
// each warp collective (shuffles, ldmatrix, mma.sync) a barrier of the warp's 32 lanes only, so warps run
// apart between collectives as on hardware; blocks run one after another. Anything the model cannot honour (a
// deadlock, divergent collectives, a bad shared-memory access) prints one "sim: ..." line and aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;

// The built-in variables of the running emulated thread (set by the scheduler at every switch).
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace sim {

// Prints "sim: <message>" and aborts (the emulated program has done something the hardware would not allow).
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// What ran, for tests that must know the tensor-core paths were taken.
struct Counters {
  uint64_t launches = 0, blocks = 0, syncthreads = 0, shfl = 0, ldmatrix = 0, mma = 0, cp_async = 0,
           cp_async_dropped = 0;  // copies still pending when their thread exited
};
Counters& counters();

// ---- launches --------------------------------------------------------------------------------------------
// Runs body() as every thread of every block: grid blocks in x, y, z order, `smem` bytes of dynamic shared
// memory per block (poisoned with 0xFF bytes at the start of each block). Checks the configuration as the
// driver does (at most 1024 threads, grid.y/z <= 65535, dynamic shared memory above 48 KiB only after
// cudaFuncSetAttribute for `kernel` and at most kMaxSmemOptin); a bad one runs nothing and returns an error
// that cudaGetLastError reports.
constexpr size_t kMaxSmemOptin = 166912;  // sm_80 (A100): 163 KiB per block
cudaError_t launch_impl(const void* kernel, const std::function<void()>& body, dim3 grid, dim3 block,
                        size_t smem);
template <typename K, typename F>
cudaError_t launch(K* kernel, F&& body, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return launch_impl(reinterpret_cast<const void*>(kernel), std::function<void()>(body), grid, block, smem);
}
void set_max_dynamic_smem(const void* kernel, int bytes);
cudaError_t take_last_error();
void set_last_error(cudaError_t e);

// ---- block and warp synchronisation ----------------------------------------------------------------------
void syncthreads();
// __shfl_*_sync on a value of at most 8 bytes, carried as bits. kind: 0 xor, 1 idx, 2 down, 3 up.
uint64_t shfl_bits(unsigned mask, uint64_t bits, int kind, int arg, int width);

// ---- shared memory ---------------------------------------------------------------------------------------
// The block's dynamic shared memory (extern __shared__), and a static __shared__ array registering itself
// (first registration in a block poisons it). Shared addresses (__cvta_generic_to_shared): dynamic memory
// from 0, static arrays from 0x100000; any other pointer fails.
void* dynamic_shared();
void shared_static(void* p, size_t bytes);
uint32_t cvta_shared(const void* p);

// ---- tensor-core and async-copy instructions
// ---------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lanes 8i..8i+7 give the 16-byte row addresses of
// matrix i; register i of lane l holds matrix i's elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1), or
// with .trans (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4); the lower-indexed element in the low half.
void ldmatrix(uint32_t* r, int num, uint32_t smem_addr, bool trans);
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, d = a b + d over the warp (fragment
// layouts in sim_runtime.cpp). Products are exact in fp32; they are added to c in k order.
enum class MmaType { bf16, f16 };
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, MmaType type);
// cp.async.cg.shared.global [dst], [src], 16, src_size: src_size bytes copied, the rest of 16 zero-filled.
// On hardware the copy lands at some point between issue and the cp.async.wait_group that retires its group;
// the emulator takes one of the two extremes: at the wait (the default: a read before the wait sees the
// destination's previous, poisoned bytes, so a missing wait shows) or at issue (a copy overwriting data that
// other warps still read, i.e. a missing barrier before the issue, shows). Copies never committed or waited
// for are dropped.
enum class CopyTiming { at_wait, at_issue };
void set_copy_timing(CopyTiming timing);
void cp_async16(uint32_t smem_addr, const void* src, int src_size);
void cp_async_commit();
void cp_async_wait(int pending);

}  // namespace sim
