#include "actors/ps_worker.hpp"

#include <algorithm>

#include "kernels/cpu/optim.hpp"
#include "policies/update_rule.hpp"
#include "runtime/threads.hpp"

namespace troupe {

namespace {

using worker_actor = caf::stateful_actor<ps_worker_state>;
using clock_t_ = std::chrono::steady_clock;

double since(clock_t_::time_point t) { return std::chrono::duration<double>(clock_t_::now() - t).count(); }

void begin_step(worker_actor* self);

// Forward and backward on this worker's slice of the step's batch, then the emulated rest.
void compute(worker_actor* self) {
  auto& s = self->state;
  s.report.pull_wait_s = s.round_steps == 0 ? since(s.pull_start) : 0;
  const auto t0 = clock_t_::now();
  s.source->next_indices(s.global_idx);  // every worker draws every step's batch: same order
  const int64_t W = s.cfg.spec.policy().workers();
  int64_t first = s.cfg.worker * (int64_t(s.global_idx.size()) / W), b = int64_t(s.global_idx.size()) / W;
  if (!s.shares.empty()) {  // speed-proportional: this worker's share of the batch now
    first = 0;
    for (int32_t w = 0; w < s.cfg.worker; ++w) first += s.shares[size_t(w)];
    b = s.shares[size_t(s.cfg.worker)];
  }
  s.my_idx.assign(s.global_idx.begin() + first, s.global_idx.begin() + first + b);
  batch bt = s.source->gather(s.my_idx);
  s.grads.zero();
  activations acts;
  tensor loss = forward(*s.net, s.params, bt.x, bt.y, acts);
  tensor dloss = tensor::empty({1});
  dloss.f32()[0] = 1.f;
  backward(*s.net, s.params, s.grads, dloss, acts);
  if (s.opt) {
    clip_grad_norm(s.grads, s.cfg.spec.optimizer().grad_clip());
    s.opt->step(s.params, s.grads, learning_rate(s.cfg.spec.optimizer(), s.step, s.cfg.total_steps));
  }
  s.report.loss = loss.f32()[0];
  s.report.samples = b;
  s.report.compute_s = since(t0);
  const double sample_ms = s.cfg.spec.policy().sample_ms();
  s.report.emulated_s = 0;
  if (sample_ms > 0) {
    s.report.emulated_s = sample_ms * 1e-3 * double(b) * s.cfg.stragglers->factor(s.cfg.worker, s.step);
    const double rest = s.report.emulated_s - s.report.compute_s;
    if (rest > 0) {
      self->delayed_send(self, std::chrono::microseconds(int64_t(rest * 1e6)), computed_atom::value);
      return;
    }
  }
  self->send(self, computed_atom::value);
}

// Sends each shard its slice of the gradient, or under a local rule of the change since
// the pull (anchor - params, into the gradient buffer); returns the bytes moved for it.
int64_t push(worker_actor* self, int64_t samples) {
  auto& s = self->state;
  if (s.opt) {
    s.grads.flat().copy_from(s.anchor.flat());
    kernels::weighted_accumulate(s.grads.flat().f32(), s.params.flat().f32(), -1.f, s.grads.flat().numel());
  }
  int64_t bytes = 0;
  for (size_t k = 0; k < s.cfg.shards.size(); ++k) {
    const shard_layout& l = *s.cfg.layouts[k];
    tensor g = tensor::empty({l.table.total_numel()});
    copy_into_shard(s.grads, l, g.f32());
    bytes += int64_t(g.bytes()) * 2;  // this push, and the parameters pulled for it
    self->send(s.cfg.shards[k], push_atom::value, s.cfg.worker, s.versions[k], s.clock, samples, std::move(g));
  }
  ++s.clock;
  return bytes;
}

void step_done(worker_actor* self) {
  auto& s = self->state;
  s.report.bytes = 0;
  if (s.balancing)  // before the push, so shard 0 has it when the version moves on
    self->send(s.cfg.shards[0], speed_atom::value, s.cfg.worker, std::max(s.report.compute_s, s.report.emulated_s),
               s.report.samples);
  if (!s.opt) {
    s.report.bytes = push(self, s.report.samples);
  } else {
    ++s.round_steps;
    s.round_samples += s.report.samples;
    if (s.round_steps == s.local_steps || s.step + 1 == s.cfg.steps) {
      s.report.bytes = push(self, s.round_samples);
      s.round_steps = 0;
      s.round_samples = 0;
    }
  }
  s.report.worker = s.cfg.worker;
  s.report.step = s.step;
  s.report.version = s.versions.empty() ? 0 : s.versions[0];
  self->send(s.cfg.coordinator, s.report);
  ++s.step;
  begin_step(self);
}

void begin_step(worker_actor* self) {
  auto& s = self->state;
  if (s.step >= s.cfg.steps) {
    for (const caf::actor& sh : s.cfg.shards) self->send(sh, leave_atom::value, s.cfg.worker);
    self->quit();
    return;
  }
  if (s.cfg.stragglers->fails_at(s.cfg.worker, s.step)) {
    self->quit(caf::make_error(caf::sec::runtime_error, "worker " + std::to_string(s.cfg.worker) +
                                                            ": injected failure at step " + std::to_string(s.step)));
    return;
  }
  if (s.round_steps > 0) {  // inside a local round: no pull
    compute(self);
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
              if (--s.awaiting > 0) return;
              if (s.opt) s.anchor.flat().copy_from(s.params.flat());
              if (!s.balancing) {
                compute(self);
                return;
              }
              // Shard 0 cannot move past this version before this worker pushes to it,
              // so its shares now are the ones every worker of this step gets.
              self->request(s.cfg.shards[0], caf::infinite, shares_atom::value)
                  .then(
                      [=](const std::vector<int64_t>& shares) {
                        self->state.shares = shares;
                        compute(self);
                      },
                      [=](caf::error& err) { self->quit(std::move(err)); });
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
  s.local_steps = make_update_rule(s.cfg.spec.policy())->local_steps();
  s.balancing = s.cfg.spec.policy().balance_every() > 0;
  if (s.local_steps > 0) {
    s.opt = make_optimizer(s.cfg.spec.optimizer(), s.net->table);
    s.anchor = arena(s.net->table);
  }
  return {
      [=](start_atom) {
        // OpenMP's thread count is per thread: set it on this actor's own thread.
        // train.threads per worker, or the cores shared out among the workers.
        const int W = int(self->state.cfg.spec.policy().workers()), t = int(self->state.cfg.spec.train().threads());
        set_compute_threads(t > 0 ? t : std::max(1, hardware_threads() / W));
        begin_step(self);
      },
      [=](computed_atom) { step_done(self); },
  };
}

}  // namespace troupe
