#pragma once
// Causal multi-head self-attention on a fused qkv buffer (the output of GPT-2's c_attn).
//
// B = batch, T = sequence length, C = channels, NH = heads, hs = C / NH head size.
// qkv holds, for each token, [q (C) | k (C) | v (C)]; head h uses channels
// [h*hs, (h+1)*hs) of each — the same as splitting c_attn's output into q, k, v and
// viewing each as (B,T,NH,hs) in PyTorch. Scores are scaled by 1/sqrt(hs) and masked so
// token t attends to tokens j <= t.
// Accumulation rule: activation gradients (dqkv) use `=`; there are no parameters.
//
// Each (b,h) pair is one OpenMP work item (static schedule) running single-threaded
// OpenBLAS sgemms on strided views of qkv (row stride 3C) and out (row stride C); the
// caller sets openblas_set_num_threads(1). Any size may be 0.
namespace troupe::kernels {

void attention_forward(float* out,        // (B,T,C)
                       float* att,        // (B,NH,T,T)  softmax probabilities, saved for
                                          //             backward; entries j > t are 0
                       const float* qkv,  // (B,T,3C)
                       int B, int T, int C, int NH);

void attention_backward(float* dqkv,        // (B,T,3C)    =
                        float* datt,        // (B,NH,T,T)  scratch
                        const float* dout,  // (B,T,C)
                        const float* qkv,   // (B,T,3C)
                        const float* att,   // (B,NH,T,T)  from attention_forward
                        int B, int T, int C, int NH);

}  // namespace troupe::kernels
