// Stage actors executing a schedule: every pass runs once, in the schedule's order, and
// the stash each stage holds is exactly what the schedule's formula says.
#include <doctest/doctest.h>

#include <mutex>

#include "actors/device.hpp"
#include "actors/pipeline_run.hpp"

using namespace troupe;

namespace {

struct test_config : caf::actor_system_config {
  test_config() { register_message_types(*this); }
};

// Records every pass in the order stages ran them (compute calls happen on the stages'
// own threads, hence the lock).
class recording_compute : public stage_compute {
 public:
  struct event {
    int stage_chunk_tag;  // chunk
    int64_t step;
    int micro;
    bool forward;
  };
  tensor forward(int chunk, int64_t step, int micro, const tensor& x) override {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back({chunk, step, micro, true});
    (void)x;
    tensor out = tensor::empty({1});
    out.f32()[0] = float(micro + 1);  // what the last stage sums up as losses
    return out;
  }
  tensor backward(int chunk, int64_t step, int micro, const tensor& dy) override {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back({chunk, step, micro, false});
    return dy;
  }
  std::mutex mu;
  std::vector<event> events;
};

}  // namespace

TEST_CASE("stage actors: each schedule runs every pass once per step, with the formula's stash") {
  test_config cfg;
  caf::actor_system sys{cfg};
  for (const std::string& name : pipeline_schedule_names()) {
    std::shared_ptr<const pipeline_schedule> sched = make_pipeline_schedule(name);
    for (int p : {1, 2, 3}) {
      int m = 2 * p;
      CAPTURE(name);
      CAPTURE(p);
      auto r = run_emulated_pipeline(sys, sched, p, m, std::chrono::microseconds(300),
                                     std::chrono::microseconds(300), std::chrono::microseconds(300), 2);
      for (int s = 0; s < p; ++s) CHECK(r.peak_stash[size_t(s)] == sched->peak_stash_formula(s, p, m));
      // The bubble is timing, measured by `troupe bench pipeline`, not asserted here.
      CHECK(r.bubble >= 0.0);
      CHECK(r.bubble < 1.0);
    }
  }
}

TEST_CASE("stage actors: passes follow the schedule's order on each stage, and losses reach the reporter") {
  test_config cfg;
  caf::actor_system sys{cfg};
  const int p = 3, m = 4;
  std::shared_ptr<const pipeline_schedule> sched = make_pipeline_schedule("1f1b");
  std::vector<std::shared_ptr<recording_compute>> computes;
  std::vector<caf::actor> stages;
  tensor token = tensor::zeros({1});
  // Every stage on one device: the device's single thread runs all their passes.
  caf::actor dev = sys.spawn<caf::detached>(stage_device, 1);
  for (int s = 0; s < p; ++s) {
    computes.push_back(std::make_shared<recording_compute>());
    stage_config c;
    c.device = dev;
    c.stage = s;
    c.stages = p;
    c.micro_batches = m;
    c.schedule = sched;
    c.compute = computes.back();
    c.source = [token](int64_t, int) { return token; };
    stages.push_back(sys.spawn(stage, c));
  }
  caf::scoped_actor self{sys};
  for (auto& st : stages) self->send(st, peers_atom::value, stages, caf::actor_cast<caf::actor>(self));
  for (int64_t step = 0; step < 2; ++step) {
    for (auto& st : stages) self->send(st, step_atom::value, step);
    for (int got = 0; got < p; ++got)
      self->receive([&](const stage_report& r) {
        CHECK(r.step == step);
        CHECK(r.ops == 2 * m);
        CHECK(r.loss_sum == (r.stage == p - 1 ? 1 + 2 + 3 + 4 : 0));
      });
  }
  for (auto& st : stages) self->send_exit(st, caf::exit_reason::user_shutdown);
  self->send_exit(dev, caf::exit_reason::user_shutdown);
  for (int s = 0; s < p; ++s) {
    auto want = sched->order(s, p, m);
    auto& ev = computes[size_t(s)]->events;
    REQUIRE(ev.size() == 2 * want.size());
    for (size_t i = 0; i < ev.size(); ++i) {
      const auto& op = want[i % want.size()];
      CHECK(ev[i].step == int64_t(i / want.size()));
      CHECK(ev[i].micro == op.micro);
      CHECK(ev[i].forward == (op.kind == pass_kind::forward));
    }
  }
}
