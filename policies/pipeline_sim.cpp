#include "policies/pipeline_sim.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace troupe {

pipeline_sim_result simulate_pipeline(const pipeline_schedule& schedule, int p, int m, pipeline_timing timing) {
  const int v = schedule.chunks(), V = p * v;
  std::vector<std::vector<pipeline_op>> orders;
  for (int s = 0; s < p; ++s) orders.push_back(schedule.order(s, p, m));
  // Finish times per (kind, virtual stage, micro); negative = not done.
  std::vector<double> fwd_done(size_t(V) * m, -1), bwd_done(size_t(V) * m, -1);
  auto at = [&](int vs, int micro) { return size_t(vs) * size_t(m) + size_t(micro); };
  for (int s = 0; s < p; ++s) {
    if (orders[s].size() != size_t(2 * m * v))
      throw std::logic_error(schedule.name() + ": stage " + std::to_string(s) + " has " +
                             std::to_string(orders[s].size()) + " ops, expected " + std::to_string(2 * m * v));
  }
  pipeline_sim_result r;
  r.peak_stash.assign(size_t(p), 0);
  std::vector<size_t> next(size_t(p), 0);
  std::vector<double> free_at(size_t(p), 0), busy(size_t(p), 0);
  std::vector<int> stash(size_t(p), 0);
  size_t remaining = size_t(2 * m * v * p);
  while (remaining > 0) {
    bool progressed = false;
    for (int s = 0; s < p; ++s) {
      while (next[size_t(s)] < orders[size_t(s)].size()) {
        const pipeline_op& op = orders[size_t(s)][next[size_t(s)]];
        if (op.micro < 0 || op.micro >= m || op.chunk < 0 || op.chunk >= v)
          throw std::logic_error(schedule.name() + ": op out of range on stage " + std::to_string(s));
        int vs = op.chunk * p + s;
        double ready = free_at[size_t(s)];
        bool ok = true;
        if (op.kind == pass_kind::forward) {
          if (fwd_done[at(vs, op.micro)] >= 0) throw std::logic_error(schedule.name() + ": forward repeated");
          if (vs > 0) ok = fwd_done[at(vs - 1, op.micro)] >= 0, ready = std::max(ready, fwd_done[at(vs - 1, op.micro)]);
        } else {
          if (bwd_done[at(vs, op.micro)] >= 0) throw std::logic_error(schedule.name() + ": backward repeated");
          ok = fwd_done[at(vs, op.micro)] >= 0;
          ready = std::max(ready, fwd_done[at(vs, op.micro)]);
          if (vs < V - 1) ok = ok && bwd_done[at(vs + 1, op.micro)] >= 0, ready = std::max(ready, bwd_done[at(vs + 1, op.micro)]);
        }
        if (!ok) break;
        double dur = (op.kind == pass_kind::forward ? timing.t_fwd : timing.t_bwd) / v;
        free_at[size_t(s)] = ready + dur;
        busy[size_t(s)] += dur;
        if (op.kind == pass_kind::forward) {
          fwd_done[at(vs, op.micro)] = ready + dur;
          r.peak_stash[size_t(s)] = std::max(r.peak_stash[size_t(s)], ++stash[size_t(s)]);
        } else {
          bwd_done[at(vs, op.micro)] = ready + dur;
          --stash[size_t(s)];
        }
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
