// Training through parameter-shard actors (actors/ps_job.hpp): synchronous SGD over n
// workers and S shards is the single-process run of the same job, a worker that fails
// leaves the quorum instead of hanging it, backup workers drop what they should, and the
// time limit stops a run.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>

#include "actors/ps_job.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"

using namespace troupe;

namespace {

proto::JobSpec mlp_job(const std::string& policy, const std::string& train = R"("batch_size": 24, "steps": 20)") {
  return parse_job_spec(R"({"name": "ps_test",
    "model": {"mlp": {"widths": [784, 48, 32, 10]}},
    "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0.05}},
    "train": {)" + train + R"(, "threads": 1},
    "policy": )" + policy + "}",
                        "ps_test.json");
}

double rel(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::abs(b)); }

}  // namespace

TEST_CASE("param shards: synchronous SGD over n workers and S shards matches the single-process run") {
  set_compute_threads(1);
  const proto::JobSpec base = mlp_job(R"({"name": "sync"})");
  auto data = load_training_data(base);
  // The reference: the same job on one trainer.
  trainer ref(base, 20);
  batch_source src(base, data);
  std::vector<double> ref_loss;
  for (int k = 0; k < 20; ++k) {
    batch b = src.next();
    ref_loss.push_back(ref.train_step(b.x, b.y).loss);
  }
  for (int workers : {1, 2, 4}) {
    for (int shards : {1, 3}) {
      CAPTURE(workers);
      CAPTURE(shards);
      const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": )" + std::to_string(workers) +
                                          R"(, "shards": )" + std::to_string(shards) + "}");
      ps_outcome out = run_ps_training(spec, data, {});
      REQUIRE(out.step_loss.size() == 20);
      for (int k = 0; k < 20; ++k) {
        CHECK(out.step_workers[size_t(k)] == workers);
        CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
      }
      REQUIRE(out.shards.size() == size_t(shards));
      for (const shard_stats& st : out.shards) {
        CHECK(st.version == 20);
        CHECK(st.applied == 20 * workers);
        CHECK(st.dropped == 0);
        CHECK(st.staleness[0] == 20 * workers);  // synchronous: every gradient fresh
      }
      arena whole(ref.net().table);
      out.assemble(out.snapshots.back(), whole);
      double worst = 0;
      for (size_t i = 0; i < ref.net().table.entries().size(); ++i)
        for (int64_t j = 0; j < ref.net().table.entries()[i].numel(); ++j)
          worst = std::max(worst, double(std::abs(whole.ptr(int(i))[j] - ref.params().ptr(int(i))[j])));
      CHECK(worst < 1e-4);
    }
  }
}

TEST_CASE("param shards: a worker that fails leaves the synchronous quorum, and the others finish") {
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 3, "shards": 2,
      "stragglers": [{"worker": 1, "fail_at_step": 5}]})");
  auto data = load_training_data(spec);
  const auto t0 = std::chrono::steady_clock::now();
  ps_outcome out = run_ps_training(spec, data, {});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
  REQUIRE(out.failures.size() == 1);
  CHECK(out.failures[0].find("worker 1") == 0);
  CHECK(out.failures[0].find("injected failure at step 5") != std::string::npos);
  REQUIRE(out.step_workers.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(out.step_workers[size_t(k)] == (k < 5 ? 3 : 2));
  for (const shard_stats& st : out.shards) CHECK(st.version == 20);
  CHECK(out.worker_steps == 5 * 3 + 15 * 2);
}

TEST_CASE("param shards: backup workers make each update from at most n - b gradients and drop the rest") {
  const proto::JobSpec spec = mlp_job(R"({"name": "backup", "workers": 4, "shards": 2, "backup": 1})");
  ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
  for (const shard_stats& st : out.shards) {
    CHECK(st.pushes == 80);
    CHECK(st.applied + st.dropped == st.pushes);  // nothing left pending
    // A dropped worker's step is lost, so rounds can outnumber a worker's steps; once
    // workers finish, the few still running make the last rounds among themselves.
    CHECK(st.version >= 20);
    CHECK(st.applied <= 3 * st.version);
    CHECK(st.dropped >= 5);
  }
}

TEST_CASE("param shards: asynchronous rules apply every gradient and count its staleness") {
  for (const char* name : {"downpour", "ssp", "staleness-lr", "dc-asgd", "k-async"}) {
    CAPTURE(name);
    const proto::JobSpec spec = mlp_job(std::string(R"({"name": ")") + name + R"(", "workers": 3, "shards": 2})");
    ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
    CHECK(out.worker_steps == 60);
    for (const shard_stats& st : out.shards) {
      CHECK(st.pushes == 60);
      CHECK(st.applied == 60);
      // k-async (K = workers / 2 = 1 here) and the rest: one update a gradient.
      CHECK(st.version == 60);
      int64_t n = 0;
      for (int64_t c : st.staleness) n += c;
      CHECK(n == 60);
    }
    CHECK(std::isfinite(out.step_loss.back()));
    CHECK(out.step_loss.back() < out.step_loss.front());
  }
}

TEST_CASE("param shards: policy.time_limit_s stops the workers, and the parameters so far come back") {
  const proto::JobSpec spec = mlp_job(R"({"name": "downpour", "workers": 2, "sample_ms": 2, "time_limit_s": 1})",
                                      R"("batch_size": 24, "steps": 100000)");
  ps_options opts;
  opts.snapshot_every_s = 0.25;
  const auto t0 = std::chrono::steady_clock::now();
  ps_outcome out = run_ps_training(spec, load_training_data(spec), opts);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(out.time_limited);
  CHECK(s < 5);
  CHECK(out.worker_steps > 10);
  CHECK(out.worker_steps < 2 * 1000 / 24 + 10);  // 24 ms a step each: the emulated time holds
  CHECK(out.snapshots.size() >= 3);
  for (size_t i = 1; i < out.snapshots.size(); ++i) CHECK(out.snapshots[i].t >= out.snapshots[i - 1].t);
}
