#pragma once
// Layer normalisation over the channels of each row, as torch.nn.LayerNorm:
// out = (inp - mean) * rstd * weight + bias, with the biased variance and eps = 1e-5.
//
// N = rows (batch × time, flattened), C = channels.
// Accumulation rule: parameter gradients (dweight, dbias) use `+=`; activation gradients
// (dinp) use `=`. Any size may be 0.
namespace troupe::kernels {

void layernorm_forward(float* out,           // (N,C)
                       float* mean,          // (N)  saved for backward
                       float* rstd,          // (N)  1/sqrt(var + eps), saved for backward
                       const float* inp,     // (N,C)
                       const float* weight,  // (C)
                       const float* bias,    // (C)
                       int N, int C);

void layernorm_backward(float* dinp,          // (N,C)  =
                        float* dweight,       // (C)    +=
                        float* dbias,         // (C)    +=
                        const float* dout,    // (N,C)
                        const float* inp,     // (N,C)
                        const float* weight,  // (C)
                        const float* mean,    // (N)
                        const float* rstd,    // (N)
                        int N, int C);

}  // namespace troupe::kernels
