// A GPT trained as a pipeline of stage actors gives the losses and parameters of the
// same job trained in one piece, for every schedule and stage count: only the order of
// fp32 sums may differ (micro-batch gradient accumulation, per-stage norms).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>

#include "actors/pipeline_job.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"

using namespace troupe;

namespace {

struct test_config : caf::actor_system_config {
  test_config() { register_message_types(*this); }
};

proto::JobSpec pipeline_test_job() {
  // 6 blocks: 8 layers in all, enough for 4 stages x 2 chunks.
  return parse_job_spec(R"({"name": "pipeline_equivalence",
    "model": {"gpt": {"n_layer": 6, "n_head": 2, "d_model": 32, "context": 16}},
    "data": {"dataset": "fortunes"},
    "optimizer": {"adamw": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1}, "grad_clip": 1.0},
    "train": {"batch_size": 8, "steps": 20, "threads": 1}})",
                        "pipeline_test_job");
}

double rel_error(const tensor& a, const tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double d = double(a.f32()[i]) - double(b.f32()[i]);
    num += d * d;
    den += double(b.f32()[i]) * double(b.f32()[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

}  // namespace

TEST_CASE("pipeline: every schedule on 1, 2 and 4 stages x 1 and 2 replicas matches the single-stage run") {
  proto::JobSpec spec = pipeline_test_job();
  set_compute_threads(1);
  // The reference: the whole model in one trainer, the whole batch at once.
  auto data = load_training_data(spec);
  batch_source source(spec, data);
  trainer ref(spec, 20);
  std::vector<float> ref_losses;
  for (int s = 0; s < 20; ++s) {
    batch b = source.next();
    ref_losses.push_back(ref.train_step(b.x, b.y).loss);
  }

  test_config cfg;
  caf::actor_system sys{cfg};
  for (const std::string& schedule : pipeline_schedule_names())
    for (int stages : {1, 2, 4})
    for (int replicas : {1, 2}) {
      CAPTURE(schedule);
      CAPTURE(stages);
      CAPTURE(replicas);
      pipeline_options o;
      o.stages = stages;
      o.replicas = replicas;
      o.micro_batches = 4;
      o.schedule = schedule;
      pipeline_outcome out = run_pipeline_training(sys, spec, o, 20);
      REQUIRE(out.losses.size() == 20);
      double worst_loss = 0;
      for (size_t i = 0; i < 20; ++i)
        worst_loss = std::max(worst_loss, std::abs(double(out.losses[i]) - ref_losses[i]) / ref_losses[i]);
      CHECK(worst_loss <= 1e-4);
      const auto& table = ref.net().table;
      REQUIRE(out.params.size() == table.entries().size());
      double worst_param = 0;
      std::string worst_name;
      for (size_t i = 0; i < table.entries().size(); ++i) {
        auto it = out.params.find(table.entries()[i].name);
        REQUIRE(it != out.params.end());
        double e = rel_error(it->second, ref.params().get(int(i)));
        if (e > worst_param) worst_param = e, worst_name = table.entries()[i].name;
      }
      CAPTURE(worst_name);
      MESSAGE(schedule, " p=", stages, " r=", replicas, " loss ", worst_loss, " param ", worst_param, " ", worst_name);
      CHECK(worst_param <= 1e-4);
      if (stages > 1) {
        // The tied embedding lives on the first and the last stage.
        CHECK(std::count(out.layout.front().begin(), out.layout.front().end(), "wte.weight") == 1);
        CHECK(std::count(out.layout.back().begin(), out.layout.back().end(), "wte.weight") == 1);
      }
    }
}

TEST_CASE("pipeline: stages that share device actors (threads) train the same as stages on their own") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 4;
  o.replicas = 1;
  o.micro_batches = 4;
  o.schedule = "1f1b";
  pipeline_outcome own = run_pipeline_training(sys, spec, o, 6);
  o.devices = 1;  // all four stages take turns on one thread
  pipeline_outcome one = run_pipeline_training(sys, spec, o, 6);
  CHECK(one.losses == own.losses);  // the same passes in the same order per stage: same bits
  o.stages = 2;
  o.replicas = 2;
  o.devices = 2;  // one device per replica, shared by its two stages
  pipeline_outcome per_replica = run_pipeline_training(sys, spec, o, 6);
  o.devices = 0;
  pipeline_outcome each = run_pipeline_training(sys, spec, o, 6);
  CHECK(per_replica.losses == each.losses);
  for (const auto& [name, t] : each.params) CHECK_MESSAGE(rel_error(per_replica.params.at(name), t) == 0.0, name);
  o.devices = 3;  // replicas would share one
  CHECK_THROWS_AS(run_pipeline_training(sys, spec, o, 1), input_error);
}

TEST_CASE("pipeline: a batch that does not split into the micro-batches is a clear error") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.micro_batches = 3;  // 8 rows do not split in 3
  try {
    run_pipeline_training(sys, spec, o, 1);
    FAIL("expected an error");
  } catch (const input_error& e) {
    CHECK(std::string(e.what()).find("train.batch_size 8 must be a multiple of the micro-batches per step (3)") !=
          std::string::npos);
  }
}

namespace {

// Passes everything through, but the forward of micro-batch 1 at step 2 throws.
class failing_compute : public stage_compute {
 public:
  explicit failing_compute(std::shared_ptr<stage_compute> inner) : inner_(std::move(inner)) {}
  void feed(int64_t step, int micro, const tensor& examples) override { inner_->feed(step, micro, examples); }
  tensor forward(int chunk, int64_t step, int micro, const tensor& x) override {
    if (step == 2 && micro == 1) throw std::runtime_error("injected failure");
    return inner_->forward(chunk, step, micro, x);
  }
  tensor backward(int chunk, int64_t step, int micro, const tensor& dy) override {
    return inner_->backward(chunk, step, micro, dy);
  }
  void begin_step() override { inner_->begin_step(); }
  std::vector<std::string> param_names() const override { return inner_->param_names(); }
  double grad_sum_squares(const std::vector<std::string>& shared) const override {
    return inner_->grad_sum_squares(shared);
  }
  std::vector<tensor> params_of(const std::vector<std::string>& n) override { return inner_->params_of(n); }
  std::vector<tensor> grads_of(const std::vector<std::string>& n) override { return inner_->grads_of(n); }
  tensor flat_grads() override { return inner_->flat_grads(); }
  void on_grads_ready(grads_ready_fn fn) override { inner_->on_grads_ready(std::move(fn)); }
  void apply_update(const std::vector<std::string>& names, const std::vector<tensor>& totals, float clip_scale,
                    float lr) override {
    inner_->apply_update(names, totals, clip_scale, lr);
  }

 private:
  std::shared_ptr<stage_compute> inner_;
};

}  // namespace

TEST_CASE("pipeline: a stage that throws stops the job with an error naming the stage and the step") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 3;
  o.micro_batches = 4;
  o.wrap_compute = [](int stage, int, std::shared_ptr<stage_compute> c) -> std::shared_ptr<stage_compute> {
    return stage == 1 ? std::make_shared<failing_compute>(c) : c;
  };
  try {
    run_pipeline_training(sys, spec, o, 5);
    FAIL("expected the job to fail");
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    CHECK_MESSAGE(what.find("stage 1 failed in the forward pass of micro-batch 1 (chunk 0) at step 2: injected failure") !=
                      std::string::npos,
                  what);
  }
}

TEST_CASE("pipeline: a stage actor that dies outside a pass fails the job with the reason, never hangs") {
  // param_names() runs in the stage actor's own handler: its exception kills the actor.
  struct nameless : failing_compute {
    using failing_compute::failing_compute;
    std::vector<std::string> param_names() const override { throw std::runtime_error("no names today"); }
  };
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 2;
  o.replicas = 2;
  o.micro_batches = 2;
  o.wrap_compute = [](int stage, int replica, std::shared_ptr<stage_compute> c) -> std::shared_ptr<stage_compute> {
    return stage == 1 && replica == 0 ? std::make_shared<nameless>(c) : c;
  };
  auto t0 = std::chrono::steady_clock::now();
  try {
    run_pipeline_training(sys, spec, o, 3);
    FAIL("expected the job to fail");
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    MESSAGE(what);
    CHECK(what.find("pipeline failed") != std::string::npos);
    CHECK(what.find("stage 1 of replica 0: no names today") != std::string::npos);
  }
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 10.0);
}

TEST_CASE("pipeline: the trace has every pass, all-reduce and optimizer step on one track per stage actor") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 2;
  o.replicas = 2;
  o.micro_batches = 2;
  o.trace = std::make_shared<trace_recorder>();
  run_pipeline_training(sys, spec, o, 3);
  auto spans = o.trace->spans();
  // A track per stage actor, and one per stage actor for its all-reduces.
  CHECK(o.trace->track_names().size() == 8);
  std::map<std::string, int> per_category;
  int syncs = 0, buckets = 0;
  for (const auto& s : spans) {
    ++per_category[s.category];
    CHECK(s.end_s >= s.start_s);
    syncs += s.name == "sync";
    buckets += s.name.rfind("AR", 0) == 0;
  }
  CHECK(per_category["forward"] == 3 * 4 * 2);  // steps x stage actors x micro-batches
  CHECK(per_category["backward"] == 3 * 4 * 2);
  CHECK(syncs == 3 * 4);        // each stage actor waits for its buckets once per step
  CHECK(buckets >= 3 * 4);      // at least one bucket each
  CHECK(per_category["allreduce"] == syncs + buckets);
  CHECK(per_category["optimizer"] == 3 * 4);
  o.trace->write_chrome_trace("/tmp/troupe_test_trace.json");
  o.trace->write_timeline_svg("/tmp/troupe_test_timeline.svg", "test", 1, 2);
  std::ifstream f("/tmp/troupe_test_trace.json");
  std::string json((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(json.find("\"thread_name\"") != std::string::npos);
  CHECK(json.find("\"name\":\"B1\",\"cat\":\"backward\",\"ph\":\"X\"") != std::string::npos);
}

TEST_CASE("pipeline: the measured activation stash follows the schedule (1F1B holds p-s, GPipe all m)") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 2;
  o.micro_batches = 4;
  o.schedule = "gpipe";
  auto gpipe = run_pipeline_training(sys, spec, o, 2);
  o.schedule = "1f1b";
  auto ofob = run_pipeline_training(sys, spec, o, 2);
  REQUIRE(gpipe.peak_stash_mb.size() == 2);
  CHECK(gpipe.peak_stash_mb[0] > 0);
  // Every micro-batch stashes the same bytes on a stage, so the peaks are in the ratio of
  // the counts: GPipe 4,4 and 1F1B 2,1.
  CHECK(gpipe.peak_stash_mb[0] / ofob.peak_stash_mb[0] == doctest::Approx(2.0));
  CHECK(gpipe.peak_stash_mb[1] / ofob.peak_stash_mb[1] == doctest::Approx(4.0));
}

TEST_CASE("pipeline: one replica failing stops the others at once, not after the all-reduce deadline") {
  proto::JobSpec spec = pipeline_test_job();
  test_config cfg;
  caf::actor_system sys{cfg};
  pipeline_options o;
  o.stages = 1;
  o.replicas = 2;
  o.micro_batches = 4;
  o.wrap_compute = [](int, int replica, std::shared_ptr<stage_compute> c) -> std::shared_ptr<stage_compute> {
    return replica == 1 ? std::make_shared<failing_compute>(c) : c;
  };
  auto t0 = std::chrono::steady_clock::now();
  try {
    run_pipeline_training(sys, spec, o, 5);
    FAIL("expected the job to fail");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("at step 2: injected failure") != std::string::npos);
  }
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(waited < 10.0);  // the all-reduce deadline is 30 s
}
