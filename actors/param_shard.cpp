#include "actors/param_shard.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "kernels/cpu/optim.hpp"
#include "runtime/threads.hpp"
#include "runtime/training.hpp"  // save_training_state, load_training_state

namespace troupe {

namespace {

using shard_actor = caf::stateful_actor<param_shard_state>;

// DC-ASGD-a's moving mean of g*g: the paper's decay.
constexpr float kDcMeanDecay = 0.95f;

// The parameters of the current version as a tensor nobody writes again.
const tensor& current(param_shard_state& s) {
  if (s.served_version != s.version) {
    s.served = s.params.flat().clone();
    s.served_version = s.version;
  }
  return s.served;
}

// A shard's checkpoint copy: parameters and optimizer state (save_training_state),
// "version" and "applied_samples" (the schedule's clock).
void save_shard_state(const param_shard_state& s, checkpoint_shard& out) {
  save_training_state(s.params, *s.opt, out);
  out.texts["version"] = std::to_string(s.version);
  out.texts["applied_samples"] = std::to_string(s.applied_samples);
}

void settle(shard_actor* self);

// The optimizer's loops on this actor's own thread only: a default OpenMP team (every
// core) would spin between updates against the workers' compute (measured across 2
// processes on 2 cores: 32% of the CPU in libgomp). The kernels are element-wise, so
// the thread count changes no bit (a standby's replay included).
void optimizer_on_this_thread() {
  static thread_local const bool one_thread = (set_compute_threads(1), true);
  (void)one_thread;
}

// The current version is made (and, with a standby, the standby has it): the snapshots
// asked for it, and its checkpoint copy. Nothing changes the version before this: the
// next update needs pushes from parameters of this version, which are not served yet.
void publish(param_shard_state& s) {
  if (s.published == s.version) return;
  s.published = s.version;
  while (!s.version_waits.empty() && s.version_waits.begin()->first <= s.version) {
    s.version_waits.begin()->second.deliver(s.version, current(s));
    s.version_waits.erase(s.version_waits.begin());
  }
  const int64_t every = int64_t(s.cfg.spec.train().checkpoint_every());
  if (every > 0 && s.version % every == 0 && s.cfg.coordinator) {
    checkpoint_shard copy;
    save_shard_state(s, copy);
    caf::anon_send(s.cfg.coordinator, ckpt_atom::value, int32_t(s.cfg.layout->index), s.version, std::move(copy));
  }
}

// The update to the current version goes to the standby copy, whose answer lets the
// version be served. A standby that is gone (its process lost) leaves this shard without
// one: the job goes on, unprotected.
void replicate(shard_actor* self, float lr, int64_t samples) {
  auto& s = self->state;
  // `combined` by reference, not a copy: the standby is in another process, so the bridge
  // serializes it here, in this call, before the next update writes it again (a standby's
  // stand-in is never held: it goes down with its process).
  self->request(s.cfg.standby, caf::infinite, replica_atom::value, s.version, s.combined.flat(), lr, samples)
      .then(
          [=](int64_t version) {
            auto& s = self->state;
            s.standby_has = std::max(s.standby_has, version);
            if (s.standby_has >= s.version) publish(s);
            settle(self);
          },
          [=](caf::error& err) {
            auto& s = self->state;
            if (!s.cfg.standby) return;
            std::fprintf(stderr, "troupe: param_shard %d: its standby copy is gone (%s); it goes on without one\n",
                         s.stats.shard, self->system().render(err).c_str());
            s.cfg.standby = nullptr;
            publish(s);
            settle(self);
          });
}

// Applies one plan: the taken pushes, combined with their weights, as one optimizer step.
void apply(shard_actor* self, const update_plan& plan) {
  auto& s = self->state;
  optimizer_on_this_thread();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t N = s.cfg.layout->table.total_numel();
  if (!plan.take.empty()) {
    s.combined.zero();
    float* acc = s.combined.flat().f32();
    int64_t samples = 0;
    for (size_t j = 0; j < plan.take.size(); ++j) {
      const param_shard_state::pending_push& p = s.pending[plan.take[j]];
      const float w = float(plan.weight[j]);
      const tensor& at = s.pulled_at.empty() ? tensor{} : s.pulled_at[size_t(p.info.worker)];
      if (plan.dc_lambda > 0 && plan.dc_adaptive && at.defined())
        kernels::delay_compensated_adaptive_accumulate(acc, p.grad.f32(), s.params.flat().f32(), at.f32(),
                                                       s.dc_meansq.flat().f32(), w, float(plan.dc_lambda), kDcMeanDecay,
                                                       N);
      else if (plan.dc_lambda > 0 && at.defined())
        kernels::delay_compensated_accumulate(acc, p.grad.f32(), s.params.flat().f32(), at.f32(), w,
                                              float(plan.dc_lambda), N);
      else
        kernels::weighted_accumulate(acc, p.grad.f32(), w, N);
      const int64_t tau = std::max<int64_t>(0, s.version - p.info.version);
      ++s.stats.staleness[size_t(std::min<int64_t>(tau, kStalenessBins - 1))];
      samples += p.info.samples;
    }
    // The schedule's step: examples applied so far over the global batch, so an
    // asynchronous update of one worker's slice advances it by 1 / workers.
    const int64_t B = s.cfg.spec.train().batch_size();
    const float lr = learning_rate(s.opt_spec, s.applied_samples / B, s.cfg.total_steps) *
                     float(plan.lr_scale * lr_batch_scale(s.cfg.spec.policy().lr_scaling(), samples, B));
    s.opt->step(s.params, s.combined, lr);
    ++s.version;
    if (s.cfg.standby) replicate(self, lr, samples);
    if (s.tracks_members) {
      s.members.clear();
      for (size_t w = 0; w < s.workers.live.size(); ++w)
        if (s.workers.live[w]) s.members.push_back(int32_t(w));
    }
    s.applied_samples += samples;
    if (s.balancer) s.balancer->at_version(s.version);
    s.stats.applied += int64_t(plan.take.size());
    if (!s.cfg.standby) publish(s);  // else once the standby has the version
  }
  s.stats.dropped += int64_t(plan.drop.size());
  std::vector<size_t> gone = plan.take;
  gone.insert(gone.end(), plan.drop.begin(), plan.drop.end());
  std::sort(gone.rbegin(), gone.rend());
  for (size_t i : gone) s.pending.erase(s.pending.begin() + std::ptrdiff_t(i));
  s.stats.apply_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void serve(param_shard_state& s, int32_t worker, caf::response_promise& reply) {
  const tensor& p = current(s);
  if (!s.pulled_at.empty()) s.pulled_at[size_t(worker)] = p;
  s.stats.bytes_out += int64_t(p.bytes());
  reply.deliver(s.version, p);
}

// A version is served once the standby copy (if any) has it.
bool servable(const param_shard_state& s) { return !s.cfg.standby || s.standby_has >= s.version; }

// Runs the rule until it has nothing more to do, then answers every pull it now allows.
void settle(shard_actor* self) {
  auto& s = self->state;
  for (;;) {
    update_plan plan = s.rule->decide(
        [&] {
          std::vector<push_info> infos;
          for (const auto& p : s.pending) infos.push_back(p.info);
          return infos;
        }(),
        s.version, s.workers);
    if (plan.empty()) break;
    apply(self, plan);
  }
  if (!servable(s)) return;
  for (size_t i = 0; i < s.pulls.size();) {
    if (s.rule->may_serve(s.pulls[i].info, s.version, s.workers)) {
      serve(s, s.pulls[i].info.worker, s.pulls[i].reply);
      s.pulls.erase(s.pulls.begin() + std::ptrdiff_t(i));
    } else {
      ++i;
    }
  }
}

bool known_worker(const param_shard_state& s, int32_t w) { return w >= 0 && size_t(w) < s.workers.clock.size(); }

}  // namespace

caf::behavior param_shard(shard_actor* self, param_shard_config cfg) {
  auto& s = self->state;
  s.cfg = std::move(cfg);
  const param_table& table = s.cfg.layout->table;
  s.rule = make_update_rule(s.cfg.spec.policy());
  s.params = arena(table);
  s.combined = arena(table);
  s.params.flat().copy_from(s.cfg.initial);
  s.opt_spec = s.cfg.spec.optimizer();
  s.rule->shard_optimizer(s.opt_spec);
  s.opt = make_optimizer(s.opt_spec, table);
  const size_t W = s.cfg.spec.policy().workers();
  s.workers.clock.assign(W, 0);
  s.workers.live.assign(W, true);
  for (size_t w = 0; w < W; ++w) s.members.push_back(int32_t(w));
  s.tracks_members = s.cfg.layout->index == 0 && s.cfg.spec.policy().steal_micro_batches() > 0;
  if (s.cfg.spec.policy().name() == "dc-asgd") s.pulled_at.resize(W);
  if (s.cfg.spec.policy().dc_adaptive()) {
    s.dc_meansq = arena(table);
    s.dc_meansq.zero();
  }
  if (s.cfg.layout->index == 0 && s.cfg.spec.policy().balance_every() > 0)
    s.balancer = std::make_unique<speed_balancer>(int(W), int64_t(s.cfg.spec.train().batch_size()),
                                                  int64_t(s.cfg.spec.policy().balance_every()));
  if (s.cfg.resume) {
    const std::string what = "checkpoint shard-" + std::to_string(s.cfg.layout->index);
    load_training_state(s.params, *s.opt, *s.cfg.resume, what);
    s.version = checkpoint_count(*s.cfg.resume, "version");
    s.applied_samples = checkpoint_count(*s.cfg.resume, "applied_samples");
  }
  s.standby_has = s.published = s.version;  // the standby starts from the same state
  s.stats.shard = s.cfg.layout->index;
  s.stats.staleness.assign(kStalenessBins, 0);
  return {
      [=](push_atom, int32_t worker, int64_t version, int64_t clock, int64_t samples, const tensor& grad) {
        auto& s = self->state;
        if (!known_worker(s, worker) || grad.numel() != s.cfg.layout->table.total_numel() || version > s.version) {
          caf::aout(self) << "param_shard " << s.stats.shard << ": dropped a malformed push from worker " << worker
                          << "\n";
          return;
        }
        for (const auto& p : s.pending)
          if (p.info.worker == worker && p.info.clock == clock) return;  // pushed again after a move: had it
        ++s.stats.pushes;
        s.stats.bytes_in += int64_t(grad.bytes());
        s.workers.clock[size_t(worker)] = std::max(s.workers.clock[size_t(worker)], clock + 1);
        s.pending.push_back({push_info{worker, version, clock, samples}, grad});
        settle(self);
      },
      [=](pull_atom, int32_t worker, int64_t after_version, int64_t clock) {
        auto& s = self->state;
        caf::response_promise reply = self->make_response_promise();
        if (!known_worker(s, worker)) {
          reply.deliver(caf::make_error(caf::sec::invalid_argument,
                                        "param_shard: pull from unknown worker " + std::to_string(worker)));
          return;
        }
        const pull_info info{worker, after_version, clock};
        if (servable(s) && s.rule->may_serve(info, s.version, s.workers))
          serve(s, worker, reply);
        else
          s.pulls.push_back({info, reply});
      },
      [=](leave_atom, int32_t worker) {
        auto& s = self->state;
        if (!known_worker(s, worker) || !s.workers.live[size_t(worker)]) return;
        s.workers.live[size_t(worker)] = false;
        if (s.cfg.standby) self->send(s.cfg.standby, leave_atom::value, worker);
        if (s.balancer) s.balancer->leave(worker);
        settle(self);
        if (s.workers.live_count() > 0) return;
        for (caf::response_promise& p : s.drains) p.deliver(drain_atom::value);
        s.drains.clear();
      },
      [=](drain_atom) {
        auto& s = self->state;
        caf::response_promise reply = self->make_response_promise();
        if (s.workers.live_count() == 0)
          reply.deliver(drain_atom::value);
        else
          s.drains.push_back(reply);
      },
      [=](params_atom, int64_t at_version) {
        auto& s = self->state;
        caf::response_promise reply = self->make_response_promise();
        if (s.version >= at_version && servable(s))
          reply.deliver(s.version, current(s));
        else  // later, or once the standby has this version
          s.version_waits.emplace(std::max(at_version, s.version), reply);
      },
      [=](speed_atom, int32_t worker, double busy_s, int64_t samples) {
        if (self->state.balancer) self->state.balancer->observe(worker, busy_s, samples);
      },
      [=](shares_atom) {
        auto& s = self->state;
        // Without a balancer: no shares, and the workers take equal slices.
        return s.balancer ? (s.stats.shares = s.balancer->shares()) : std::vector<int64_t>{};
      },
      [=](members_atom) { return self->state.members; },
      [=](replica_atom, int64_t version, const tensor& combined, float lr, int64_t samples) -> caf::result<int64_t> {
        auto& s = self->state;
        if (version != s.version + 1 || combined.numel() != s.cfg.layout->table.total_numel())
          return caf::make_error(caf::sec::invalid_argument,
                                 "param_shard " + std::to_string(s.stats.shard) + " (standby): an update to version " +
                                     std::to_string(version) + " of " + std::to_string(combined.numel()) +
                                     " floats, at version " + std::to_string(s.version));
        optimizer_on_this_thread();
        s.combined.flat().copy_from(combined);
        s.opt->step(s.params, s.combined, lr);
        s.version = version;
        s.applied_samples += samples;
        return version;
      },
      [=](promote_atom, const std::vector<caf::actor>& workers) {
        auto& s = self->state;
        for (const caf::actor& w : workers) self->send(w, repush_atom::value, int32_t(s.stats.shard), s.version);
        if (s.cfg.coordinator) self->send(s.cfg.coordinator, moved_atom::value, int32_t(s.stats.shard), s.version);
      },
      [=](stats_atom) {
        auto& s = self->state;
        s.stats.version = s.version;
        return s.stats;
      },
  };
}

}  // namespace troupe
