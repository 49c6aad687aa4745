#include "kernels/cpu/residual.hpp"
#include "kernels/cpu/parallel.hpp"

namespace troupe::kernels {

void residual_forward(float* out, const float* a, const float* b, int64_t N) {
#pragma omp parallel for schedule(static) if (N >= kParallelMinElements)
  for (int64_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void residual_backward(float* dresidual, const float* dbranch, int64_t N) {
#pragma omp parallel for schedule(static) if (N >= kParallelMinElements)
  for (int64_t i = 0; i < N; i++) dresidual[i] += dbranch[i];
}

}  // namespace troupe::kernels
