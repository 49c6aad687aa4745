// 1F1B (PipeDream-Flush): stage s runs p-s-1 warm-up forwards, then alternates one
// forward and one backward, then drains the remaining backwards. Same bubble as GPipe,
// (p-1)/(m+p-1), but a stage never holds more than p-s micro-batches.
#include <algorithm>

#include "policies/pipeline_schedules.hpp"

namespace troupe {

std::vector<pipeline_op> one_f_one_b_schedule::order(int s, int p, int m) const {
  int warmup = std::min(p - s - 1, m);
  std::vector<pipeline_op> ops;
  for (int i = 0; i < warmup; ++i) ops.push_back({pass_kind::forward, i, 0});
  for (int i = 0; i < m - warmup; ++i) {
    ops.push_back({pass_kind::forward, warmup + i, 0});
    ops.push_back({pass_kind::backward, i, 0});
  }
  for (int i = m - warmup; i < m; ++i) ops.push_back({pass_kind::backward, i, 0});
  return ops;
}

double one_f_one_b_schedule::bubble_formula(int p, int m, const pipeline_timing&) const {
  return double(p - 1) / double(m + p - 1);
}

int one_f_one_b_schedule::peak_stash_formula(int s, int p, int m) const { return std::min(p - s, m); }

}  // namespace troupe
