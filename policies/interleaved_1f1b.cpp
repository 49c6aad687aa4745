// Interleaved 1F1B (Megatron-LM's virtual pipeline): each stage holds v model chunks
// (stage s holds virtual stages s, s+p, ..., s+(v-1)p), so a micro-batch passes every
// stage v times with 1/v of the work each time. Micro-batches go in groups of p: unit k
// of a stage's forward stream is micro-batch (k / pv) p + k % p on chunk (k / p) % v;
// backwards walk the chunks in reverse. Warm-up is 2(p-s-1) + (v-1)p units, then one
// forward and one backward alternate. Bubble (p-1)/(vm+p-1): v times smaller than
// 1F1B's, for (v-1)p more stashed chunk activations on stage 0. Needs m % p == 0.
#include <algorithm>

#include "policies/pipeline_schedules.hpp"
#include "runtime/check.hpp"

namespace troupe {

std::vector<pipeline_op> interleaved_1f1b_schedule::order(int s, int p, int m) const {
  if (m % p != 0)
    throw input_error("schedule 'interleaved' needs micro-batches divisible by the stages: got " + std::to_string(m) +
                      " micro-batches for " + std::to_string(p) + " stages");
  const int v = v_, total = m * v;
  auto micro = [&](int k) { return (k / (p * v)) * p + k % p; };
  auto fwd = [&](int k) { return pipeline_op{pass_kind::forward, micro(k), (k / p) % v}; };
  auto bwd = [&](int k) { return pipeline_op{pass_kind::backward, micro(k), v - 1 - (k / p) % v}; };
  int warmup = std::min(2 * (p - s - 1) + (v - 1) * p, total);
  std::vector<pipeline_op> ops;
  for (int k = 0; k < warmup; ++k) ops.push_back(fwd(k));
  for (int k = 0; k < total - warmup; ++k) {
    ops.push_back(fwd(warmup + k));
    ops.push_back(bwd(k));
  }
  for (int k = total - warmup; k < total; ++k) ops.push_back(bwd(k));
  return ops;
}

double interleaved_1f1b_schedule::bubble_formula(int p, int m, const pipeline_timing&) const {
  return double(p - 1) / double(v_ * m + p - 1);
}

int interleaved_1f1b_schedule::peak_stash_formula(int s, int p, int m) const {
  int total = m * v_;
  return std::min(2 * (p - s - 1) + (v_ - 1) * p + 1, total);
}

}  // namespace troupe
