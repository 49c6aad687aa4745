#pragma once
// One single-threaded row-major sgemm for our kernels: C = alpha op(A) op(B) + beta C,
// op(X) = X or X^T, C (M,N), op(A) (M,K), op(B) (K,N). Runs oneDNN's dnnl_sgemm when the
// build found libdnnl (TROUPE_HAVE_DNNL), else OpenBLAS's cblas_sgemm. On this project's
// VM oneDNN is 2.0-2.3x faster at the MLP's shapes than OpenBLAS's Haswell kernels
// (docs/benchmarks.md); both are checked against the same double-precision references.
namespace troupe::kernels {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc);

// "oneDNN" or "OpenBLAS": which library sgemm calls.
const char* sgemm_library();

}  // namespace troupe::kernels
