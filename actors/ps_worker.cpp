#include "actors/ps_worker.hpp"

#include <algorithm>

#include "kernels/cpu/optim.hpp"
#include "policies/update_rule.hpp"
#include "policies/work_stealing.hpp"
#include "runtime/threads.hpp"

namespace troupe {

namespace {

using worker_actor = caf::stateful_actor<ps_worker_state>;
using clock_t_ = std::chrono::steady_clock;

double since(clock_t_::time_point t) { return std::chrono::duration<double>(clock_t_::now() - t).count(); }

void begin_step(worker_actor* self);
void pull(worker_actor* self, size_t k, int64_t after, int attempt);

// Forward and backward on examples [first, first + b) of the step's batch, into s.grads;
// returns their mean loss.
float train_on(worker_actor* self, int64_t first, int64_t b) {
  auto& s = self->state;
  s.my_idx.assign(s.global_idx.begin() + first, s.global_idx.begin() + first + b);
  batch bt = s.source->gather(s.my_idx);
  s.grads.zero();
  activations acts;
  tensor loss = forward(*s.net, s.params, bt.x, bt.y, acts);
  tensor dloss = tensor::empty({1});
  dloss.f32()[0] = 1.f;
  backward(*s.net, s.params, s.grads, dloss, acts);
  return loss.f32()[0];
}

// Sends itself computed_atom once `emulated_s` (policy.sample_ms; 0: off) has passed since
// the compute that took `compute_s` began: at once if the compute took longer.
void after_emulated(worker_actor* self, double emulated_s, double compute_s) {
  const double rest = emulated_s - compute_s;
  if (rest > 0)
    self->delayed_send(self, std::chrono::microseconds(int64_t(rest * 1e6)), computed_atom::value);
  else
    self->send(self, computed_atom::value);
}

// The emulated time of `samples` examples this step (policy.sample_ms; 0: off).
double emulated_s(worker_actor* self, int64_t samples) {
  auto& s = self->state;
  const double sample_ms = s.cfg.spec.policy().sample_ms();
  return sample_ms > 0 ? sample_ms * 1e-3 * double(samples) * s.cfg.stragglers->factor(s.cfg.worker, s.step) : 0;
}

// Work stealing (policy.steal_micro_batches): this worker's queue for its current step
// and whom to ask, by its rank among the step's members (shard 0's, so every worker of the
// step cuts the batch alike); made on first use: a thief may ask, with the members it got,
// before this worker has its own.
void ensure_queue(worker_actor* self, const std::vector<int32_t>& members) {
  auto& s = self->state;
  if (s.queue_step == s.step) return;
  s.queue_step = s.step;
  s.report.given = 0;
  s.queue.clear();
  s.victims.clear();
  const auto me = std::find(members.begin(), members.end(), s.cfg.worker);
  if (me == members.end()) return;  // not a member (cannot happen while it lives): trains nothing
  const int32_t rank = int32_t(me - members.begin()), n = int32_t(members.size());
  s.queue = own_micro_batches(rank, n, int32_t(s.cfg.spec.policy().steal_micro_batches()));
  for (int32_t r : victim_order(rank, n)) s.victims.push_back(members[size_t(r)]);
}

void finish_stolen_step(worker_actor* self);

// The next micro-batch: its own from the front of the queue, else what the others give
// when asked all at once; when every other worker has none left, the step's work is all
// claimed. Emulated time runs back to back over micro-batches that follow each other
// without a wait (a late timer does not push the next one back), and restarts after one.
void next_micro_batch(worker_actor* self) {
  auto& s = self->state;
  if (!s.queue.empty()) {
    const int64_t j = s.queue.front();
    s.queue.pop_front();
    const auto t0 = clock_t_::now();
    const auto base = s.back_to_back ? std::min(s.device_free, t0) : t0;
    const float loss = train_on(self, j * s.micro_size, s.micro_size);
    kernels::weighted_accumulate(s.accum.flat().f32(), s.grads.flat().f32(), float(s.micro_size),
                                 s.accum.flat().numel());
    s.loss_sum += double(loss) * double(s.micro_size);
    s.report.samples += s.micro_size;
    const double e = emulated_s(self, s.micro_size);
    s.report.compute_s += since(t0);
    s.report.emulated_s += e;
    s.device_free = std::max(clock_t_::now(),
                             base + std::chrono::duration_cast<clock_t_::duration>(std::chrono::duration<double>(e)));
    after_emulated(self, std::chrono::duration<double>(s.device_free - clock_t_::now()).count(), 0);
    return;
  }
  s.back_to_back = false;
  s.asking = s.victims.size();
  s.got_work = false;
  if (s.asking == 0) {
    finish_stolen_step(self);
    return;
  }
  auto answered = [=](const std::vector<int64_t>& got) {
    auto& s = self->state;
    s.queue.insert(s.queue.end(), got.begin(), got.end());
    s.report.stolen += int32_t(got.size());
    s.got_work = s.got_work || !got.empty();
    if (--s.asking > 0) return;
    if (s.got_work)
      next_micro_batch(self);  // and after it, every victim is worth asking again
    else
      finish_stolen_step(self);
  };
  for (int32_t v : s.victims)
    self->request(s.peers[size_t(v)], caf::infinite, steal_atom::value, s.step, s.step_members)
        .then([=](const std::vector<int64_t>& got) { answered(got); },
              [=](caf::error&) { answered({}); });  // gone (finished or failed): nothing to give
}

void step_done(worker_actor* self);

// The step's gradient: the sample-weighted mean of the micro-batches this worker trained
// (zero, with samples 0, if the others took them all).
void finish_stolen_step(worker_actor* self) {
  auto& s = self->state;
  s.grads.zero();
  if (s.report.samples > 0)
    kernels::weighted_accumulate(s.grads.flat().f32(), s.accum.flat().f32(), 1.f / float(s.report.samples),
                                 s.grads.flat().numel());
  s.report.loss = s.report.samples > 0 ? float(s.loss_sum / double(s.report.samples)) : 0.f;
  step_done(self);
}

void begin_stolen_step(worker_actor* self) {
  auto& s = self->state;
  ensure_queue(self, s.step_members);
  s.accum.zero();
  s.loss_sum = 0;
  s.report.samples = 0;
  s.report.stolen = 0;
  s.report.compute_s = s.report.emulated_s = 0;
  s.back_to_back = false;
  next_micro_batch(self);
}

// Forward and backward on this worker's slice of the step's batch, then the emulated rest.
void compute(worker_actor* self) {
  auto& s = self->state;
  // An injected failure at step k strikes once the step has begun (its parameters pulled,
  // or inside a local round): version k was made with this worker live.
  if (s.cfg.stragglers->fails_at(s.cfg.worker, s.step)) {
    self->quit(caf::make_error(caf::sec::runtime_error, "worker " + std::to_string(s.cfg.worker) +
                                                            ": injected failure at step " + std::to_string(s.step)));
    return;
  }
  s.report.pull_wait_s = s.round_steps == 0 ? since(s.pull_start) : 0;
  const auto t0 = clock_t_::now();
  s.source->next_indices(s.global_idx);  // every worker draws every step's batch: same order
  if (s.micro_size > 0) {
    begin_stolen_step(self);
    return;
  }
  const int64_t W = s.cfg.spec.policy().workers();
  int64_t first = s.cfg.worker * (int64_t(s.global_idx.size()) / W), b = int64_t(s.global_idx.size()) / W;
  if (!s.shares.empty()) {  // speed-proportional: this worker's share of the batch now
    first = 0;
    for (int32_t w = 0; w < s.cfg.worker; ++w) first += s.shares[size_t(w)];
    b = s.shares[size_t(s.cfg.worker)];
  }
  const float loss = train_on(self, first, b);
  if (s.opt) {
    clip_grad_norm(s.grads, s.cfg.spec.optimizer().grad_clip());
    s.opt->step(s.params, s.grads, learning_rate(s.cfg.spec.optimizer(), s.step, s.cfg.total_steps));
  }
  s.report.loss = loss;
  s.report.samples = b;
  s.report.compute_s = since(t0);
  s.report.emulated_s = emulated_s(self, b);
  after_emulated(self, s.report.emulated_s, s.report.compute_s);
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
    if (s.cfg.shards_move) {          // never written again: kept for a second push after a move
      s.last_push[k] = g;
      s.last_push_version[k] = s.versions[k];
    }
    self->send(s.cfg.shards[k], push_atom::value, s.cfg.worker, s.versions[k], s.clock, samples, std::move(g));
  }
  s.last_push_clock = s.clock;
  s.last_push_samples = samples;
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

// After the pulls: asks shard 0 `what` (the shares of the batch, or the step's members),
// keeps the answer in `into`, then computes. Shard 0 cannot move past this version before
// this worker pushes to it, so its answer now is the one every worker of this step gets.
template <class T, class Atom>
void ask_shard0_then_compute(worker_actor* self, Atom what, std::vector<T> ps_worker_state::*into) {
  self->request(self->state.cfg.shards[0], caf::infinite, what)
      .then(
          [=](const std::vector<T>& answer) {
            self->state.*into = answer;
            compute(self);
          },
          [=](caf::error& err) { self->quit(std::move(err)); });
}

void begin_step(worker_actor* self) {
  auto& s = self->state;
  if (s.step >= s.cfg.steps) {
    // Where shards move, the last push is sure only once every shard has made the update
    // it went into (and its copy has that version): until then this worker stays to push
    // it again to a copy that takes over. So one more pull first.
    if (s.cfg.shards_move && !s.finishing && s.clock > 0) {
      s.finishing = true;
      s.awaiting = s.cfg.shards.size();
      for (size_t k = 0; k < s.cfg.shards.size(); ++k) pull(self, k, s.versions[k], 0);
      return;
    }
    for (const caf::actor& sh : s.cfg.shards) self->send(sh, leave_atom::value, s.cfg.worker);
    self->quit();
    return;
  }
  if (s.round_steps > 0) {  // inside a local round: no pull
    compute(self);
    return;
  }
  s.pull_start = clock_t_::now();
  s.awaiting = s.cfg.shards.size();
  for (size_t k = 0; k < s.cfg.shards.size(); ++k) pull(self, k, s.clock == 0 ? -1 : s.versions[k], 0);
}

// Asks shard k for parameters newer than `after`; computes once every shard has answered.
// A failed pull ends the worker, but where shards move (cfg.shards_move): then it is asked
// again, a few times (the shard's stand-in holds it until the standby takes over).
void pull(worker_actor* self, size_t k, int64_t after, int attempt) {
  auto& s = self->state;
  self->request(s.cfg.shards[k], caf::infinite, pull_atom::value, s.cfg.worker, after, s.clock)
      .then(
          [=](int64_t version, const tensor& p) {
            auto& s = self->state;
            copy_from_shard(p.f32(), *s.cfg.layouts[k], s.params);
            s.versions[k] = version;
            if (--s.awaiting > 0) return;
            if (s.finishing) return begin_step(self);  // the last push is in every shard: leave
            if (s.opt) s.anchor.flat().copy_from(s.params.flat());
            if (s.micro_size > 0)
              ask_shard0_then_compute(self, members_atom::value, &ps_worker_state::step_members);
            else if (s.balancing)
              ask_shard0_then_compute(self, shares_atom::value, &ps_worker_state::shares);
            else
              compute(self);
          },
          [=](caf::error& err) {
            constexpr int kPullAttempts = 5;
            if (self->state.cfg.shards_move && attempt + 1 < kPullAttempts) {
              pull(self, k, after, attempt + 1);
              return;
            }
            self->quit(std::move(err));
          });
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
  s.last_push.assign(s.cfg.shards.size(), tensor{});
  s.last_push_version.assign(s.cfg.shards.size(), -1);
  if (s.cfg.first_step > 0) {
    // A resumed synchronous job: the shards are at version first_step, which the first
    // pull takes at once; the batches start where the checkpoint's run left off.
    s.step = s.clock = s.cfg.first_step;
    s.versions.assign(s.cfg.shards.size(), s.cfg.first_step - 1);
    s.source->skip(s.cfg.first_step);
  }
  s.local_steps = make_update_rule(s.cfg.spec.policy())->local_steps();
  s.balancing = s.cfg.spec.policy().balance_every() > 0;
  if (s.cfg.spec.policy().steal_micro_batches() > 0) {
    s.micro_size = int64_t(s.cfg.spec.train().batch_size() / s.cfg.spec.policy().steal_micro_batches());
    s.accum = arena(s.net->table);
  }
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
      [=](peers_atom, const std::vector<caf::actor>& peers) { self->state.peers = peers; },
      [=](repush_atom, int32_t shard, int64_t version) {
        auto& s = self->state;
        if (shard < 0 || size_t(shard) >= s.cfg.shards.size() || !s.last_push[size_t(shard)].defined() ||
            s.last_push_version[size_t(shard)] != version)
          return;
        self->send(s.cfg.shards[size_t(shard)], push_atom::value, s.cfg.worker, version, s.last_push_clock,
                   s.last_push_samples, s.last_push[size_t(shard)]);
      },
      [=](computed_atom) {
        if (self->state.micro_size > 0) {
          self->state.back_to_back = true;
          next_micro_batch(self);
        } else {
          step_done(self);
        }
      },
      // A thief of the same step: give it from the back of the queue (made now, from the
      // thief's members, if this worker has not begun the step's compute). Under sync
      // nobody can be a step ahead of a worker that has not pushed, so another step's thief
      // gets nothing. Nor does anyone get from a worker whose injected failure is this step:
      // the failure takes its whole run of the step, whenever the thief asks.
      [=](steal_atom, int64_t step, const std::vector<int32_t>& members) {
        auto& s = self->state;
        if (s.micro_size == 0 || step != s.step || s.step >= s.cfg.steps ||
            s.cfg.stragglers->fails_at(s.cfg.worker, s.step))
          return std::vector<int64_t>{};
        ensure_queue(self, members);
        std::vector<int64_t> given = give_away(s.queue);
        s.report.given += int32_t(given.size());
        return given;
      },
  };
}

}  // namespace troupe
