// GPipe: every micro-batch's forward, then every backward. Simple, and the stash holds
// all m micro-batches at the turn. Bubble (p-1)/(m+p-1) of stage time.
#include "policies/pipeline_schedules.hpp"

namespace troupe {

std::vector<pipeline_op> gpipe_schedule::order(int, int, int m) const {
  std::vector<pipeline_op> ops;
  for (int i = 0; i < m; ++i) ops.push_back({pass_kind::forward, i, 0});
  for (int i = 0; i < m; ++i) ops.push_back({pass_kind::backward, i, 0});
  return ops;
}

double gpipe_schedule::bubble_formula(int p, int m, const pipeline_timing&) const { return double(p - 1) / double(m + p - 1); }

int gpipe_schedule::peak_stash_formula(int, int, int m) const { return m; }

}  // namespace troupe
