#include "kernels/cpu/gemm.hpp"

#ifdef TROUPE_HAVE_DNNL
#include <dnnl.h>
#endif
#include <cblas.h>

namespace troupe::kernels {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc) {
#ifdef TROUPE_HAVE_DNNL
  // Row-major like ours; returns an error only for bad arguments, which our callers never pass.
  dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha,
              A, lda, B, ldb, beta, C, ldc);
#endif
}

const char* sgemm_library() {
#ifdef TROUPE_HAVE_DNNL
  return "oneDNN";
#else
  return "OpenBLAS";
#endif
}

}  // namespace troupe::kernels
