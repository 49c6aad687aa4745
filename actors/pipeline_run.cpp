#include "actors/pipeline_run.hpp"

#include "actors/device.hpp"

#include <algorithm>

namespace troupe {

pipeline_measurement run_emulated_pipeline(caf::actor_system& sys, std::shared_ptr<const pipeline_schedule> schedule,
                                           int p, int m, std::chrono::microseconds t_fwd,
                                           std::chrono::microseconds t_bwd, std::chrono::microseconds t_wgt,
                                           int steps) {
  if (steps < 1 || p < 1 || m < 1)
    throw input_error("run_emulated_pipeline: needs at least one step, stage and micro-batch");
  std::vector<caf::actor> stages, devices;
  auto compute = std::make_shared<emulated_compute>(t_fwd, t_bwd, t_wgt, schedule->chunks());
  tensor token = tensor::zeros({1});
  for (int s = 0; s < p; ++s) {
    stage_config cfg;
    cfg.stage = s;
    cfg.stages = p;
    cfg.micro_batches = m;
    cfg.schedule = schedule;
    cfg.compute = compute;  // stateless: the stages may share it
    cfg.source = [token](int64_t, int) { return token; };
    devices.push_back(sys.spawn<caf::detached>(stage_device, 1));  // one emulated device per stage
    cfg.device = devices.back();
    stages.push_back(sys.spawn<caf::detached>(stage, cfg));
  }
  caf::scoped_actor self{sys};
  for (auto& st : stages) self->send(st, peers_atom::value, stages, caf::actor_cast<caf::actor>(self));
  std::vector<std::pair<double, double>> per_step;  // (bubble, makespan)
  pipeline_measurement out;
  out.peak_stash.assign(size_t(p), 0);
  for (int step = 0; step < steps; ++step) {
    for (auto& st : stages) self->send(st, step_atom::value, int64_t(step));
    double start = 1e300, end = 0, busy = 0;
    std::string failure;
    for (int got = 0; got < p && failure.empty(); ++got)
      self->receive([&](const stage_report& r) {
        if (!r.error.empty()) failure = r.error;
        start = std::min(start, r.start_s);
        end = std::max(end, r.end_s);
        busy += r.busy_s;
        out.peak_stash[size_t(r.stage)] = std::max(out.peak_stash[size_t(r.stage)], r.peak_stash);
      });
    if (!failure.empty()) {
      for (auto& st : stages) self->send_exit(st, caf::exit_reason::user_shutdown);
      for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
      throw std::runtime_error(failure);
    }
    double makespan = end - start;
    per_step.push_back({1.0 - busy / (double(p) * makespan), makespan});
  }
  for (auto& st : stages) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  std::sort(per_step.begin(), per_step.end());
  out.bubble = per_step[per_step.size() / 2].first;
  out.makespan_s = per_step[per_step.size() / 2].second;
  return out;
}

}  // namespace troupe
