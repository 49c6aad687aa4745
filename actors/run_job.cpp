#include "actors/run_job.hpp"

#include <chrono>

namespace troupe {

job_outcome run_job(const proto::JobSpec& spec, const coordinator_options& opts) {
  auto data = load_training_data(spec);  // bad data fails here, before any actor starts
  job_outcome out;
  out.steps = total_steps(spec, *data);
  if (out.steps == 0)
    throw input_error("train: the job has 0 steps (batch_size " + std::to_string(spec.train().batch_size()) +
                      " is larger than the training set)");
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  auto t0 = std::chrono::steady_clock::now();
  auto coord = sys.spawn(coordinator, spec, data, opts);
  caf::scoped_actor self{sys};
  std::string failure;
  self->request(coord, caf::infinite, run_atom::value)
      .receive(
          [&](const eval_report& ev, const std::string& sample) {
            out.eval = ev;
            out.sample = sample;
          },
          [&](const caf::error& err) { failure = sys.render(err); });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!failure.empty()) throw std::runtime_error("job failed: " + failure);
  return out;
}

}  // namespace troupe
