#include "kernels/cpu/layernorm.hpp"
#include "kernels/cpu/parallel.hpp"

#include <cmath>
#include <cstdint>

namespace troupe::kernels {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  constexpr float kEps = 1e-5f;
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kParallelMinElements)
  for (int n = 0; n < N; n++) {
    const float* x = inp + int64_t(n) * C;
    float* y = out + int64_t(n) * C;
    // Two passes (mean, then the mean of squared deviations) rather than E[x^2] - E[x]^2,
    // which cancels badly when the mean is large.
    float sum = 0.0f;
    for (int c = 0; c < C; c++) sum += x[c];
    const float m = C > 0 ? sum / C : 0.0f;
    float var = 0.0f;
    for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
    const float s = 1.0f / std::sqrt((C > 0 ? var / C : 0.0f) + kEps);
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  if (N == 0 || C == 0) return;
  // dinp, one row at a time: with xhat = (x - mean) * rstd and g = dout * weight,
  // dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)).
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kParallelMinElements)
  for (int n = 0; n < N; n++) {
    const float* x = inp + int64_t(n) * C;
    const float* dy = dout + int64_t(n) * C;
    float* dx = dinp + int64_t(n) * C;
    const float m = mean[n], s = rstd[n];
    float g_mean = 0.0f, g_xhat_mean = 0.0f;
    for (int c = 0; c < C; c++) {
      const float g = dy[c] * weight[c];
      g_mean += g;
      g_xhat_mean += g * (x[c] - m) * s;
    }
    g_mean /= C;
    g_xhat_mean /= C;
    for (int c = 0; c < C; c++) {
      const float xhat = (x[c] - m) * s;
      dx[c] = s * (dy[c] * weight[c] - g_mean - xhat * g_xhat_mean);
    }
  }
  // dweight and dbias sum over rows. Each thread owns a block of columns and walks the
  // rows in order, so every sum has one fixed order whatever the thread count.
  constexpr int kChunk = 64;
  const int chunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kParallelMinElements)
  for (int chunk = 0; chunk < chunks; chunk++) {
    const int c0 = chunk * kChunk;
    const int width = C - c0 < kChunk ? C - c0 : kChunk;
    float dw[kChunk] = {}, db[kChunk] = {};
    for (int n = 0; n < N; n++) {
      const float* x = inp + int64_t(n) * C + c0;
      const float* dy = dout + int64_t(n) * C + c0;
      const float m = mean[n], s = rstd[n];
      for (int c = 0; c < width; c++) {
        dw[c] += dy[c] * (x[c] - m) * s;
        db[c] += dy[c];
      }
    }
    for (int c = 0; c < width; c++) {
      dweight[c0 + c] += dw[c];
      dbias[c0 + c] += db[c];
    }
  }
}

}  // namespace troupe::kernels
