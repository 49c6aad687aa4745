#include "kernels/cpu/crossentropy.hpp"
#include "kernels/cpu/parallel.hpp"

#include <cmath>

namespace troupe::kernels {

void crossentropy_forward(float* losses, float* probs, const float* logits,
                          const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (int64_t(N) * V >= kParallelMinElements)
  for (int n = 0; n < N; n++) {
    const float* x = logits + int64_t(n) * V;
    float* p = probs + int64_t(n) * V;
    // Subtract the row max so exp never overflows.
    float max = -INFINITY;
    for (int v = 0; v < V; v++) max = x[v] > max ? x[v] : max;
    double sum = 0.0;  // in double: V may be tens of thousands of terms
    for (int v = 0; v < V; v++) {
      p[v] = std::exp(x[v] - max);
      sum += p[v];
    }
    const float inv_sum = float(1.0 / sum);
    for (int v = 0; v < V; v++) p[v] *= inv_sum;
    // From the log-softmax, not log(p), so a tiny probability does not round to log(0).
    losses[n] = float(std::log(sum) - double(x[targets[n]] - max));
  }
}

void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss,
                           int N, int V) {
#pragma omp parallel for schedule(static) if (int64_t(N) * V >= kParallelMinElements)
  for (int n = 0; n < N; n++) {
    const float* p = probs + int64_t(n) * V;
    float* dx = dlogits + int64_t(n) * V;
    for (int v = 0; v < V; v++) dx[v] = dloss * p[v];
    dx[targets[n]] = dloss * (p[targets[n]] - 1.0f);
  }
}

}  // namespace troupe::kernels
