#include "kernels/cpu/activation.hpp"

#include <cmath>

namespace troupe::kernels {
namespace {
// sqrt(2/pi) and the cubic coefficient of the tanh approximation.
constexpr float kGeluBeta = 0.7978845608028654f;
constexpr float kGeluKappa = 0.044715f;
}  // namespace

void relu_forward(float* out, const float* inp, int64_t N) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void relu_backward(float* dinp, const float* inp, const float* dout, int64_t N) {
  // The derivative at 0 is taken as 0, as in PyTorch.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) dinp[i] = inp[i] > 0.0f ? dout[i] : 0.0f;
}

void gelu_forward(float* out, const float* inp, int64_t N) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float x = inp[i];
    const float inner = kGeluBeta * (x + kGeluKappa * x * x * x);
    out[i] = 0.5f * x * (1.0f + std::tanh(inner));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t N) {
  // The same steps as PyTorch's GeluBackward (tanh): d/dx [0.5 x (1 + tanh u)]
  //   = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,  du/dx = beta (1 + 3 kappa x^2).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float x = inp[i];
    const float x_sq = x * x;
    const float tanh_inner = std::tanh(kGeluBeta * (x + kGeluKappa * x_sq * x));
    const float left_derivative = 0.5f * (1.0f + tanh_inner);
    const float right_derivative = 0.5f * x * (1.0f - tanh_inner * tanh_inner) * kGeluBeta *
                                   (1.0f + 3.0f * kGeluKappa * x_sq);
    dinp[i] = dout[i] * (left_derivative + right_derivative);
  }
}

}  // namespace troupe::kernels
