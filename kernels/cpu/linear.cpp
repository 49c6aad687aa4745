#include "kernels/cpu/linear.hpp"

#include <omp.h>

#include <cstdint>

#include "kernels/cpu/gemm.hpp"

namespace troupe::kernels {
namespace {

// The calling OpenMP thread's share [begin, end) of n items: an even static split, so the
// partition depends only on n and the team size.
struct share {
  int begin, end;
  int size() const { return end - begin; }
};
share thread_share(int n) {
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
  return {int(n * tid / nth), int(n * (tid + 1) / nth)};
}

}  // namespace

void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC) {
  if (N == 0 || OC == 0) return;
#pragma omp parallel
  {
    const share rows = thread_share(N);
    if (rows.size() > 0) {
      float* out_rows = out + int64_t(rows.begin) * OC;
      // Like torch.addmm: out starts as the bias, the GEMM adds onto it (beta = 1).
      for (int n = 0; n < rows.size(); n++)
        for (int o = 0; o < OC; o++) out_rows[int64_t(n) * OC + o] = bias ? bias[o] : 0.0f;
      if (C > 0)
        sgemm(false, true, rows.size(), OC, C, 1.0f, inp + int64_t(rows.begin) * C, C, weight, C, 1.0f, out_rows, OC);
    }
  }
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC) {
  if (N == 0) return;  // no rows: nothing to write, nothing to accumulate
#pragma omp parallel
  {
    // dinp (N,C) = dout (N,OC) · weight (OC,C), split over rows of N.
    const share rows = thread_share(N);
    if (dinp && rows.size() > 0 && C > 0) {
      float* dinp_rows = dinp + int64_t(rows.begin) * C;
      if (OC > 0)
        sgemm(false, false, rows.size(), C, OC, 1.0f, dout + int64_t(rows.begin) * OC, OC, weight, C, 0.0f, dinp_rows,
              C);
      else  // no outputs: the input does not affect anything
        for (int64_t i = 0; i < int64_t(rows.size()) * C; i++) dinp_rows[i] = 0.0f;
    }
    // dweight (OC,C) += dout^T (OC,N) · inp (N,C), split over rows of OC; every element is
    // one sum over all N, so no partial sums cross threads.
    const share outs = thread_share(OC);
    if (dweight && outs.size() > 0 && C > 0)
      sgemm(true, false, outs.size(), C, N, 1.0f, dout + outs.begin, OC, inp, C, 1.0f, dweight + int64_t(outs.begin) * C,
            C);
    // dbias (OC) += column sums of dout, same split; each column is summed in row order
    // into a small stack buffer, then added once.
    if (dbias) {
      constexpr int kChunk = 64;
      for (int o0 = outs.begin; o0 < outs.end; o0 += kChunk) {
        const int width = outs.end - o0 < kChunk ? outs.end - o0 : kChunk;
        float sum[kChunk] = {};
        for (int n = 0; n < N; n++) {
          const float* dout_row = dout + int64_t(n) * OC + o0;
          for (int o = 0; o < width; o++) sum[o] += dout_row[o];
        }
        for (int o = 0; o < width; o++) dbias[o0 + o] += sum[o];
      }
    }
  }
}

}  // namespace troupe::kernels
