#include "kernels/cpu/head.hpp"

#include "kernels/cpu/linear.hpp"

namespace troupe::kernels {

void head_forward(float* logits, const float* inp, const float* wte, int N, int C, int V) {
  linear_forward(logits, inp, wte, /*bias=*/nullptr, N, C, V);
}

void head_backward(float* dinp, float* dwte, const float* dlogits, const float* inp,
                   const float* wte, int N, int C, int V) {
  linear_backward(dinp, dwte, /*dbias=*/nullptr, dlogits, inp, wte, N, C, V);
}

}  // namespace troupe::kernels
