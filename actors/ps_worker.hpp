#pragma once
// ps_worker: a whole copy of the model that trains against parameter shards. Each step it
// pulls every shard's slice (the shard may hold the pull back, as its rule says), trains on
// its own slice of the step's global batch (worker w of n takes examples [w B/n, (w+1) B/n)
// of the batch the single-process run would take), pushes each shard its slice of the
// gradient, and reports the step to the coordinator. With policy.sample_ms it emulates a
// slower device: the step lasts sample_ms x examples x the straggler factor, real compute
// included, and the rest is a timer, so the actor's thread is free meanwhile.
//
// Accepts: (start_atom)        begin training
//          (computed_atom)     internal: the emulated compute time is over
// Sends:   pull/push/leave to the shards; worker_report to the coordinator. It leaves
//          every shard and quits normally after its last step, and quits with an error
//          at an injected failure (policy.stragglers.fail_at_step).
#include <chrono>
#include <memory>
#include <vector>

#include "actors/messages.hpp"
#include "policies/stragglers.hpp"
#include "runtime/sharding.hpp"
#include "runtime/training.hpp"

namespace troupe {

struct ps_worker_config {
  proto::JobSpec spec;
  std::shared_ptr<const training_data> data;
  int32_t worker = 0;
  int64_t steps = 0;
  std::vector<std::shared_ptr<const shard_layout>> layouts;
  std::vector<caf::actor> shards;
  caf::actor coordinator;
  std::shared_ptr<const straggler_injector> stragglers;
};

struct ps_worker_state {
  ps_worker_config cfg;
  std::unique_ptr<model> net;
  arena params, grads;
  std::unique_ptr<batch_source> source;
  std::vector<int64_t> global_idx, my_idx;
  std::vector<int64_t> versions;  // per shard: the version of the parameters held
  int64_t clock = 0;              // gradients pushed
  size_t awaiting = 0;            // pulls not yet answered
  std::chrono::steady_clock::time_point pull_start;
  worker_report report;           // of the step in progress
  static inline const char* name = "ps_worker";
};

caf::behavior ps_worker(caf::stateful_actor<ps_worker_state>* self, ps_worker_config cfg);

}  // namespace troupe
