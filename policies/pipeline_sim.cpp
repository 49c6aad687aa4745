#include "policies/pipeline_sim.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace troupe {

pipeline_sim_result simulate_pipeline(const pipeline_schedule& schedule, int p, int m, pipeline_timing timing) {
  const int v = schedule.chunks(), V = p * v;
  const bool split = schedule.splits_backward();
  const size_t ops_per_stage = size_t((split ? 3 : 2) * m * v);
  std::vector<std::vector<pipeline_op>> orders;
  for (int s = 0; s < p; ++s) orders.push_back(schedule.order(s, p, m));
  // Finish times per (kind, virtual stage, micro); negative = not done.
  std::vector<double> done[3];
  for (auto& d : done) d.assign(size_t(V) * size_t(m), -1);
  auto at = [&](int vs, int micro) { return size_t(vs) * size_t(m) + size_t(micro); };
  auto fail = [&](const std::string& what, int s) {
    throw std::logic_error(schedule.name() + ": " + what + " on stage " + std::to_string(s));
  };
  for (int s = 0; s < p; ++s) {
    if (orders[size_t(s)].size() != ops_per_stage)
      throw std::logic_error(schedule.name() + ": stage " + std::to_string(s) + " has " +
                             std::to_string(orders[size_t(s)].size()) + " ops, expected " +
                             std::to_string(ops_per_stage));
  }
  const double dur[3] = {timing.t_fwd / v, (split ? timing.t_bwd : timing.t_bwd + timing.t_wgt) / v, timing.t_wgt / v};
  pipeline_sim_result r;
  r.peak_stash.assign(size_t(p), 0);
  std::vector<size_t> next(size_t(p), 0);
  std::vector<double> free_at(size_t(p), 0), busy(size_t(p), 0);
  std::vector<int> stash(size_t(p), 0);
  size_t remaining = ops_per_stage * size_t(p);
  while (remaining > 0) {
    bool progressed = false;
    for (int s = 0; s < p; ++s) {
      while (next[size_t(s)] < orders[size_t(s)].size()) {
        const pipeline_op& op = orders[size_t(s)][next[size_t(s)]];
        if (op.micro < 0 || op.micro >= m || op.chunk < 0 || op.chunk >= v) fail("op out of range", s);
        if (op.kind == pass_kind::weight && !split) fail("weight op in a schedule that does not split backward", s);
        const int vs = op.chunk * p + s, k = int(op.kind);
        if (done[k][at(vs, op.micro)] >= 0) fail("repeated op", s);
        // What the op waits for: (kind, virtual stage) pairs of the same micro-batch.
        std::pair<pass_kind, int> needs[2];
        int n = 0;
        if (op.kind == pass_kind::forward) {
          if (vs > 0) needs[n++] = {pass_kind::forward, vs - 1};
        } else if (op.kind == pass_kind::backward) {
          needs[n++] = {pass_kind::forward, vs};
          if (vs < V - 1) needs[n++] = {pass_kind::backward, vs + 1};
        } else {
          needs[n++] = {pass_kind::backward, vs};
        }
        double ready = free_at[size_t(s)];
        bool ok = true;
        for (int i = 0; i < n; ++i) {
          double t = done[int(needs[i].first)][at(needs[i].second, op.micro)];
          ok = ok && t >= 0;
          ready = std::max(ready, t);
        }
        if (!ok) break;
        free_at[size_t(s)] = ready + dur[k];
        busy[size_t(s)] += dur[k];
        done[k][at(vs, op.micro)] = ready + dur[k];
        if (op.kind == pass_kind::forward)
          r.peak_stash[size_t(s)] = std::max(r.peak_stash[size_t(s)], ++stash[size_t(s)]);
        else if (op.kind == (split ? pass_kind::weight : pass_kind::backward))
          --stash[size_t(s)];  // the op that frees the micro-batch's activations
        ++next[size_t(s)];
        --remaining;
        progressed = true;
      }
    }
    if (!progressed) throw std::logic_error(schedule.name() + ": the stage orders deadlock");
  }
  r.makespan = *std::max_element(free_at.begin(), free_at.end());
  double total_busy = 0;
  for (double b : busy) total_busy += b;
  r.bubble = r.makespan > 0 ? 1.0 - total_busy / (double(p) * r.makespan) : 0;
  return r;
}

}  // namespace troupe
