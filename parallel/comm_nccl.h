// The NCCL backend of Comm (backend() "nccl"): the same interface and semantics as comm.h, over tensors on
// one CUDA device. MPI (or the single-process Comm) stays the bootstrap and the CPU path: rank 0 of a host
// Comm makes the NCCL unique id and broadcasts it, every rank joins with ncclCommInitRank, and split() is
// ncclCommSplit. Compiled with POLDER_HAVE_NCCL only; without it make_nccl_comm() throws polder::Error.
//
// Streams. Each NcclComm (sub-communicators too) owns a non-blocking communication stream on its device, at
// the highest priority so that its kernels get SMs while backward saturates the compute stream
// (polder::cuda::stream(device)). Every op is stream-ordered, the host never waits (barrier() excepted):
//   1. an event recorded on the compute stream, waited for by the comm stream: inputs written by kernels
//      enqueued before the call are complete before NCCL reads them;
//   2. the NCCL call(s) on the comm stream, then a done-event recorded there;
//   3. synchronous ops make the compute stream wait for the done-event before returning, so every kernel or
//      copy enqueued afterwards sees the result. An async op returns a Work: wait() makes the compute stream
//      wait for the done-event (and nothing else: avg is ncclAvg, there is no finishing step), test() is
//      cudaEventQuery (plus ncclCommGetAsyncError, so a failed peer is an error rather than a hang).
// Memory. Tensors are freed on the compute stream by the stream-ordered pool (cudaFreeAsync): a block may be
// reused by any allocation enqueued later on that stream. The comm stream must therefore be done with a
// tensor before the compute stream frees it. Sync ops make the compute stream wait before they return, so a
// caller dropping its tensors right away is safe; a Work holds its tensors (and any temporary) until wait()
// has made the compute stream wait (or its destructor did): every later free is ordered after the
// collective. Between posting and wait(), the compute stream must not write an async op's tensors (for
// all_reduce: the one tensor) -- the same contract as MPI. Inputs are read on the comm stream only after the
// compute stream reached the call, so writes enqueued before the call are always seen.
//
// Differences from the MPI backend, all within comm.h's semantics:
//   - counts are size_t: no chunking, set_max_chunk_elements() has no effect on NCCL calls;
//   - bf16/f16 reductions are NCCL's (accumulated in float); avg is ncclAvg (floating dtypes only);
//   - send/recv: NCCL has no tags. Messages between two ranks match in the order they are posted; the tag is
//     checked for range and otherwise ignored, so tagged schedules must post matching sends and receives in
//     the same order on both sides (polder's 1F1B and interleaved schedules do). Point-to-point ops of one
//     comm run in order on its stream, and a send may wait there until the peer's receive runs: two ranks
//     that each send to the other before receiving can deadlock (MPI's buffered sends hide this), so such
//     exchanges must alternate (even ranks send first) or receive first on one side. Sizes are not
//     exchanged: a send and its receive must have the same element count (MPI checks it, NCCL cannot);
//   - reduce_scatter_v is a group of ncclReduce calls, one per piece, rooted at the piece's owner: NCCL's
//     reduce-scatter needs equal counts, and padding every piece to the largest would send more bytes;
//   - overlapping in/out other than NCCL's in-place layouts go through a temporary on the comm stream.
// Errors: every NCCL and CUDA call is checked; the message names the op, the comm and NCCL's error string
// and last error. Destroying an NcclComm destroys its NCCL communicator, which waits until the peers' copies
// are quiescent: destroy communicators in the same order on every rank (scopes and Mesh members do). After an
// error the destructor aborts the communicator (ncclCommAbort) instead, so a failed rank does not wait.
#pragma once

#include <memory>
#include <string>

#include "parallel/comm.h"

namespace polder::parallel {

// Collective over `bootstrap` (a host Comm: "single" or "mpi"): an NCCL communicator of the same ranks (same
// rank numbers) on CUDA device `device` of this process. `name` defaults to the bootstrap's name. Counts the
// 128-byte id broadcast on the bootstrap. polder::Error when this build has no NCCL, the device does not
// exist, or NCCL fails (the message says which).
std::shared_ptr<Comm> make_nccl_comm(const std::shared_ptr<Comm>& bootstrap, int device,
                                     std::string name = "");

// The first asynchronous error (ncclCommGetAsyncError) of any live NCCL communicator of this process, as one
// line naming the comm and NCCL's error; "" when there is none (or no NCCL). A collective waiting for a dead
// peer spins on the GPU and never returns an error by itself: the trainer's watchdog polls this every few
// seconds and ends the job with the line instead of waiting out train.watchdog_s. Callable from any thread.
std::string nccl_async_error();

// Whether this build has the NCCL backend (POLDER_NCCL=ON with CUDA and NCCL found).
bool have_nccl();

// The communication stream (a cudaStream_t) of an NCCL comm, for profiler ranges and tests; polder::Error
// for another backend.
void* nccl_stream(const Comm& comm);

}  // namespace polder::parallel
