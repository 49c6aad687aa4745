#pragma once
// Optimizer updates with PyTorch 1.13 single-tensor semantics (foreach=False), and the two
// pieces of global-norm gradient clipping.
//
// N = number of elements of one flat parameter buffer (its gradient and optimizer state
// mirror its layout). step counts from 1. Scalars that torch keeps as Python floats
// (bias corrections, step size) are computed in double and rounded to float once, as
// torch does when it hands them to its float kernels. Any size may be 0.
#include <cstdint>

namespace troupe::kernels {

// torch.optim.SGD(momentum, weight_decay, nesterov), no dampening:
//   g = grad + wd * p;  buf = (step == 1 ? g : momentum * buf + g);
//   p -= lr * buf, or with nesterov p -= lr * (g + momentum * buf).
// momentum_buf may be nullptr when momentum == 0 (torch keeps no buffer then).
void sgd_momentum_update(float* param,         // (N)
                         float* momentum_buf,  // (N)
                         const float* grad,    // (N)
                         int64_t N, float lr, float momentum, float weight_decay, int step,
                         bool nesterov = false);

// torch.optim.AdamW (amsgrad=False):
//   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   denom = sqrt(v) / sqrt(1 - b2^step) + eps;  p -= lr / (1 - b1^step) * m / denom.
void adamw_update(float* param,       // (N)
                  float* m,           // (N)  first moment
                  float* v,           // (N)  second moment
                  const float* grad,  // (N)
                  int64_t N, float lr, float beta1, float beta2, float eps, float weight_decay,
                  int step);

// sum of x[i]^2 in double. The buffer is cut into a fixed number of chunks that depend on
// N alone, each summed in order, then the chunk sums added in order: the result is the
// same bit for bit for any thread count.
double sum_of_squares(const float* x,  // (N)
                      int64_t N);

// x *= s, e.g. by max_norm / (norm + 1e-6) when clipping.
void scale_inplace(float* x,  // (N)
                   float s, int64_t N);

// Combining gradient pushes into one update (parameter shards, policies/update_rule.hpp):
//   acc += weight * g.
void weighted_accumulate(float* acc,      // (N)
                         const float* g,  // (N)
                         float weight, int64_t N);

// DC-ASGD-a: first ms = decay * ms + (1 - decay) * g * g, then
//   acc += weight * (g + lambda0 / sqrt(ms + 1e-12) * g * g * (w_now - w_pulled)).
void delay_compensated_adaptive_accumulate(float* acc,             // (N)
                                           const float* g,         // (N)
                                           const float* w_now,     // (N)
                                           const float* w_pulled,  // (N)
                                           float* ms,              // (N) moving mean of g*g, updated
                                           float weight, float lambda0, float decay, int64_t N);

// The same with DC-ASGD's delay compensation of a gradient computed at w_pulled:
//   acc += weight * (g + lambda * g * g * (w_now - w_pulled)).
void delay_compensated_accumulate(float* acc,             // (N)
                                  const float* g,         // (N)
                                  const float* w_now,     // (N)
                                  const float* w_pulled,  // (N)
                                  float weight, float lambda, int64_t N);

}  // namespace troupe::kernels
