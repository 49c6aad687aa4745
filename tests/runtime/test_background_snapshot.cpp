// The pipelined snapshot (runtime/background_snapshot.hpp): the copy runs on its own
// thread while the caller goes on, settle() waits for it and hands back its error; and a
// trainer's snapshot made there while the next step computes its gradients is the state
// after the step it was started for, bit for bit (the copy that the synchronous
// snapshot_into makes).
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>

#include "runtime/background_snapshot.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"
#include "runtime/training.hpp"

using namespace troupe;

TEST_CASE("background_snapshot: start returns while the copy runs, settle waits for it and rethrows its error") {
  background_snapshot snapshots;
  CHECK(snapshots.last_copy_ms() < 0);
  CHECK(snapshots.settle() >= 0);  // nothing started: nothing to wait for
  std::promise<void> go;
  std::shared_future<void> released = go.get_future().share();
  std::atomic<bool> done{false};
  std::thread::id ran_on;
  // The copy cannot end before start() has returned: it waits for this thread's go.
  snapshots.start([&] {
    ran_on = std::this_thread::get_id();
    released.wait();
    done = true;
  });
  CHECK_FALSE(done.load());
  go.set_value();
  snapshots.settle();
  CHECK(done.load());
  CHECK(ran_on != std::this_thread::get_id());
  CHECK(snapshots.last_copy_ms() >= 0);

  snapshots.start([] { throw std::runtime_error("no room for the copy"); });
  CHECK_THROWS_WITH_AS(snapshots.settle(), "no room for the copy", std::runtime_error);
  CHECK_NOTHROW(snapshots.settle());  // the error is handed back once
  int runs = 0;
  snapshots.start([&] { ++runs; });
  snapshots.start([&] { ++runs; });  // settles the first before it starts
  snapshots.settle();
  CHECK(runs == 2);
}

TEST_CASE(
    "background_snapshot: a trainer's copy made during the next step's gradients is the step's state to the bit") {
  auto spec = parse_job_spec(R"({"model": {"mlp": {"widths": [784, 64, 32, 10]}}, "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3}}, "train": {"batch_size": 64, "steps": 20}})",
                             "the pipelined snapshot job");
  set_compute_threads(1);
  auto data = load_training_data(spec);
  batch_source source(spec, data);
  trainer t(spec, 20);
  background_snapshot snapshots;
  checkpoint_shard pipelined;
  for (int k = 0; k < 3; ++k) {
    batch b = source.next();
    t.train_step(b.x, b.y);
    const checkpoint_shard expected = t.snapshot();  // synchronous, before anything runs on
    snapshots.start([&] { t.snapshot_into(pipelined); });
    batch next = source.next();
    t.compute_gradients(next.x, next.y);  // reads the state the copy reads
    snapshots.settle();
    CAPTURE(k);
    REQUIRE(pipelined.tensors.size() == expected.tensors.size());
    for (const auto& [name, want] : expected.tensors) {
      CAPTURE(name);
      const tensor& got = pipelined.tensors.at(name);
      REQUIRE(got.bytes() == want.bytes());
      CHECK(std::memcmp(got.raw(), want.raw(), want.bytes()) == 0);
    }
    CHECK(pipelined.texts == expected.texts);
    CHECK(pipelined.texts.at("step") == std::to_string(2 * k + 1));
    t.apply_gradients();  // the update of the step that ran beside the copy
  }
}
