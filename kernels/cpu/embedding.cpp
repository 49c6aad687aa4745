#include "kernels/cpu/embedding.hpp"

#include <omp.h>

namespace troupe::kernels {

void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                       int B, int T, int C) {
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    const float* tok_row = wte + int64_t(tokens[bt]) * C;
    const float* pos_row = wpe + int64_t(bt % T) * C;
    float* out_row = out + int64_t(bt) * C;
    for (int c = 0; c < C; c++) out_row[c] = tok_row[c] + pos_row[c];
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C) {
  // dwpe: position t gathers from every batch row, in batch order.
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    float* dpos_row = dwpe + int64_t(t) * C;
    for (int b = 0; b < B; b++) {
      const float* dout_row = dout + (int64_t(b) * T + t) * C;
      for (int c = 0; c < C; c++) dpos_row[c] += dout_row[c];
    }
  }
  // dwte: a token may repeat, so threads split the channels instead of the tokens; each
  // thread walks all tokens in order over its own columns, and every element of dwte sees
  // its additions in one fixed order, with no atomics.
#pragma omp parallel
  {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int c0 = int(C * tid / nth), c1 = int(C * (tid + 1) / nth);
    for (int bt = 0; bt < B * T && c0 < c1; bt++) {
      float* dtok_row = dwte + int64_t(tokens[bt]) * C;
      const float* dout_row = dout + int64_t(bt) * C;
      for (int c = c0; c < c1; c++) dtok_row[c] += dout_row[c];
    }
  }
}

}  // namespace troupe::kernels
