#pragma once
// Elementwise activations: ReLU, and GELU in its tanh form, exactly as PyTorch's
// gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
//
// N = number of elements (any shape, flattened).
// Accumulation rule: activation gradients (dinp) use `=`; there are no parameters.
// Any size may be 0.
#include <cstdint>

namespace troupe::kernels {

void relu_forward(float* out,          // (N)
                  const float* inp,    // (N)
                  int64_t N);
void relu_backward(float* dinp,        // (N)  =
                   const float* inp,   // (N)
                   const float* dout,  // (N)
                   int64_t N);

void gelu_forward(float* out,          // (N)
                  const float* inp,    // (N)
                  int64_t N);
void gelu_backward(float* dinp,        // (N)  =
                   const float* inp,   // (N)
                   const float* dout,  // (N)
                   int64_t N);

}  // namespace troupe::kernels
