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
  uint64_t mbar_phases = 0, mbar_blocked_waits = 0, tma = 0, wgmma = 0, setmaxnreg = 0;  // sm_90a
};
Counters& counters();

// ---- launches --------------------------------------------------------------------------------------------
// Runs body() as every thread of every block: grid blocks in x, y, z order, `smem` bytes of dynamic shared
// memory per block (poisoned with 0xFF bytes at the start of each block). Checks the configuration as the
// driver does (at most 1024 threads, grid.y/z <= 65535, dynamic shared memory above 48 KiB only after
// cudaFuncSetAttribute for `kernel` and at most kMaxSmemOptin: check_launch_config); a bad one runs nothing
// and returns an error that cudaGetLastError reports. Synchronous, on the calling OS thread (which may differ
// from launch to launch: the scheduler keeps no per-OS-thread state); launches must not overlap
// (sim/cudart.h's stream workers take a device mutex around each). Kernel sources launch through sim::launch
// (sim/cudart.h), the emulator's own tests call launch_impl directly.
constexpr size_t kMaxSmemOptin = 166912;      // sm_80 (A100): 163 KiB per block
constexpr size_t kMaxSmemOptinSm90 = 232448;  // sm_90 (H100): 227 KiB per block
// The emulated device's compute capability: 9.0 (the runtime's H100 sets it: 227 KiB of shared memory per
// block, and the sm_90a instructions below) or 8.0 (set_arch(8): 163 KiB, for the sm_80 kernels' limits).
void set_arch(int major);
int arch_major();
size_t max_smem_optin();
// The SM count the device reports (cudaDevAttrMultiProcessorCount, cudaDeviceProp): 132 (H100 SXM) unless a
// test of a persistent grid sets fewer, so that its blocks loop over several tiles.
int sm_count();
void set_sm_count(int n);
// clock64(): a counter advancing by one per read.
uint64_t clock64();
cudaError_t launch_impl(const void* kernel, const std::function<void()>& body, dim3 grid, dim3 block,
                        size_t smem = 0);
void set_max_dynamic_smem(const void* kernel, int bytes);
// The driver's checks of a launch configuration, without running anything: cudaSuccess, or the error (and a
// "sim: launch rejected: ..." line on stderr) a bad grid, block or dynamic shared memory size gets.
cudaError_t check_launch_config(const void* kernel, dim3 grid, dim3 block, size_t smem);
cudaError_t take_last_error();
void set_last_error(cudaError_t e);

// ---- block and warp synchronisation ----------------------------------------------------------------------
void syncthreads();
// __shfl_*_sync on a value of at most 8 bytes, carried as bits. kind: 0 xor, 1 idx, 2 down, 3 up.
uint64_t shfl_bits(unsigned mask, uint64_t bits, int kind, int arg, int width);

// ---- shared memory ---------------------------------------------------------------------------------------
// The block's dynamic shared memory (extern __shared__), and a static __shared__ array registering itself
// (first registration in a block poisons it). Shared addresses (__cvta_generic_to_shared) lie in one window
// from 0, as on hardware (where they stay below 256 KiB, all a wgmma descriptor's 14-bit start field, addr >>
// 4, can address): the kernel's static arrays first, from 0 in the order their declarations first run in the
// launch, each at its declared alignment (at least 16 bytes); then the dynamic memory, at the next 1024-byte
// boundary (0 in a kernel without static arrays). The dynamic memory's address is fixed when the launch first
// needs it (a pointer into it converted, or an address outside every static array accessed); an array whose
// declaration first runs after that lies past the dynamic memory. Static arrays above 48 KiB in all, or with
// the dynamic memory above the device's opt-in limit, abort. Any other pointer fails.
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
// __syncwarp(): a barrier of the warp's 32 lanes (full mask only).
void syncwarp(unsigned mask);
// __ballot_sync (kind 0: bit l set where lane l's pred != 0), __any_sync (1), __all_sync (2): a collective of
// the warp's 32 lanes (full mask only), all lanes getting the same result.
unsigned vote(unsigned mask, int pred, int kind);
// __threadfence and its variants: no effect (a thread's stores are seen by every later load of the kernel, as
// threads switch only at barriers and collectives); checks that a kernel thread calls it.
void fence();

// ---- sm_90a (Hopper): mbarrier, TMA, wgmma, setmaxnreg ---------------------------------------------------
// mbarrier (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier"): an object of 8
// shared bytes with a current phase, a pending-arrival count (reset to the expected count when a phase
// completes) and a transaction count; the phase completes when both pending arrivals and the transaction
// count are zero. try_wait.parity p is true once the phase with parity p has completed (the current phase's
// parity differs from p; on a fresh barrier p = 1 is true at once). A false try_wait suspends the thread
// until the barrier completes a phase, so a wait that can never complete is a deadlock naming the barrier and
// the warps waiting on it. The emulator keeps the state beside shared memory (per block); an operation on an
// address never initialised in this block aborts.
void mbar_init(uint32_t bar, uint32_t count);
void mbar_arrive(uint32_t bar);
void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes);
bool mbar_try_wait(uint32_t bar, uint32_t parity);
// fence.mbarrier_init, fence.proxy.async, prefetch.tensormap: ordering and caching only (counted, no effect).
void fence_mbarrier_init();
void fence_proxy_async();
void prefetch_tensormap(const void* map);
// setmaxnreg.{inc,dec}.sync.aligned.u32: no effect on the emulated registers, but a collective of the whole
// warpgroup (128 threads, same variant and count, 24..256 in steps of 8).
void setmaxnreg(bool inc, int regs);
// cp.async.bulk.tensor.{1..5}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes: the box at
// coordinates c[0] (innermost) .. c[rank - 1] of the tensor map (from the emulator's cuTensorMapEncodeTiled)
// into shared memory at dst (128-byte aligned), elements outside the tensor zero-filled, the whole box's
// bytes completed on the mbarrier `bar`. The box is laid out densely (innermost dimension first) and, with a
// swizzled map, each byte address a is stored at a XOR ((a >> 7) & (span / 16 - 1)) << 4 (the 16-byte chunk
// within a span XOR the 128-byte row index modulo span / 16: CUDA driver API, CUtensorMapSwizzle). Timing:
// the copy lands, and completes its bytes, when the issuing thread next yields (waits, reaches a barrier or
// exits), not at issue: the issuing thread never sees its own copy before it waits.
void tma_load(uint32_t dst, const void* map, uint32_t bar, const int* c, int rank);
// wgmma (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"): a collective of the warpgroup's
// 128 threads. mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}: d (64 x N, f32; thread fragments of the PTX
// ISA's m64nNk16 D layout, N / 2 floats per thread) = A (64 x 16) B (16 x N) + (scale_d ? d : 0), A from the
// shared-memory descriptor da (a == nullptr) or from the four registers a of each thread (the m64nNk16 A
// register layout), B from the descriptor db; trans_a / trans_b: the operand is MN-major (imm-trans 1)
// instead of K-major. Descriptors (start, LBO, SBO, base offset, swizzle) are decoded and the canonical
// layouts addressed as the ISA's "Shared Memory Matrix Layout" describes; base offset must be 0 (aborts
// otherwise: not modelled). Exact fp32 products added in k order. commit_group and wait_group are warpgroup
// collectives too; fence has no effect. Timing (as for cp.async, one of the two extremes): by default the
// operation runs at the wait_group that retires its group, reading shared memory and writing d then (A
// registers are taken at issue), so a stage released or overwritten before that wait, or accumulators read
// before it, show; or, switchable, at issue. A block ending with operations not waited for aborts.
enum class WgmmaTiming { at_wait, at_issue };
void set_wgmma_timing(WgmmaTiming timing);
void wgmma(float* d, int n, uint64_t da, const uint32_t* a, uint64_t db, bool scale_d, bool trans_a,
           bool trans_b, MmaType type);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int pending);

}  // namespace sim
