// The emulated device's cuBLASLt (tests/sim/include/cublasLt.h): descriptors, a one-algorithm heuristic and
// cublasLtMatmul as a cache-blocked CPU GEMM run on the stream's worker (sim::enqueue). Arguments are checked
// at the call, as cuBLASLt checks them, with a "sim: <function>: ..." line naming the bad value. Numerics:
// bf16, f16 and f32 inputs are widened to float, products and sums in float, summed in k order from 0, D =
// alpha acc + beta C in float, rounded to D's type to nearest even; f64 the same in double. C is not read
// when beta is 0. Single-threaded on purpose: several emulated ranks may share the CI machine's two cores.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

// ---- descriptor state, kept inside the toolkit's semi-opaque structs
// ----------------------------------------
constexpr uint32_t kLayoutMagic = 0x4c61794fu, kDescMagic = 0x44657363u, kPrefMagic = 0x50726566u,
                   kAlgoMagic = 0x416c676fu;

struct LayoutState {
  uint32_t magic;
  uint32_t type;
  int32_t order, batch_count;
  uint64_t rows, cols;
  int64_t ld, stride, plane_offset;
  uint32_t batch_mode;
};
struct DescState {
  uint32_t magic;
  int32_t compute, scale, pointer_mode, trans_a, trans_b, trans_c, fill_mode;
  uint32_t epilogue;
  const void* bias;
  int64_t bias_stride;
  int32_t bias_type;
};
struct PrefState {
  uint32_t magic, search_mode, reduction_mask;
  uint32_t align[4];  // A, B, C, D
  float max_waves;
  uint64_t max_workspace, impl_mask;
};
// What the heuristic chose the algorithm for; cublasLtMatmul refuses an algorithm for another problem.
struct AlgoState {
  uint32_t magic;
  int32_t compute, a_type, c_type;
  uint32_t align[4];
  uint64_t workspace;
};
static_assert(sizeof(LayoutState) <= sizeof(cublasLtMatrixLayoutOpaque_t));
static_assert(sizeof(DescState) <= sizeof(cublasLtMatmulDescOpaque_t));
static_assert(sizeof(PrefState) <= sizeof(cublasLtMatmulPreferenceOpaque_t));
static_assert(sizeof(AlgoState) <= sizeof(cublasLtMatmulAlgo_t));

template <typename S, typename O>
S* state(O* o, uint32_t magic) {
  if (!o) return nullptr;
  S* s = std::launder(reinterpret_cast<S*>(o->data));
  return s->magic == magic ? s : nullptr;
}

void report(const char* fn, const std::string& message) {
  std::fprintf(stderr, "sim: %s: %s\n", fn, message.c_str());
}

const char* type_name(int32_t t) {
  switch (t) {
    case CUDA_R_16F:
      return "CUDA_R_16F";
    case CUDA_R_16BF:
      return "CUDA_R_16BF";
    case CUDA_R_32F:
      return "CUDA_R_32F";
    case CUDA_R_64F:
      return "CUDA_R_64F";
    case CUDA_R_8I:
      return "CUDA_R_8I";
    case CUDA_R_32I:
      return "CUDA_R_32I";
    case CUDA_R_8F_E4M3:
      return "CUDA_R_8F_E4M3";
    case CUDA_R_8F_E5M2:
      return "CUDA_R_8F_E5M2";
    default:
      return "an unsupported cudaDataType";
  }
}

std::string type_str(int32_t t) {
  return std::string(type_name(t)) + " (" + std::to_string(t) + ")";
}

size_t type_size(int32_t t) {
  switch (t) {
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
    case CUDA_R_32F:
      return 4;
    case CUDA_R_64F:
      return 8;
    default:
      return 0;  // not a type the emulator computes with
  }
}

std::string compute_str(int32_t c) {
  const char* name = c == CUBLAS_COMPUTE_32F             ? "CUBLAS_COMPUTE_32F"
                     : c == CUBLAS_COMPUTE_32F_PEDANTIC  ? "CUBLAS_COMPUTE_32F_PEDANTIC"
                     : c == CUBLAS_COMPUTE_64F           ? "CUBLAS_COMPUTE_64F"
                     : c == CUBLAS_COMPUTE_64F_PEDANTIC  ? "CUBLAS_COMPUTE_64F_PEDANTIC"
                     : c == CUBLAS_COMPUTE_32F_FAST_TF32 ? "CUBLAS_COMPUTE_32F_FAST_TF32"
                                                         : "compute type";
  return std::string(name) + " (" + std::to_string(c) + ")";
}

// Copies an attribute value of the toolkit's size in or out (cuBLASLt: INVALID_VALUE on a size mismatch).
cublasStatus_t set_value(const char* fn, const char* attr, void* field, size_t field_size, const void* buf,
                         size_t size) {
  if (!buf || size != field_size) {
    report(fn, std::string(attr) + ": sizeInBytes " + std::to_string(size) + " but the attribute is " +
                   std::to_string(field_size) + " bytes" + (buf ? "" : " (buf is null)"));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  std::memcpy(field, buf, size);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t get_value(const char* fn, const char* attr, const void* field, size_t field_size, void* buf,
                         size_t size, size_t* written) {
  if (size == 0) {
    if (!written) {
      report(fn, std::string(attr) + ": sizeInBytes 0 and sizeWritten null");
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    *written = field_size;
    return CUBLAS_STATUS_SUCCESS;
  }
  if (!buf || size != field_size) {
    report(fn, std::string(attr) + ": sizeInBytes " + std::to_string(size) + " but the attribute is " +
                   std::to_string(field_size) + " bytes");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  std::memcpy(buf, field, size);
  if (written) *written = size;
  return CUBLAS_STATUS_SUCCESS;
}

#define SIM_LT_FIELD(attr, field)                                        \
  case attr:                                                             \
    return set ? set_value(fn, #attr, &(field), sizeof(field), in, size) \
               : get_value(fn, #attr, &(field), sizeof(field), out, size, written)

cublasStatus_t layout_attribute(const char* fn, bool set, LayoutState* s, cublasLtMatrixLayoutAttribute_t a,
                                const void* in, void* out, size_t size, size_t* written) {
  if (!s) {
    report(fn, "matLayout is null or not a layout created by cublasLtMatrixLayoutCreate");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  switch (a) {
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_TYPE, s->type);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_ORDER, s->order);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_ROWS, s->rows);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_COLS, s->cols);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_LD, s->ld);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, s->batch_count);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, s->stride);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET, s->plane_offset);
    SIM_LT_FIELD(CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, s->batch_mode);
  }
  report(fn, "unknown cublasLtMatrixLayoutAttribute_t " + std::to_string(static_cast<int>(a)));
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t desc_attribute(const char* fn, bool set, DescState* s, cublasLtMatmulDescAttributes_t a,
                              const void* in, void* out, size_t size, size_t* written) {
  if (!s) {
    report(fn, "matmulDesc is null or not a descriptor created by cublasLtMatmulDescCreate");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  switch (a) {
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, s->compute);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_SCALE_TYPE, s->scale);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_POINTER_MODE, s->pointer_mode);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_TRANSA, s->trans_a);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_TRANSB, s->trans_b);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_TRANSC, s->trans_c);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_FILL_MODE, s->fill_mode);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_EPILOGUE, s->epilogue);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_BIAS_POINTER, s->bias);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, s->bias_stride);
    SIM_LT_FIELD(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, s->bias_type);
  }
  report(fn, "cublasLtMatmulDescAttributes_t " + std::to_string(static_cast<int>(a)) +
                 " is not one the emulator knows");
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t pref_attribute(const char* fn, bool set, PrefState* s, cublasLtMatmulPreferenceAttributes_t a,
                              const void* in, void* out, size_t size, size_t* written) {
  if (!s) {
    report(fn, "pref is null or not a preference created by cublasLtMatmulPreferenceCreate");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  switch (a) {
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_SEARCH_MODE, s->search_mode);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, s->max_workspace);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, s->reduction_mask);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, s->align[0]);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, s->align[1]);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, s->align[2]);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, s->align[3]);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, s->max_waves);
    SIM_LT_FIELD(CUBLASLT_MATMUL_PREF_IMPL_MASK, s->impl_mask);
  }
  report(fn, "unknown cublasLtMatmulPreferenceAttributes_t " + std::to_string(static_cast<int>(a)));
  return CUBLAS_STATUS_INVALID_VALUE;
}

#undef SIM_LT_FIELD

// ---- the problem: cuBLASLt's checks of descriptors and layouts
// ----------------------------------------------
struct Problem {
  int32_t compute, a_type, c_type;
  bool trans_a, trans_b;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc, ldd, stride_a, stride_b, stride_c, stride_d;
};

std::string shape(const char* name, const LayoutState& l) {
  return std::string(name) + " " + std::to_string(l.rows) + " x " + std::to_string(l.cols) + " (ld " +
         std::to_string(l.ld) + ")";
}

// Fills `p` or reports the first thing cuBLASLt would refuse.
cublasStatus_t check_problem(const char* fn, const DescState* d, const LayoutState* const* l, Problem& p) {
  static const char* const names[4] = {"Adesc", "Bdesc", "Cdesc", "Ddesc"};
  if (!d) {
    report(fn, "computeDesc is null or not a descriptor created by cublasLtMatmulDescCreate");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (int i = 0; i < 4; ++i) {
    if (!l[i]) {
      report(fn, std::string(names[i]) + " is null or not a layout created by cublasLtMatrixLayoutCreate");
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (l[i]->order != CUBLASLT_ORDER_COL || l[i]->plane_offset != 0 ||
        l[i]->batch_mode != CUBLASLT_BATCH_MODE_STRIDED) {
      report(fn, std::string(names[i]) + ": order " + std::to_string(l[i]->order) + ", plane offset " +
                     std::to_string(l[i]->plane_offset) + ", batch mode " + std::to_string(l[i]->batch_mode) +
                     ": the emulator has column-major strided layouts only (CUBLASLT_ORDER_COL)");
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
  }
  const LayoutState &A = *l[0], &B = *l[1], &C = *l[2], &D = *l[3];
  const bool f64 = d->compute == CUBLAS_COMPUTE_64F || d->compute == CUBLAS_COMPUTE_64F_PEDANTIC;
  const bool f32 = d->compute == CUBLAS_COMPUTE_32F || d->compute == CUBLAS_COMPUTE_32F_PEDANTIC;
  if (!f64 && !f32) {
    report(fn, "compute type " + compute_str(d->compute) +
                   " is not supported by the emulator (CUBLAS_COMPUTE_32F[_PEDANTIC], "
                   "CUBLAS_COMPUTE_64F[_PEDANTIC])");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d->scale != (f64 ? CUDA_R_64F : CUDA_R_32F)) {
    report(fn, "scale type " + type_str(d->scale) + " with compute type " + compute_str(d->compute));
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d->pointer_mode != CUBLASLT_POINTER_MODE_HOST) {
    report(fn, "pointer mode " + std::to_string(d->pointer_mode) +
                   ": the emulator takes alpha and beta from host memory only (CUBLASLT_POINTER_MODE_HOST)");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    report(fn,
           "epilogue " + std::to_string(d->epilogue) + ": the emulator has CUBLASLT_EPILOGUE_DEFAULT only");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  for (int32_t t : {d->trans_a, d->trans_b})
    if (t != CUBLAS_OP_N && t != CUBLAS_OP_T && t != CUBLAS_OP_C) {
      report(fn, "transpose " + std::to_string(t) + " is not CUBLAS_OP_N, CUBLAS_OP_T or CUBLAS_OP_C");
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  if (d->trans_c != CUBLAS_OP_N) {
    report(fn,
           "CUBLASLT_MATMUL_DESC_TRANSC " + std::to_string(d->trans_c) + ": only CUBLAS_OP_N is supported");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // Types: cuBLASLt's table for these compute types.
  const int32_t at = static_cast<int32_t>(A.type), ct = static_cast<int32_t>(C.type);
  const bool half_in = at == CUDA_R_16F || at == CUDA_R_16BF;
  const bool types_ok =
      B.type == A.type && D.type == C.type &&
      (f64 ? at == CUDA_R_64F && ct == CUDA_R_64F
           : (at == CUDA_R_32F && ct == CUDA_R_32F) || (half_in && (ct == at || ct == CUDA_R_32F)));
  if (!types_ok) {
    report(fn, "A " + type_str(at) + ", B " + type_str(static_cast<int32_t>(B.type)) + ", C " + type_str(ct) +
                   ", D " + type_str(static_cast<int32_t>(D.type)) + " with " + compute_str(d->compute) +
                   " is not a supported combination");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  p.compute = d->compute;
  p.a_type = at;
  p.c_type = ct;
  p.trans_a = d->trans_a != CUBLAS_OP_N;
  p.trans_b = d->trans_b != CUBLAS_OP_N;
  // Shapes: op(A) m x k, op(B) k x n, C and D m x n.
  p.m = static_cast<int64_t>(D.rows);
  p.n = static_cast<int64_t>(D.cols);
  const int64_t a_rows = static_cast<int64_t>(p.trans_a ? A.cols : A.rows);
  p.k = static_cast<int64_t>(p.trans_a ? A.rows : A.cols);
  const int64_t b_rows = static_cast<int64_t>(p.trans_b ? B.cols : B.rows);
  const int64_t b_cols = static_cast<int64_t>(p.trans_b ? B.rows : B.cols);
  const std::string ops = std::string(" (TRANSA ") + (p.trans_a ? "T" : "N") + ", TRANSB " +
                          (p.trans_b ? "T" : "N") + "; " + shape("A", A) + ", " + shape("B", B) + ", " +
                          shape("C", C) + ", " + shape("D", D) + ")";
  if (C.rows != D.rows || C.cols != D.cols) {
    report(fn, "C and D differ in shape" + ops);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (a_rows != p.m) {
    report(fn, "op(A) has " + std::to_string(a_rows) + " rows but D has m = " + std::to_string(p.m) + ops);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (b_cols != p.n) {
    report(fn, "op(B) has " + std::to_string(b_cols) + " columns but D has n = " + std::to_string(p.n) + ops);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (b_rows != p.k) {
    report(fn, "op(A) has k = " + std::to_string(p.k) + " columns but op(B) has " + std::to_string(b_rows) +
                   " rows" + ops);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (p.k == 0) {
    report(fn, "k = 0: cuBLASLt needs k >= 1" + ops);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t need = std::max<int64_t>(1, static_cast<int64_t>(l[i]->rows));
    if (l[i]->ld < need) {
      report(fn, std::string(names[i]) + ": ld " + std::to_string(l[i]->ld) + " < rows " +
                     std::to_string(l[i]->rows) + ops);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (l[i]->batch_count != D.batch_count || l[i]->batch_count < 1) {
      report(fn, std::string(names[i]) + ": batch count " + std::to_string(l[i]->batch_count) +
                     " but Ddesc's is " + std::to_string(D.batch_count));
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (l[i]->batch_count > 1 && l[i]->stride < 0) {
      report(fn, std::string(names[i]) + ": negative strided batch offset " + std::to_string(l[i]->stride));
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  p.batch = D.batch_count;
  // D's batches must not overlap: writes of one batch would race with another's on the device.
  const int64_t d_extent = p.n == 0 ? 0 : D.ld * (p.n - 1) + p.m;
  if (p.batch > 1 && p.m > 0 && p.n > 0 && D.stride < d_extent) {
    report(fn, "Ddesc: strided batch offset " + std::to_string(D.stride) + " < " + std::to_string(d_extent) +
                   " elements of one batch: the " + std::to_string(p.batch) + " batches of D overlap");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  p.lda = A.ld, p.ldb = B.ld, p.ldc = C.ld, p.ldd = D.ld;
  const bool batched = p.batch > 1;
  p.stride_a = batched ? A.stride : 0, p.stride_b = batched ? B.stride : 0;
  p.stride_c = batched ? C.stride : 0, p.stride_d = batched ? D.stride : 0;
  return CUBLAS_STATUS_SUCCESS;
}

// ---- the GEMM
// -----------------------------------------------------------------------------------------------
inline float widen(float v) {
  return v;
}
inline double widen(double v) {
  return v;
}
inline float widen(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
inline float widen(__half v) {
  return __half2float(v);
}
template <typename T, typename S>
T narrow(S v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else
    return static_cast<T>(v);
}

struct Job {
  Problem p;
  const void *A, *B, *C;
  void* D;
  double alpha, beta;
};

// Blocking: a panel of NB output columns accumulates over the k blocks in order; within it op(B)'s KB x NB
// block is widened once and op(A)'s KB x MB blocks one after another. The micro-kernel keeps an MR x NR tile
// of sums in registers (a fixed-size loop the compiler vectorises over rows), so each sum sees its k terms in
// order.
constexpr int64_t MB = 64, NB = 128, KB = 256, MR = 16, NR = 4;

template <typename S>
void micro_kernel(const S* ap, const S* bp, int64_t kb, S* acc, int64_t ld_acc) {
  S c[NR][MR];
  for (int64_t j = 0; j < NR; ++j)
    for (int64_t i = 0; i < MR; ++i) c[j][i] = acc[j * ld_acc + i];
  for (int64_t q = 0; q < kb; ++q) {
    const S* a = ap + q * MB;
    const S* b = bp + q * NR;
    for (int64_t j = 0; j < NR; ++j)
      for (int64_t i = 0; i < MR; ++i) c[j][i] += a[i] * b[j];
  }
  for (int64_t j = 0; j < NR; ++j)
    for (int64_t i = 0; i < MR; ++i) acc[j * ld_acc + i] = c[j][i];
}

template <typename T, typename TC, typename S>
void gemm_batch(const Problem& p, const T* A, const T* B, const TC* C, TC* D, S alpha, S beta) {
  const int64_t m_pad = (p.m + MR - 1) / MR * MR;
  std::vector<S> acc(static_cast<size_t>(m_pad * NB));  // (m_pad, NB) column-major: the panel's sums
  std::vector<S> ap(static_cast<size_t>(KB * MB));      // op(A) block, [q][i]
  std::vector<S> bp(static_cast<size_t>(KB * NB));      // op(B) block, [j / NR][q][j % NR]
  for (int64_t j0 = 0; j0 < p.n; j0 += NB) {
    const int64_t nb = std::min(NB, p.n - j0), nb_pad = (nb + NR - 1) / NR * NR;
    std::fill(acc.begin(), acc.end(), S(0));
    for (int64_t k0 = 0; k0 < p.k; k0 += KB) {
      const int64_t kb = std::min(KB, p.k - k0);
      for (int64_t j = 0; j < nb_pad; ++j)
        for (int64_t q = 0; q < kb; ++q) {
          S v = 0;
          if (j < nb) {
            const int64_t col = j0 + j, row = k0 + q;
            v = widen(p.trans_b ? B[col + row * p.ldb] : B[row + col * p.ldb]);
          }
          bp[static_cast<size_t>(((j / NR) * KB + q) * NR + j % NR)] = v;
        }
      for (int64_t i0 = 0; i0 < m_pad; i0 += MB) {
        const int64_t mb = std::min(MB, m_pad - i0);
        for (int64_t q = 0; q < kb; ++q)
          for (int64_t i = 0; i < mb; ++i) {
            const int64_t row = i0 + i, col = k0 + q;
            S v = 0;
            if (row < p.m) v = widen(p.trans_a ? A[col + row * p.lda] : A[row + col * p.lda]);
            ap[static_cast<size_t>(q * MB + i)] = v;
          }
        for (int64_t j = 0; j < nb_pad; j += NR)
          for (int64_t i = 0; i < mb; i += MR)
            micro_kernel(ap.data() + i, bp.data() + (j / NR) * KB * NR, kb, acc.data() + j * m_pad + i0 + i,
                         m_pad);
      }
    }
    for (int64_t j = 0; j < nb; ++j) {
      const S* sums = acc.data() + j * m_pad;
      TC* d = D + (j0 + j) * p.ldd;
      if (beta == S(0)) {  // C is not read (it may be uninitialised)
        for (int64_t i = 0; i < p.m; ++i) d[i] = narrow<TC>(alpha * sums[i]);
      } else {
        const TC* c = C + (j0 + j) * p.ldc;
        for (int64_t i = 0; i < p.m; ++i) d[i] = narrow<TC>(alpha * sums[i] + beta * S(widen(c[i])));
      }
    }
  }
}

template <typename T, typename TC, typename S>
void run_typed(const Job& job) {
  const Problem& p = job.p;
  for (int64_t b = 0; b < p.batch; ++b)
    gemm_batch<T, TC, S>(
        p, static_cast<const T*>(job.A) + b * p.stride_a, static_cast<const T*>(job.B) + b * p.stride_b,
        static_cast<const TC*>(job.C) + b * p.stride_c, static_cast<TC*>(job.D) + b * p.stride_d,
        static_cast<S>(job.alpha), static_cast<S>(job.beta));
}

void run(const Job& job) {
  const int32_t a = job.p.a_type, c = job.p.c_type;
  if (a == CUDA_R_64F) return run_typed<double, double, double>(job);
  if (a == CUDA_R_32F) return run_typed<float, float, float>(job);
  if (a == CUDA_R_16BF)
    return c == CUDA_R_32F ? run_typed<__nv_bfloat16, float, float>(job)
                           : run_typed<__nv_bfloat16, __nv_bfloat16, float>(job);
  return c == CUDA_R_32F ? run_typed<__half, float, float>(job) : run_typed<__half, __half, float>(job);
}

// Device memory check of one operand at execution time: its first and last element (as a kernel reading it
// would fault on either).
bool on_device(const char* name, const void* base, int64_t ld, int64_t rows, int64_t cols, int64_t stride,
               int64_t batch, size_t elem) {
  const int64_t last = (batch - 1) * stride + (cols - 1) * ld + rows - 1;
  const char* first = static_cast<const char*>(base);
  const char* end = first + last * static_cast<int64_t>(elem);
  if (sim::is_device_pointer(first) && sim::is_device_pointer(end)) return true;
  char where[64];
  std::snprintf(where, sizeof where, "%p",
                sim::is_device_pointer(first) ? static_cast<const void*>(end) : base);
  sim::device_fault(cudaErrorIllegalAddress, "cublasLtMatmul",
                    std::string(name) + " reaches " + where + ", which is not device memory (" +
                        std::to_string(rows) + " x " + std::to_string(cols) + ", ld " + std::to_string(ld) +
                        ", batch " + std::to_string(batch) + ")");
  return false;
}

void execute(const Job& job) {
  const Problem& p = job.p;
  const size_t ea = type_size(p.a_type), ec = type_size(p.c_type);
  const bool ok =
      on_device("A", job.A, p.lda, p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, p.stride_a, p.batch, ea) &&
      on_device("B", job.B, p.ldb, p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n, p.stride_b, p.batch, ea) &&
      (job.beta == 0 || on_device("C", job.C, p.ldc, p.m, p.n, p.stride_c, p.batch, ec)) &&
      on_device("D", job.D, p.ldd, p.m, p.n, p.stride_d, p.batch, ec);
  if (ok) run(job);
}

const char* const kOperand[4] = {"A", "B", "C", "D"};

}  // namespace

extern "C" {

struct cublasLtContext {
  uint32_t magic = 0x4c74436fu;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (!handle) {
    report("cublasLtCreate", "lightHandle is null");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->magic = 0;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

// The toolkit's strings (cublasLtGetStatusString of cuBLAS 12/13).
const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "error detected trying to check the license";
  }
  return "unknown error";
}

size_t cublasLtGetVersion(void) {
  return CUBLAS_VERSION;
}

size_t cublasLtGetCudartVersion(void) {
  return 13000;
}

cublasStatus_t cublasLtGetProperty(libraryPropertyType type, int* value) {
  if (!value) return CUBLAS_STATUS_INVALID_VALUE;
  switch (type) {
    case MAJOR_VERSION:
      *value = CUBLAS_VER_MAJOR;
      return CUBLAS_STATUS_SUCCESS;
    case MINOR_VERSION:
      *value = CUBLAS_VER_MINOR;
      return CUBLAS_STATUS_SUCCESS;
    case PATCH_LEVEL:
      *value = CUBLAS_VER_PATCH;
      return CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!layout) {
    report("cublasLtMatrixLayoutCreate", "matLayout is null");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  auto* o = new cublasLtMatrixLayoutOpaque_t{};
  new (o->data) LayoutState{kLayoutMagic,
                            static_cast<uint32_t>(type),
                            CUBLASLT_ORDER_COL,
                            1,
                            rows,
                            cols,
                            ld,
                            0,
                            0,
                            CUBLASLT_BATCH_MODE_STRIDED};
  *layout = o;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  if (LayoutState* s = state<LayoutState>(layout, kLayoutMagic)) s->magic = 0;
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr, const void* buf,
                                                size_t size) {
  return layout_attribute("cublasLtMatrixLayoutSetAttribute", true, state<LayoutState>(layout, kLayoutMagic),
                          attr, buf, nullptr, size, nullptr);
}

cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr, void* buf, size_t size,
                                                size_t* written) {
  return layout_attribute("cublasLtMatrixLayoutGetAttribute", false, state<LayoutState>(layout, kLayoutMagic),
                          attr, nullptr, buf, size, written);
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (!desc) {
    report("cublasLtMatmulDescCreate", "matmulDesc is null");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  auto* o = new cublasLtMatmulDescOpaque_t{};
  new (o->data) DescState{kDescMagic,
                          compute,
                          scale,
                          CUBLASLT_POINTER_MODE_HOST,
                          CUBLAS_OP_N,
                          CUBLAS_OP_N,
                          CUBLAS_OP_N,
                          CUBLAS_FILL_MODE_FULL,
                          CUBLASLT_EPILOGUE_DEFAULT,
                          nullptr,
                          0,
                          -1};
  *desc = o;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  if (DescState* s = state<DescState>(desc, kDescMagic)) s->magic = 0;
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  return desc_attribute("cublasLtMatmulDescSetAttribute", true, state<DescState>(desc, kDescMagic), attr, buf,
                        nullptr, size, nullptr);
}

cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              void* buf, size_t size, size_t* written) {
  return desc_attribute("cublasLtMatmulDescGetAttribute", false, state<DescState>(desc, kDescMagic), attr,
                        nullptr, buf, size, written);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) {
    report("cublasLtMatmulPreferenceCreate", "pref is null");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  auto* o = new cublasLtMatmulPreferenceOpaque_t{};
  // The toolkit's defaults: no workspace, 256-byte alignment of every matrix assumed.
  new (o->data)
      PrefState{kPrefMagic, CUBLASLT_SEARCH_BEST_FIT, ~0u, {256, 256, 256, 256}, 0.0f, 0, ~uint64_t(0)};
  *pref = o;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  if (PrefState* s = state<PrefState>(pref, kPrefMagic)) s->magic = 0;
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t size) {
  return pref_attribute("cublasLtMatmulPreferenceSetAttribute", true, state<PrefState>(pref, kPrefMagic),
                        attr, buf, nullptr, size, nullptr);
}

cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, void* buf,
                                                    size_t size, size_t* written) {
  return pref_attribute("cublasLtMatmulPreferenceGetAttribute", false, state<PrefState>(pref, kPrefMagic),
                        attr, nullptr, buf, size, written);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* count) {
  const char* fn = "cublasLtMatmulAlgoGetHeuristic";
  if (!handle || handle->magic != cublasLtContext{}.magic) {
    report(fn, "lightHandle is null or destroyed");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  const PrefState* pref = state<PrefState>(preference, kPrefMagic);
  if (!pref || requested <= 0 || !results || !count) {
    report(fn,
           std::string(!pref ? "preference is null or not created by cublasLtMatmulPreferenceCreate"
                       : !results || !count ? "heuristicResultsArray or returnAlgoCount is null"
                                            : "requestedAlgoCount " + std::to_string(requested) + " <= 0"));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const LayoutState* l[4] = {state<LayoutState>(a, kLayoutMagic), state<LayoutState>(b, kLayoutMagic),
                             state<LayoutState>(c, kLayoutMagic), state<LayoutState>(d, kLayoutMagic)};
  Problem p{};
  if (const cublasStatus_t st = check_problem(fn, state<DescState>(desc, kDescMagic), l, p);
      st != CUBLAS_STATUS_SUCCESS)
    return st;
  AlgoState algo{kAlgoMagic, p.compute, p.a_type, p.c_type, {}, 0};
  for (int i = 0; i < 4; ++i) {
    const uint32_t elem = static_cast<uint32_t>(type_size(i < 2 ? p.a_type : p.c_type));
    if (pref->align[i] < elem) {  // no kernel reads elements at less than their own alignment
      report(fn, std::string("CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_") + kOperand[i] + "_BYTES " +
                     std::to_string(pref->align[i]) + " is below the " + std::to_string(elem) +
                     "-byte element size: no algorithm");
      *count = 0;
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    algo.align[i] = std::min<uint32_t>(pref->align[i], 16);  // what a 16-byte vector-load kernel would need
  }
  cublasLtMatmulHeuristicResult_t r{};
  new (r.algo.data) AlgoState(algo);
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  results[0] = r;
  *count = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a, const void* B,
                              cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_size,
                              cudaStream_t stream) {
  const char* fn = "cublasLtMatmul";
  (void)workspace;
  if (!handle || handle->magic != cublasLtContext{}.magic) {
    report(fn, "lightHandle is null or destroyed");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  const LayoutState* l[4] = {state<LayoutState>(a, kLayoutMagic), state<LayoutState>(b, kLayoutMagic),
                             state<LayoutState>(c, kLayoutMagic), state<LayoutState>(d, kLayoutMagic)};
  Job job{};
  Problem& p = job.p;
  if (const cublasStatus_t st = check_problem(fn, state<DescState>(desc, kDescMagic), l, p);
      st != CUBLAS_STATUS_SUCCESS)
    return st;
  if (!alpha || !beta) {
    report(fn, std::string(alpha ? "beta" : "alpha") + " is null");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool f64 = p.a_type == CUDA_R_64F;
  job.alpha = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  job.beta = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  job.A = A, job.B = B, job.C = C, job.D = D;
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  const void* ptr[4] = {A, B, C, D};
  for (int i = 0; i < 4; ++i)
    if (!ptr[i] && (i != 2 || job.beta != 0)) {
      report(fn, std::string(kOperand[i]) + " is null" + (i == 2 ? " and beta is not 0" : ""));
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  if (C == D && (p.ldc != p.ldd || p.stride_c != p.stride_d)) {
    report(fn, "in place (C == D) but ldc " + std::to_string(p.ldc) + " / ldd " + std::to_string(p.ldd) +
                   ", strided batch offsets " + std::to_string(p.stride_c) + " / " +
                   std::to_string(p.stride_d) + ": Cdesc must equal Ddesc");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // Alignment each pointer needs: the algorithm's, or without one the element size.
  uint32_t need[4] = {static_cast<uint32_t>(type_size(p.a_type)), static_cast<uint32_t>(type_size(p.a_type)),
                      static_cast<uint32_t>(type_size(p.c_type)), static_cast<uint32_t>(type_size(p.c_type))};
  if (algo) {
    AlgoState copy;  // the caller's algo may be anywhere (it is the toolkit's trivially copyable struct)
    std::memcpy(&copy, algo->data, sizeof copy);
    const AlgoState* s = copy.magic == kAlgoMagic ? &copy : nullptr;
    if (!s || s->compute != p.compute || s->a_type != p.a_type || s->c_type != p.c_type) {
      report(fn, s ? "algo was chosen for " + compute_str(s->compute) + ", A " + type_str(s->a_type) +
                         ", C " + type_str(s->c_type) + ", not this problem's " + compute_str(p.compute) +
                         ", A " + type_str(p.a_type) + ", C " + type_str(p.c_type)
                   : std::string("algo is not one cublasLtMatmulAlgoGetHeuristic returned"));
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (workspace_size < s->workspace) {
      report(fn, "workspaceSizeInBytes " + std::to_string(workspace_size) + " < the algorithm's " +
                     std::to_string(s->workspace));
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (int i = 0; i < 4; ++i) need[i] = s->align[i];
  }
  for (int i = 0; i < 4; ++i) {
    if ((i == 2 && job.beta == 0 && !C) || reinterpret_cast<uintptr_t>(ptr[i]) % need[i] == 0) continue;
    char where[32];
    std::snprintf(where, sizeof where, "%p", ptr[i]);
    report(fn, std::string(kOperand[i]) + " " + where + " is not " + std::to_string(need[i]) +
                   "-byte aligned" +
                   (algo ? ", as the algorithm was chosen for (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_" +
                               std::string(kOperand[i]) + "_BYTES)"
                         : std::string(", its element size")));
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const cudaError_t e = sim::enqueue(stream, fn, [job] { execute(job); });
  if (e != cudaSuccess) {
    report(fn, std::string("the stream refused the work: ") + cudaGetErrorString(e));
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
