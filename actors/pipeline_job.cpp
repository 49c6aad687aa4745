#include "actors/pipeline_job.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "actors/device.hpp"
#include "kernels/cpu/optim.hpp"  // sum_of_squares
#include "runtime/partition.hpp"
#include "runtime/threads.hpp"
#include "transport/communicator.hpp"

namespace troupe {

pipeline_options pipeline_options::from(const proto::JobSpec& spec) {
  pipeline_options o;
  o.stages = int(spec.parallel().stages());
  o.replicas = int(spec.parallel().replicas());
  o.micro_batches = int(spec.parallel().micro_batches());
  o.schedule = spec.parallel().schedule();
  o.chunks = spec.parallel().has_chunks() ? int(spec.parallel().chunks()) : 2;
  o.devices = int(spec.parallel().devices());
  int threads = spec.train().threads() ? int(spec.train().threads()) : hardware_threads();
  o.threads_per_device = std::max(1, threads / (o.devices ? o.devices : o.stages * o.replicas));
  return o;
}

pipeline_outcome run_pipeline_training(caf::actor_system& sys, const proto::JobSpec& spec, const pipeline_options& opts,
                                       int64_t steps, progress_log* progress) {
  std::shared_ptr<const pipeline_schedule> schedule = make_pipeline_schedule(opts.schedule, opts.chunks);
  const int p = opts.stages, v = schedule->chunks(), m = opts.micro_batches, R = opts.replicas;
  auto data = load_training_data(spec);
  auto batches = std::make_shared<step_batches>(spec, data, m, R);
  const int64_t total = troupe::total_steps(spec, *data);

  auto make_model = opts.make_model ? opts.make_model : [&spec] { return build_model(spec.model()); };
  // The whole model once, for its layer costs and its initial parameters.
  std::unique_ptr<model> full = make_model();
  arena init(full->table);
  init_params(*full, init, spec.train().seed());
  auto ranges = plan_virtual_stages(*full, p * v);

  // The device actors (threads), then stages[r][s]: stage s of replica r, on device
  // device_of(s, r). Stage s of every replica shares one group.
  check_placement(p, R, opts.devices);
  std::vector<caf::actor> devices;
  for (int d = 0; d < (opts.devices ? opts.devices : p * R); ++d)
    devices.push_back(sys.spawn<caf::detached>(stage_device, opts.threads_per_device));
  std::vector<std::vector<caf::actor>> stages(static_cast<size_t>(R));
  std::vector<std::shared_ptr<communicator>> groups;  // one member of each stage's group
  std::vector<caf::actor> all;
  for (int s = 0; s < p; ++s) {
    auto group = make_group("inproc", R);
    groups.push_back(group[0]);
    std::vector<std::pair<size_t, size_t>> mine;
    for (int c = 0; c < v; ++c) mine.push_back(ranges[size_t(c * p + s)]);
    for (int r = 0; r < R; ++r) {
      stage_config cfg;
      cfg.stage = s;
      cfg.stages = p;
      cfg.replica = r;
      cfg.micro_batches = m;
      cfg.device = devices[size_t(device_of(s, r, p, R, opts.devices))];
      cfg.schedule = schedule;
      cfg.replica_group = R > 1 ? group[size_t(r)] : nullptr;
      cfg.trace = opts.trace;
      // Nothing to share with other stages: each replica's stage steps on its own.
      cfg.self_step = p == 1;
      cfg.max_norm = spec.optimizer().grad_clip();
      cfg.lr_at = [opt = spec.optimizer(), total](int64_t step) { return learning_rate(opt, step, total); };
      cfg.bucket_elems = opts.bucket_elems;
      if (opts.trace) {
        std::string name = "replica " + std::to_string(r) + " stage " + std::to_string(s);
        cfg.track = opts.trace->track(name);
        if (R > 1) cfg.comm_track = opts.trace->track(name + " comm");
      }
      cfg.compute = std::make_shared<stage_model>(spec, make_model(), mine, init, batches, m, r);
      if (opts.wrap_compute) cfg.compute = opts.wrap_compute(s, r, cfg.compute);
      cfg.source = [](int64_t, int) { return tensor{}; };  // the first chunk reads its data itself
      stages[size_t(r)].push_back(sys.spawn<caf::detached>(stage, cfg));
      all.push_back(stages[size_t(r)].back());
    }
  }
  caf::scoped_actor self{sys};
  for (int r = 0; r < R; ++r)
    for (auto& st : stages[size_t(r)]) {
      self->send(st, peers_atom::value, stages[size_t(r)], caf::actor_cast<caf::actor>(self));
      self->monitor(st);
    }

  pipeline_outcome out;
  out.peak_stash_mb.assign(size_t(p), 0.0);
  std::string failure;
  auto on_error = [&](const caf::error& e) { failure = sys.render(e); };
  // Which stages hold which parameters; names held by more than one are shared.
  std::map<std::string, int> holders;
  for (auto& st : stages[0])
    self->request(st, caf::infinite, names_atom::value)
        .receive(
            [&](const std::vector<std::string>& names) {
              out.layout.push_back(names);
              for (const auto& n : names) ++holders[n];
            },
            on_error);
  std::vector<std::string> shared;
  for (const auto& [name, count] : holders)
    if (count > 1) shared.push_back(name);

  const float max_norm = spec.optimizer().grad_clip();
  const size_t n_actors = all.size();
  for (int64_t step = 0; step < steps && failure.empty(); ++step) {
    auto t0 = std::chrono::steady_clock::now();
    for (auto& st : all) self->send(st, step_atom::value, step);
    if (step + 1 < steps) batches->prepare(step + 1);  // while the stages compute
    double loss_sum = 0, self_norm = -1;
    std::vector<double> busy(n_actors, 0.0);  // index replica * stages + stage
    for (size_t got = 0; got < n_actors && failure.empty(); ++got)
      self->receive(
          [&](const stage_report& r) {
            loss_sum += r.loss_sum;
            busy[size_t(r.replica * p + r.stage)] = r.busy_s;
            auto& peak = out.peak_stash_mb[size_t(r.stage)];
            peak = std::max(peak, r.peak_stash_bytes / (1024.0 * 1024.0));
            if (r.grad_norm >= 0) self_norm = r.grad_norm;
            if (!r.error.empty()) failure = r.error;
          },
          [&](const caf::down_msg& d) { failure = "a stage stopped: " + sys.render(d.reason); });
    if (!failure.empty()) break;
    out.losses.push_back(float(loss_sum / (double(m) * R)));
    double norm = self_norm;
    float lr = learning_rate(spec.optimizer(), step, total);
    if (p > 1) {
      // All stages at once: each averages its gradients with its replicas (they wait for
      // one another), then reports. Replicas then hold identical gradients; replica 0's
      // give the shared sums and the norm over all distinct parameters.
      for (auto& st : all) self->send(st, grads_atom::value, shared);
      double sum_sq = 0;
      std::vector<tensor> totals(shared.size());
      for (size_t got = 0; got < n_actors && failure.empty(); ++got)
        self->receive(
            [&](int32_t replica, int32_t, double partial, const std::vector<tensor>& grads) {
              if (replica != 0) return;
              sum_sq += partial;
              for (size_t k = 0; k < shared.size(); ++k) {
                if (!grads[k].defined()) continue;
                if (!totals[k].defined()) {
                  totals[k] = grads[k].clone();
                  continue;
                }
                float* t = totals[k].f32();
                const float* g = grads[k].f32();
                for (int64_t i = 0; i < totals[k].numel(); ++i) t[i] += g[i];
              }
            },
            [&](caf::error& e) { on_error(e); },
            [&](const caf::down_msg& d) { failure = "a stage stopped: " + sys.render(d.reason); });
      if (!failure.empty()) break;
      for (const tensor& t : totals)
        if (t.defined()) sum_sq += kernels::sum_of_squares(t.f32(), t.numel());
      norm = std::sqrt(sum_sq);
      float scale = clip_coefficient(norm, max_norm);
      for (auto& st : all) self->send(st, apply_atom::value, shared, totals, scale, lr);
      for (size_t got = 0; got < n_actors && failure.empty(); ++got)
        self->receive([](int32_t) {}, [&](caf::error& e) { on_error(e); },
                      [&](const caf::down_msg& d) { failure = "a stage stopped: " + sys.render(d.reason); });
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (failure.empty()) out.step_s.push_back(dt);
    if (progress && failure.empty()) {
      int64_t samples = spec.train().batch_size();
      int64_t tokens = spec.model().has_gpt() ? samples * int64_t(spec.model().gpt().context()) : 0;
      // Busy fraction of each stage actor: compute time over the whole step's wall time.
      std::string extra = "\"busy\":[";
      for (size_t i = 0; i < busy.size(); ++i) {
        char b[24];
        std::snprintf(b, sizeof b, "%s%.3f", i ? "," : "", dt > 0 ? busy[i] / dt : 0.0);
        extra += b;
      }
      progress->step(step, out.losses.back(), lr, float(norm), samples, tokens, dt, extra + "]");
    }
  }
  for (size_t s = 0; s < stages[0].size() && failure.empty(); ++s)
    self->request(stages[0][s], caf::infinite, params_atom::value, out.layout[s])
        .receive(
            [&](const std::vector<tensor>& ps) {
              for (size_t k = 0; k < ps.size(); ++k) out.params.emplace(out.layout[s][k], ps[k].clone());
            },
            on_error);
  // Survivors blocked in an all-reduce with a dead replica get an error now, not at the
  // end of their deadline.
  if (!failure.empty())
    for (auto& g : groups) g->abort("the job failed: " + failure);
  for (auto& st : all) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  if (!failure.empty()) throw std::runtime_error("pipeline failed: " + failure);
  return out;
}

}  // namespace troupe
