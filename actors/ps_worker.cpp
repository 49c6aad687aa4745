#include "actors/ps_worker.hpp"

namespace troupe {

namespace {

using worker_actor = caf::stateful_actor<ps_worker_state>;
using clock_t_ = std::chrono::steady_clock;

double since(clock_t_::time_point t) { return std::chrono::duration<double>(clock_t_::now() - t).count(); }

void begin_step(worker_actor* self);

// Forward and backward on this worker's slice of step `clock`, then the emulated rest.
void compute(worker_actor* self) {
  auto& s = self->state;
  s.report.pull_wait_s = since(s.pull_start);
  const auto t0 = clock_t_::now();
  s.source->next_indices(s.global_idx);  // every worker draws every step's batch: same order
  const int64_t W = s.cfg.spec.policy().workers(), b = int64_t(s.global_idx.size()) / W;
  s.my_idx.assign(s.global_idx.begin() + s.cfg.worker * b, s.global_idx.begin() + (s.cfg.worker + 1) * b);
  batch bt = s.source->gather(s.my_idx);
  s.grads.zero();
  activations acts;
  tensor loss = forward(*s.net, s.params, bt.x, bt.y, acts);
  tensor dloss = tensor::empty({1});
  dloss.f32()[0] = 1.f;
  backward(*s.net, s.params, s.grads, dloss, acts);
  s.report.loss = loss.f32()[0];
  s.report.samples = b;
  s.report.compute_s = since(t0);
  const double sample_ms = s.cfg.spec.policy().sample_ms();
  s.report.emulated_s = 0;
  if (sample_ms > 0) {
    s.report.emulated_s = sample_ms * 1e-3 * double(b) * s.cfg.stragglers->factor(s.cfg.worker, s.clock);
    const double rest = s.report.emulated_s - s.report.compute_s;
    if (rest > 0) {
      self->delayed_send(self, std::chrono::microseconds(int64_t(rest * 1e6)), computed_atom::value);
      return;
    }
  }
  self->send(self, computed_atom::value);
}

void push(worker_actor* self) {
  auto& s = self->state;
  int64_t bytes = 0;
  for (size_t k = 0; k < s.cfg.shards.size(); ++k) {
    const shard_layout& l = *s.cfg.layouts[k];
    tensor g = tensor::empty({l.table.total_numel()});
    copy_into_shard(s.grads, l, g.f32());
    bytes += int64_t(g.bytes()) * 2;  // this gradient, and the parameters pulled for it
    self->send(s.cfg.shards[k], push_atom::value, s.cfg.worker, s.versions[k], s.clock, s.report.samples,
               std::move(g));
  }
  s.report.worker = s.cfg.worker;
  s.report.step = s.clock;
  s.report.version = s.versions.empty() ? 0 : s.versions[0];
  s.report.bytes = bytes;
  self->send(s.cfg.coordinator, s.report);
  ++s.clock;
  begin_step(self);
}

void begin_step(worker_actor* self) {
  auto& s = self->state;
  if (s.clock >= s.cfg.steps) {
    for (const caf::actor& sh : s.cfg.shards) self->send(sh, leave_atom::value, s.cfg.worker);
    self->quit();
    return;
  }
  if (s.cfg.stragglers->fails_at(s.cfg.worker, s.clock)) {
    self->quit(caf::make_error(caf::sec::runtime_error, "worker " + std::to_string(s.cfg.worker) +
                                                            ": injected failure at step " + std::to_string(s.clock)));
    return;
  }
  s.pull_start = clock_t_::now();
  s.awaiting = s.cfg.shards.size();
  for (size_t k = 0; k < s.cfg.shards.size(); ++k) {
    const int64_t after = s.clock == 0 ? -1 : s.versions[k];
    self->request(s.cfg.shards[k], caf::infinite, pull_atom::value, s.cfg.worker, after, s.clock)
        .then(
            [=](int64_t version, const tensor& p) {
              auto& s = self->state;
              copy_from_shard(p.f32(), *s.cfg.layouts[k], s.params);
              s.versions[k] = version;
              if (--s.awaiting == 0) compute(self);
            },
            [=](caf::error& err) { self->quit(std::move(err)); });
  }
}

}  // namespace

caf::behavior ps_worker(worker_actor* self, ps_worker_config cfg) {
  auto& s = self->state;
  s.cfg = std::move(cfg);
  s.net = build_model(s.cfg.spec.model());
  s.params = arena(s.net->table);
  s.grads = arena(s.net->table);
  s.source = std::make_unique<batch_source>(s.cfg.spec, s.cfg.data);
  s.versions.assign(s.cfg.shards.size(), 0);
  return {
      [=](start_atom) { begin_step(self); },
      [=](computed_atom) { push(self); },
  };
}

}  // namespace troupe
