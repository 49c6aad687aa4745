// ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): backward is split into B,
// the input gradient the previous stage waits for, and W, the weight gradient nobody
// waits for. Stage s runs 1F1B's warm-up of p-s forwards, then repeats B, W, F, but
// keeps its W passes s micro-batches behind its B passes; the s deferred W passes fill
// the idle time at the end of the step, where 1F1B's stages wait for late backwards.
//
// Bubble: only forwards and input gradients are on the critical path, so a stage idles
// (p-1) max(t_F, t_F + t_B - t_W) per step instead of (p-1)(t_F + t_B + t_W): a third of
// 1F1B's when the three passes take equal time. Exact (the replay in pipeline_sim shows
// it) for m >= p and t_B <= t_F. Memory: a micro-batch's activations live until its W,
// so every stage holds min(p, m) micro-batches: 1F1B's peak (stage 0's), now on every
// stage.
#include <algorithm>

#include "policies/pipeline_schedules.hpp"

namespace troupe {

std::vector<pipeline_op> zero_bubble_h1_schedule::order(int s, int p, int m) const {
  const int lag = s;  // W passes run this many micro-batches behind B passes
  std::vector<pipeline_op> ops;
  int f = 0, b = 0, w = 0;
  for (; f < std::min(p - s, m); ++f) ops.push_back({pass_kind::forward, f, 0});
  while (b < m) {
    ops.push_back({pass_kind::backward, b++, 0});
    for (; b - w > lag; ++w) ops.push_back({pass_kind::weight, w, 0});
    if (f < m) ops.push_back({pass_kind::forward, f++, 0});
  }
  for (; w < m; ++w) ops.push_back({pass_kind::weight, w, 0});
  return ops;
}

double zero_bubble_h1_schedule::bubble_formula(int p, int m, const pipeline_timing& t) const {
  double idle = (p - 1) * std::max(t.t_fwd, t.t_fwd + t.t_bwd - t.t_wgt);
  double work = m * (t.t_fwd + t.t_bwd + t.t_wgt);
  return idle + work > 0 ? idle / (idle + work) : 0;
}

int zero_bubble_h1_schedule::peak_stash_formula(int, int p, int m) const { return std::min(p, m); }

}  // namespace troupe
