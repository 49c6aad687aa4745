#include "actors/ps_job.hpp"

#include <chrono>
#include <cstdio>

#include "actors/param_shard.hpp"
#include "actors/ps_worker.hpp"
#include "runtime/optimizer.hpp"

namespace troupe {

namespace {

using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;
using timeup_atom = caf::atom_constant<caf::atom("timeup")>;
using clock_type = std::chrono::steady_clock;

struct ps_coordinator_state {
  proto::JobSpec spec;
  std::shared_ptr<const training_data> data;
  ps_options opts;
  ps_outcome* out = nullptr;
  progress_log* progress = nullptr;
  int64_t steps = 0;
  std::vector<caf::actor> shards, workers;
  int ended = 0;
  bool stopping = false, finishing = false;
  clock_type::time_point start;
  caf::response_promise done;
  // The progress line's current group: one report per worker makes a step of the log.
  int64_t group_step = 0;
  int group_reports = 0;
  double group_loss = 0, group_compute = 0;
  int64_t group_samples = 0, group_bytes = 0, group_stolen = 0;
  std::vector<int64_t> step_samples;  // examples reported for each worker step so far
  static inline const char* name = "ps_coordinator";
};

using coord_actor = caf::stateful_actor<ps_coordinator_state>;

std::chrono::microseconds micros(double seconds) { return std::chrono::microseconds(int64_t(seconds * 1e6)); }

double elapsed(const ps_coordinator_state& s) {
  return std::chrono::duration<double>(clock_type::now() - s.start).count();
}

// Asks every shard for its parameters once its version reaches `at_version` (0: now);
// `then` gets the snapshot, timed when the last shard answers.
template <class F>
void take_snapshot(coord_actor* self, F then, int64_t at_version = 0) {
  auto snap = std::make_shared<ps_snapshot>();
  auto& s = self->state;
  snap->shards.resize(s.shards.size());
  auto left = std::make_shared<size_t>(s.shards.size());
  for (size_t k = 0; k < s.shards.size(); ++k)
    self->request(s.shards[k], caf::infinite, params_atom::value, at_version)
        .then([=](int64_t version, const tensor& p) {
          snap->shards[k] = p;
          if (k == 0) snap->version = version;
          if (--*left > 0) return;
          snap->t = elapsed(self->state);
          snap->worker_steps = self->state.out->worker_steps;
          then(std::move(*snap));
        });
}

void finish(coord_actor* self) {
  auto& s = self->state;
  if (s.finishing) return;
  s.finishing = true;
  s.out->seconds = elapsed(s);
  take_snapshot(self, [=](ps_snapshot snap) {
    auto& s = self->state;
    s.out->snapshots.push_back(std::move(snap));
    auto left = std::make_shared<size_t>(s.shards.size());
    s.out->shards.resize(s.shards.size());
    for (size_t k = 0; k < s.shards.size(); ++k)
      self->request(s.shards[k], caf::infinite, stats_atom::value).then([=](const shard_stats& st) {
        auto& s = self->state;
        s.out->shards[k] = st;
        if (--*left > 0) return;
        if (s.progress) {
          for (const shard_stats& x : s.out->shards) {
            std::string hist;
            for (int64_t c : x.staleness) hist += (hist.empty() ? "" : ",") + std::to_string(c);
            char line[256];
            std::snprintf(line, sizeof line,
                          "{\"event\":\"shard\",\"shard\":%d,\"version\":%lld,\"pushes\":%lld,\"applied\":%lld,"
                          "\"dropped\":%lld,\"bytes_in\":%lld,\"bytes_out\":%lld,\"apply_s\":%.4f,\"staleness\":[",
                          x.shard, (long long)x.version, (long long)x.pushes, (long long)x.applied,
                          (long long)x.dropped, (long long)x.bytes_in, (long long)x.bytes_out, x.apply_s);
            s.progress->record(line + hist + "]}");
          }
        }
        for (const caf::actor& sh : s.shards) self->send_exit(sh, caf::exit_reason::user_shutdown);
        s.done.deliver(run_atom::value);
        self->quit();
      });
  });
}

void on_report(coord_actor* self, const worker_report& r) {
  auto& s = self->state;
  ps_outcome& o = *s.out;
  if (size_t(r.step) >= o.step_loss.size()) o.step_loss.resize(size_t(r.step) + 1, 0), o.step_workers.resize(size_t(r.step) + 1, 0);
  // Running mean over the workers of step k, weighted by their examples (slices differ
  // with speed-proportional batches and work stealing; a worker with none adds nothing).
  if (size_t(r.step) >= s.step_samples.size()) s.step_samples.resize(size_t(r.step) + 1, 0);
  ++o.step_workers[size_t(r.step)];
  int64_t& n = s.step_samples[size_t(r.step)];
  n += r.samples;
  if (n > 0) o.step_loss[size_t(r.step)] += (double(r.loss) - o.step_loss[size_t(r.step)]) * double(r.samples) / double(n);
  ++o.worker_steps;
  if (s.opts.stop_after_pushes > 0 && o.worker_steps == s.opts.stop_after_pushes && !s.stopping) {
    s.stopping = true;
    for (const caf::actor& w : s.workers) self->send_exit(w, caf::exit_reason::user_shutdown);
  }
  o.samples += r.samples;
  o.bytes += r.bytes;
  if (o.worker_samples.empty()) o.worker_samples.assign(s.workers.size(), 0), o.stolen = o.given = o.worker_samples;
  if (r.worker >= 0 && size_t(r.worker) < s.workers.size()) {
    o.worker_samples[size_t(r.worker)] += r.samples;
    o.stolen[size_t(r.worker)] += r.stolen;
    o.given[size_t(r.worker)] += r.given;
  }
  s.group_loss += double(r.loss) * double(r.samples);
  s.group_compute += r.compute_s;
  s.group_samples += r.samples;
  s.group_bytes += r.bytes;
  s.group_stolen += r.stolen;
  if (++s.group_reports < int(s.workers.size()) - int(o.failures.size())) return;
  if (s.progress) {
    const int64_t B = s.spec.train().batch_size();
    const float lr = learning_rate(s.spec.optimizer(), o.samples / B - 1, s.steps);
    char extra[240];
    std::snprintf(extra, sizeof extra, "\"policy\":\"%s\",\"version\":%lld,\"worker_steps\":%lld,\"bytes\":%lld%s",
                  s.spec.policy().name().c_str(), (long long)r.version, (long long)o.worker_steps,
                  (long long)s.group_bytes,
                  s.spec.policy().steal_micro_batches() > 0
                      ? (",\"stolen\":" + std::to_string(s.group_stolen)).c_str()
                      : "");
    s.progress->step(std::min(s.group_step, s.steps - 1), float(s.group_samples > 0 ? s.group_loss / double(s.group_samples) : 0.0), lr, 0,
                     s.group_samples, 0, s.group_compute, extra);
  }
  ++s.group_step;
  s.group_reports = 0;
  s.group_loss = s.group_compute = 0;
  s.group_samples = s.group_bytes = s.group_stolen = 0;
}

caf::behavior ps_coordinator(coord_actor* self, proto::JobSpec spec, std::shared_ptr<const training_data> data,
                             ps_options opts, ps_outcome* out, progress_log* progress, int64_t steps) {
  auto& s = self->state;
  s.spec = std::move(spec);
  s.data = std::move(data);
  s.opts = opts;
  s.out = out;
  s.progress = progress;
  s.steps = steps;
  return {
      [=](run_atom) {
        auto& s = self->state;
        s.done = self->make_response_promise();
        const proto::PolicySpec& pol = s.spec.policy();
        auto net = build_model(s.spec.model());
        arena init(net->table);
        init_params(*net, init, s.spec.train().seed());
        s.out->layouts = shard_by_size(net->table, int(pol.shards()));
        for (const auto& l : s.out->layouts) {
          param_shard_config c;
          c.spec = s.spec;
          c.layout = l;
          c.initial = tensor::empty({l->table.total_numel()});
          copy_into_shard(init, *l, c.initial.f32());
          c.total_steps = s.steps;
          s.shards.push_back(self->spawn<caf::detached>(param_shard, std::move(c)));
        }
        auto stragglers = std::make_shared<const straggler_injector>(pol, int(pol.workers()), s.spec.train().seed());
        for (int32_t w = 0; w < int32_t(pol.workers()); ++w) {
          ps_worker_config c;
          c.spec = s.spec;
          c.data = s.data;
          c.worker = w;
          c.steps = s.opts.worker_step_limit > 0 ? s.opts.worker_step_limit : s.steps;
          c.total_steps = s.steps;
          c.layouts = s.out->layouts;
          c.shards = s.shards;
          c.coordinator = caf::actor_cast<caf::actor>(self);
          c.stragglers = stragglers;
          s.workers.push_back(self->spawn<caf::detached + caf::monitored>(ps_worker, std::move(c)));
        }
        self->set_down_handler([=](const caf::down_msg& dm) {
          auto& s = self->state;
          const bool failed = dm.reason && dm.reason != caf::exit_reason::user_shutdown && !s.stopping;
          if (failed) {
            int32_t w = 0;
            while (size_t(w) < s.workers.size() && s.workers[size_t(w)].address() != dm.source) ++w;
            s.out->failures.push_back("worker " + std::to_string(w) + ": " + self->system().render(dm.reason));
            if (s.opts.announce_failures)
              std::printf("\nworker %d failed (%s); the others go on without it\n", w,
                          self->system().render(dm.reason).c_str());
            for (const caf::actor& sh : s.shards) self->send(sh, leave_atom::value, w);
          }
          if (++s.ended == int(s.workers.size())) finish(self);
        });
        s.start = clock_type::now();
        // Snapshots at given versions: asked for before any worker starts, so the shards
        // hold them until the versions come.
        for (int64_t v : s.opts.snapshot_versions)
          take_snapshot(
              self,
              [=](ps_snapshot snap) {
                if (!self->state.finishing) self->state.out->snapshots.push_back(std::move(snap));
              },
              v);
        for (const caf::actor& w : s.workers) self->send(w, peers_atom::value, s.workers);
        for (const caf::actor& w : s.workers) self->send(w, start_atom::value);
        if (s.opts.snapshot_every_s > 0)
          self->delayed_send(self, micros(s.opts.snapshot_every_s), snapshot_atom::value);
        if (pol.time_limit_s() > 0)
          self->delayed_send(self, micros(pol.time_limit_s()), timeup_atom::value);
      },
      [=](const worker_report& r) { on_report(self, r); },
      [=](snapshot_atom) {
        auto& s = self->state;
        if (s.finishing) return;
        take_snapshot(self, [=](ps_snapshot snap) {
          if (!self->state.finishing) self->state.out->snapshots.push_back(std::move(snap));
        });
        self->delayed_send(self, micros(s.opts.snapshot_every_s), snapshot_atom::value);
      },
      [=](timeup_atom) {
        auto& s = self->state;
        if (s.ended == int(s.workers.size())) return;
        s.stopping = true;
        s.out->time_limited = true;
        for (const caf::actor& w : s.workers) self->send_exit(w, caf::exit_reason::user_shutdown);
      },
  };
}

}  // namespace

double ps_outcome::mean_staleness() const {
  double n = 0, sum = 0;
  for (const shard_stats& s : shards)
    for (size_t t = 0; t < s.staleness.size(); ++t) n += double(s.staleness[t]), sum += double(t) * double(s.staleness[t]);
  return n > 0 ? sum / n : 0;
}

double ps_outcome::updates_per_s() const {
  return shards.empty() || seconds <= 0 ? 0 : double(shards[0].version) / seconds;
}

void ps_outcome::assemble(const ps_snapshot& snap, arena& whole) const {
  for (size_t k = 0; k < layouts.size(); ++k) copy_from_shard(snap.shards[k].f32(), *layouts[k], whole);
}

ps_outcome run_ps_training(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                           const ps_options& opts) {
  const int64_t steps = total_steps(spec, *data);
  if (steps == 0) throw input_error("train: the job has 0 steps");
  ps_outcome out;
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  auto coord = sys.spawn<caf::detached>(ps_coordinator, spec, data, opts, &out, opts.progress, steps);
  caf::scoped_actor self{sys};
  std::string failure;
  self->request(coord, caf::infinite, run_atom::value)
      .receive([](run_atom) {}, [&](const caf::error& err) { failure = sys.render(err); });
  if (!failure.empty()) throw std::runtime_error("policy job failed: " + failure);
  return out;
}

}  // namespace troupe
