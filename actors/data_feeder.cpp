#include "actors/data_feeder.hpp"

namespace troupe {

namespace {

void push_next(caf::stateful_actor<data_feeder_state>* self) {
  auto& s = self->state;
  if (s.next_step >= s.total_steps) return;
  batch b = s.source->next();
  self->send(s.device, tensor_batch{s.next_step++, 0, 0, std::move(b.x), std::move(b.y)});
}

}  // namespace

caf::behavior data_feeder(caf::stateful_actor<data_feeder_state>* self, proto::JobSpec spec,
                          std::shared_ptr<const training_data> data) {
  self->state.source = std::make_unique<batch_source>(spec, std::move(data));
  return {
      [=](start_atom, const caf::actor& device, int64_t first_step, int64_t total_steps, int32_t window) {
        auto& s = self->state;
        s.device = device;
        s.source->skip(first_step);
        s.next_step = first_step;
        s.total_steps = total_steps;
        for (int32_t i = 0; i < window; ++i) push_next(self);
      },
      [=](credit_atom) { push_next(self); },
      [=](eval_atom) {
        batch b = self->state.source->eval_set();
        return tensor_batch{-1, 0, 0, std::move(b.x), std::move(b.y)};
      },
  };
}

caf::behavior pipeline_feeder(caf::stateful_actor<pipeline_feeder_state>* self, std::shared_ptr<step_batches> batches,
                              std::vector<std::vector<caf::actor>> readers, int64_t first_step) {
  self->state.batches = std::move(batches);
  self->state.next_step = first_step;
  self->state.readers = std::move(readers);
  return {
      [=](step_atom, int64_t step) {
        auto& s = self->state;
        // Steps are drawn in order: the sampler's sequence is the single trainer's.
        for (; s.next_step <= step; ++s.next_step) {
          auto shares = s.batches->next_step();
          for (size_t r = 0; r < shares.size(); ++r)
            for (size_t m = 0; m < shares[r].size(); ++m)
              for (const caf::actor& reader : s.readers.at(r))
                self->send(reader, data_msg{s.next_step, int32_t(m), s.next_step, shares[r][m]});
        }
      },
  };
}

}  // namespace troupe
