#pragma once
// Softmax cross-entropy, fused with the softmax of the logits:
// probs = softmax(logits), losses[n] = -log probs[n, targets[n]].
//
// N = rows (batch × time, flattened), V = vocab; every target must lie in [0, V).
// Accumulation rule: activation gradients (dlogits) use `=`; there are no parameters.
// Any size may be 0.
#include <cstdint>

namespace troupe::kernels {

void crossentropy_forward(float* losses,           // (N)
                          float* probs,            // (N,V)  saved for backward
                          const float* logits,     // (N,V)
                          const int32_t* targets,  // (N)
                          int N, int V);

// dlogits = dloss * (probs - onehot(targets)). dloss is d(total loss)/d(each row's loss),
// the same for every row: 1/N when the total is the mean over rows.
void crossentropy_backward(float* dlogits,          // (N,V)  =
                           const float* probs,      // (N,V)
                           const int32_t* targets,  // (N)
                           float dloss,
                           int N, int V);

}  // namespace troupe::kernels
