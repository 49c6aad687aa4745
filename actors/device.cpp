#include "actors/device.hpp"

#include <chrono>

#include "runtime/threads.hpp"

namespace troupe {

namespace {
// The first task on a device's thread sets its OpenMP team (a per-thread setting).
void use_threads(int threads) {
  static thread_local int current = -1;
  if (current != threads) current = threads, set_compute_threads(threads);
}
}  // namespace

caf::behavior device(caf::stateful_actor<device_state>* self, proto::JobSpec spec, int64_t total_steps,
                     caf::actor coordinator, std::shared_ptr<const checkpoint_shard> restore) {
  auto& s = self->state;
  s.threads = spec.train().threads();
  s.eval_chunk = spec.train().batch_size();
  s.coordinator = std::move(coordinator);
  s.replica = std::make_unique<trainer>(spec, total_steps);
  s.checkpoint_every = spec.train().checkpoint_every();
  s.total_steps = total_steps;
  if (s.checkpoint_every > 0) s.snapshots = std::make_unique<background_snapshot>();
  if (restore) s.replica->restore(*restore);  // checked by the coordinator before it spawned us
  return {
      [=](const tensor_batch& b) {
        auto& s = self->state;
        // OpenMP's thread count belongs to the calling thread: set it where we compute.
        set_compute_threads(s.threads);
        auto t0 = std::chrono::steady_clock::now();
        const float loss = s.replica->compute_gradients(b.x, b.y);
        if (s.snapshots) s.snapshots->settle();  // the last step's copy, before the update
        step_result r = s.replica->apply_gradients();
        r.loss = loss;
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        int64_t samples = b.x.dim(0);
        int64_t tokens = s.replica->net().kind == model_kind::gpt ? b.x.numel() : 0;
        self->send(caf::actor_cast<caf::actor>(self->current_sender()), credit_atom::value);
        self->send(s.coordinator, step_report{b.step, r.loss, r.grad_norm, r.lr, samples, tokens, dt});
        const int64_t done = s.replica->steps_done();
        if (s.checkpoint_every > 0 && done % s.checkpoint_every == 0) {
          if (done == s.total_steps) {  // nothing follows to hide it behind
            self->send(s.coordinator, checkpoint_msg{done, std::make_shared<const checkpoint_shard>(s.replica->snapshot())});
          } else {
            const trainer* replica = s.replica.get();
            s.snapshots->start([replica, coordinator = s.coordinator, done] {
              caf::anon_send(coordinator, checkpoint_msg{done, std::make_shared<const checkpoint_shard>(replica->snapshot())});
            });
          }
        }
      },
      [=](eval_atom, const tensor_batch& b) {
        auto& s = self->state;
        set_compute_threads(s.threads);
        eval_result r = s.replica->evaluate(b.x, b.y, s.eval_chunk);
        return eval_report{r.loss, r.accuracy, r.count};
      },
      [=](generate_atom, const std::string& prompt, int32_t count, uint64_t seed) {
        set_compute_threads(self->state.threads);
        return self->state.replica->generate(prompt, count, seed);
      },
      [=](run_atom, const device_task& t) {
        use_threads(self->state.threads);
        if (t.work) (*t.work)();
        return int32_t(0);
      },
  };
}

caf::behavior stage_device(caf::stateful_actor<device_state>* self, int threads) {
  self->state.threads = threads;
  return {
      [=](run_atom, const device_task& t) {
        use_threads(self->state.threads);
        if (t.work) (*t.work)();
        return int32_t(0);
      },
  };
}

}  // namespace troupe
