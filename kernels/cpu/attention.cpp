#include "kernels/cpu/attention.hpp"

#include <cblas.h>  // cblas_sgemm from OpenBLAS, called single-threaded

#include <cmath>
#include <cstdint>

namespace troupe::kernels {

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  if (B == 0 || T == 0 || NH == 0) return;
  const int hs = C / NH;
  const int C3 = 3 * C;
  const float scale = hs > 0 ? 1.0f / std::sqrt(float(hs)) : 1.0f;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; bh++) {
    const int b = bh / NH, h = bh % NH;
    const float* q = qkv + int64_t(b) * T * C3 + h * hs;  // (T,hs), row stride 3C
    const float* k = q + C;                               // (T,hs), row stride 3C
    const float* v = q + 2 * C;                           // (T,hs), row stride 3C
    float* a = att + int64_t(bh) * T * T;                 // (T,T)
    float* o = out + int64_t(b) * T * C + h * hs;         // (T,hs), row stride C

    // a = scale * q k^T. The whole square is computed; the masked half is dropped below.
    if (hs > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f,
                  a, T);
    else
      for (int64_t i = 0; i < int64_t(T) * T; i++) a[i] = 0.0f;

    // Row-wise softmax over j <= t, less the row max; the masked entries become 0.
    for (int t = 0; t < T; t++) {
      float* row = a + int64_t(t) * T;
      float max = row[0];
      for (int j = 1; j <= t; j++) max = row[j] > max ? row[j] : max;
      float sum = 0.0f;
      for (int j = 0; j <= t; j++) {
        row[j] = std::exp(row[j] - max);
        sum += row[j];
      }
      const float inv_sum = 1.0f / sum;
      for (int j = 0; j <= t; j++) row[j] *= inv_sum;
      for (int j = t + 1; j < T; j++) row[j] = 0.0f;
    }

    // o = a v (the zeros above the diagonal drop the future tokens).
    if (hs > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, v, C3, 0.0f,
                  o, C);
  }
}

void attention_backward(float* dqkv, float* datt, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH) {
  if (B == 0 || T == 0 || NH == 0) return;
  const int hs = C / NH;
  const int C3 = 3 * C;
  const float scale = hs > 0 ? 1.0f / std::sqrt(float(hs)) : 1.0f;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; bh++) {
    const int b = bh / NH, h = bh % NH;
    const float* q = qkv + int64_t(b) * T * C3 + h * hs;  // (T,hs), row stride 3C
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* dq = dqkv + int64_t(b) * T * C3 + h * hs;      // (T,hs), row stride 3C
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* a = att + int64_t(bh) * T * T;           // (T,T)
    float* da = datt + int64_t(bh) * T * T;               // (T,T)
    const float* dO = dout + int64_t(b) * T * C + h * hs; // (T,hs), row stride C

    // Through o = a v: da = dO v^T, dv = a^T dO.
    if (hs > 0) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dO, C, v, C3, 0.0f,
                  da, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, dO, C, 0.0f,
                  dv, C3);
    } else {
      for (int64_t i = 0; i < int64_t(T) * T; i++) da[i] = 0.0f;
    }

    // Through the softmax, in place: ds[t,j] = a[t,j] (da[t,j] - sum_k a[t,k] da[t,k]),
    // times the score scale so that da becomes the gradient of q k^T; masked entries are 0.
    for (int t = 0; t < T; t++) {
      const float* a_row = a + int64_t(t) * T;
      float* da_row = da + int64_t(t) * T;
      float dot = 0.0f;
      for (int j = 0; j <= t; j++) dot += a_row[j] * da_row[j];
      for (int j = 0; j <= t; j++) da_row[j] = scale * a_row[j] * (da_row[j] - dot);
      for (int j = t + 1; j < T; j++) da_row[j] = 0.0f;
    }

    // Through s = q k^T: dq = ds k, dk = ds^T q.
    if (hs > 0) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, da, T, k, C3, 0.0f,
                  dq, C3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, da, T, q, C3, 0.0f,
                  dk, C3);
    }
  }
}

}  // namespace troupe::kernels
