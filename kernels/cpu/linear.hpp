#pragma once
// Fully connected layer: out = inp · weight^T + bias, the layout of torch.nn.Linear.
//
// N = rows (batch × time, flattened), C = input channels, OC = output channels.
// Accumulation rule: parameter gradients (dweight, dbias) use `+=`, so gradient
// accumulation over micro-batches works; activation gradients (dinp) use `=`.
//
// GEMMs go to kernels::sgemm (oneDNN where installed, else OpenBLAS; single-threaded:
// the caller sets openblas_set_num_threads(1) and one OpenMP thread per team level), one
// call per OpenMP thread on a disjoint, static block of rows, so there is one thread pool
// and the result depends only on the sizes and the thread count. Any size may be 0.
namespace troupe::kernels {

void linear_forward(float* out,           // (N,OC)
                    const float* inp,     // (N,C)
                    const float* weight,  // (OC,C)
                    const float* bias,    // (OC), or nullptr for none
                    int N, int C, int OC);

// Either part may be skipped: dinp = nullptr for the parameter gradients alone, dweight
// = dbias = nullptr for the input gradient alone (zero-bubble schedules split them).
void linear_backward(float* dinp,          // (N,C)   =, or nullptr to skip
                     float* dweight,       // (OC,C)  +=, or nullptr to skip
                     float* dbias,         // (OC)    +=, or nullptr for no bias
                     const float* dout,    // (N,OC)
                     const float* inp,     // (N,C)
                     const float* weight,  // (OC,C)
                     int N, int C, int OC);

}  // namespace troupe::kernels
