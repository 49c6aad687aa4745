#pragma once
// The residual join: out = a + b, where a skip path and a branch meet.
//
// N = number of elements (any shape, flattened).
// Accumulation rule: activation gradients use `=`, parameter gradients `+=` — with one
// documented exception here: residual_backward adds (`+=`) the branch's gradient into the
// residual stream's gradient, because the join is where two activation gradients meet
// and the stream's gradient already holds the skip path's share. Any size may be 0.
#include <cstdint>

namespace troupe::kernels {

void residual_forward(float* out,       // (N)
                      const float* a,   // (N)
                      const float* b,   // (N)
                      int64_t N);

void residual_backward(float* dresidual,      // (N)  += (the exception, see above)
                       const float* dbranch,  // (N)
                       int64_t N);

}  // namespace troupe::kernels
