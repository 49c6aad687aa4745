#pragma once
// The weight-tied output head: logits = inp · wte^T, reusing the token embedding table
// as the output projection (GPT-2). A thin layer over linear, without bias.
//
// N = rows (batch × time, flattened), C = channels, V = vocab.
// Accumulation rule: parameter gradients use `+=` (dwte here accumulates into the same
// gradient buffer as embedding_backward's dwte); activation gradients (dinp) use `=`.
// Any size may be 0.
namespace troupe::kernels {

void head_forward(float* logits,      // (N,V)
                  const float* inp,   // (N,C)
                  const float* wte,   // (V,C)
                  int N, int C, int V);

void head_backward(float* dinp,            // (N,C)  =, or nullptr to skip
                   float* dwte,            // (V,C)  +=, or nullptr to skip
                   const float* dlogits,   // (N,V)
                   const float* inp,       // (N,C)
                   const float* wte,       // (V,C)
                   int N, int C, int V);

}  // namespace troupe::kernels
