#include "actors/coordinator.hpp"


#include "actors/data_feeder.hpp"
#include "actors/device.hpp"

namespace troupe {

namespace {

void finish(caf::stateful_actor<coordinator_state>* self) {
  auto& s = self->state;
  if (s.writer) {
    try {
      s.writer->flush();  // every checkpoint taken is on disk before the job reports its end
    } catch (const std::exception& e) {
      s.done.deliver(caf::make_error(caf::sec::runtime_error, std::string("checkpoint failed: ") + e.what()));
      self->send_exit(s.feeder, caf::exit_reason::user_shutdown);
      self->send_exit(s.dev, caf::exit_reason::user_shutdown);
      self->quit();
      return;
    }
  }
  self->request(s.feeder, caf::infinite, eval_atom::value).then([=](tensor_batch& eval_set) {
    auto& s = self->state;
    self->request(s.dev, caf::infinite, eval_atom::value, std::move(eval_set)).then([=](const eval_report& ev) {
      auto& s = self->state;
      s.progress->eval(ev.loss, ev.accuracy, ev.count);
      auto deliver = [=](const std::string& sample) {
        auto& s = self->state;
        s.progress->finish();
        s.done.deliver(ev, sample);
        self->send_exit(s.feeder, caf::exit_reason::user_shutdown);
        self->send_exit(s.dev, caf::exit_reason::user_shutdown);
        self->quit();
      };
      if (s.data->kind != model_kind::gpt || s.spec.train().sample_tokens() == 0) {
        deliver("");
        return;
      }
      self->request(s.dev, caf::infinite, generate_atom::value, std::string("\n"),
                    int32_t(s.spec.train().sample_tokens()), uint64_t(s.spec.train().seed()))
          .then([=](const std::string& sample) { deliver(sample); });
    });
  });
}

}  // namespace

caf::behavior coordinator(caf::stateful_actor<coordinator_state>* self, proto::JobSpec spec,
                          std::shared_ptr<const training_data> data, coordinator_options opts) {
  auto& s = self->state;
  s.spec = std::move(spec);
  s.data = std::move(data);
  s.opts = opts;
  s.total_steps = total_steps(s.spec, *s.data);
  return {
      [=](run_atom) {
        auto& s = self->state;
        s.done = self->make_response_promise();
        try {  // exceptions never leave a handler
          s.progress = std::make_unique<progress_log>(s.spec, s.total_steps, s.opts.display());
        } catch (const std::exception& e) {
          s.done.deliver(caf::make_error(caf::sec::runtime_error, e.what()));
          return;
        }
        std::shared_ptr<const checkpoint_shard> restore;
        if (s.opts.resume_from) {
          s.first_step = s.opts.resume_from->step;
          restore = std::shared_ptr<const checkpoint_shard>(s.opts.resume_from, &s.opts.resume_from->shards.at("device"));
        }
        if (s.spec.train().checkpoint_every() > 0)
          s.writer = std::make_unique<checkpoint_writer>(s.spec.train().checkpoint_dir(),
                                                         int(s.spec.train().checkpoint_keep()));
        s.dev = self->spawn<caf::detached + caf::monitored>(device, s.spec, s.total_steps,
                                                             caf::actor_cast<caf::actor>(self), restore);
        s.feeder = self->spawn<caf::monitored>(data_feeder, s.spec, s.data);
        // A child that stops before the job ends fails the job: never a silent hang.
        self->set_down_handler([=](caf::down_msg& dm) {
          auto& s = self->state;
          if (!s.done.pending()) return;
          std::string who = dm.source == s.dev.address() ? "device" : "data_feeder";
          s.done.deliver(caf::make_error(caf::sec::runtime_error, who + " stopped: " + self->system().render(dm.reason)));
          self->send_exit(s.feeder, caf::exit_reason::user_shutdown);
          self->send_exit(s.dev, caf::exit_reason::user_shutdown);
          self->quit();
        });
        self->send(s.feeder, start_atom::value, s.dev, s.first_step, s.total_steps, s.opts.prefetch);
      },
      [=](const checkpoint_msg& c) {
        auto& s = self->state;
        if (s.writer && c.shard) s.writer->submit(c.step, {{"device", *c.shard}});
      },
      [=](const step_report& r) {
        self->state.progress->step(r.step, r.loss, r.lr, r.grad_norm, r.samples, r.tokens, r.compute_s);
        if (r.step + 1 == self->state.total_steps) finish(self);
      },
  };
}

}  // namespace troupe
