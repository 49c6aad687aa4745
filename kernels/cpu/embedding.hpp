#pragma once
// Token plus position embedding: out[b,t] = wte[tokens[b,t]] + wpe[t] (GPT-2).
//
// B = batch, T = sequence length (T <= maxT, the rows of wpe), C = channels,
// V = vocab (the rows of wte); every token must lie in [0, V).
// Accumulation rule: parameter gradients (dwte, dwpe) use `+=`; dwte is shared with the
// weight-tied head (head_backward). There is no activation gradient. Any size may be 0.
#include <cstdint>

namespace troupe::kernels {

void embedding_forward(float* out,             // (B,T,C)
                       const int32_t* tokens,  // (B,T)
                       const float* wte,       // (V,C)
                       const float* wpe,       // (maxT,C)
                       int B, int T, int C);

void embedding_backward(float* dwte,            // (V,C)     +=
                        float* dwpe,            // (maxT,C)  +=, rows [0,T) touched
                        const float* dout,      // (B,T,C)
                        const int32_t* tokens,  // (B,T)
                        int B, int T, int C);

}  // namespace troupe::kernels
