#pragma once
// ps_worker: a whole copy of the model that trains against parameter shards. Each step it
// pulls every shard's slice (the shard may hold the pull back, as its rule says), trains on
// its own slice of the step's global batch (worker w of n takes examples [w B/n, (w+1) B/n)
// of the batch the single-process run would take), pushes each shard its slice of the
// gradient, and reports the step to the coordinator. With policy.sample_ms it emulates a
// slower device: the step lasts sample_ms x examples x the straggler factor, real compute
// included, and the rest is a timer, so the actor's thread is free meanwhile.
//
// Under a local rule (local-sgd, diloco: update_rule::local_steps() = H > 0) the worker
// keeps an optimizer of its own (the job's, with its clipping and schedule): it pulls,
// takes H steps on its slices of H consecutive batches, and pushes each shard its slice of
// the change, pulled minus now; its last round may be shorter.
//
// With policy.balance_every (sync) the worker asks shard 0, after each pull, for the
// shares of the batch in force (policies/speed_batches.hpp), trains on its share, and
// tells shard 0 how long the step took.
//
// With policy.steal_micro_batches (sync) the step's batch is cut into micro-batches; the
// worker trains its own run of them, then steals from the others' queues until none is
// left (policies/work_stealing.hpp), and pushes the sample-weighted mean gradient of what
// it trained, with that many samples. The step's workers are its members as shard 0
// recorded them when the step's version was made (asked after the pulls): a worker that
// fails during step k takes its unstarted micro-batches of step k with it (the sync rule
// averages what the others push), and from step k + 1 the survivors share the whole batch.
//
// Accepts: (start_atom)        begin training
//          (peers_atom, vector<actor>)  every worker, by index: the victims of steals
//          (computed_atom)     internal: the emulated compute time is over
//          (steal_atom, step, members) -> vector<int64_t>: micro-batches of `step` given
//                              to a thief from the back of the queue (empty: none left)
//          (repush_atom, shard, version)  a shard moved to its standby copy (cfg.shards_move),
//                              which is at `version`: if this worker's last push to it was
//                              for that version, it may have been lost with the shard's
//                              process, and is sent again (the shard drops a second copy)
// Sends:   pull/push/leave to the shards (and to shard 0 shares or members requests, and
//          speed reports, as above); worker_report to the coordinator. It leaves
//          every shard and quits normally after its last step, and quits with an error
//          at an injected failure (policy.stragglers.fail_at_step), once that step has
//          begun.
#include <chrono>
#include <deque>
#include <memory>
#include <vector>

#include "actors/messages.hpp"
#include "policies/stragglers.hpp"
#include "runtime/optimizer.hpp"
#include "runtime/sharding.hpp"
#include "runtime/training.hpp"

namespace troupe {

struct ps_worker_config {
  proto::JobSpec spec;
  std::shared_ptr<const training_data> data;
  int32_t worker = 0;
  int64_t steps = 0;        // steps this worker may take (counted from 0, first_step included)
  int64_t first_step = 0;   // a resumed synchronous job: the checkpoint's step
  int64_t total_steps = 0;  // the job's steps: the learning-rate schedule's length
  std::vector<std::shared_ptr<const shard_layout>> layouts;
  std::vector<caf::actor> shards;
  caf::actor coordinator;
  std::shared_ptr<const straggler_injector> stragglers;
  // elastic.mode "respawn": a shard may move to its standby copy in another process; a
  // pull that fails is asked again (the shard's stand-in holds it until the move).
  bool shards_move = false;
};

struct ps_worker_state {
  ps_worker_config cfg;
  std::unique_ptr<model> net;
  arena params, grads;
  std::unique_ptr<batch_source> source;
  int local_steps = 0;             // H of a local rule; 0: push every gradient
  std::unique_ptr<optimizer> opt;  // a local rule's inner optimizer
  arena anchor;                    // a local rule: the parameters pulled last
  int64_t step = 0;                // steps trained (batches drawn)
  int round_steps = 0;             // a local rule: steps since the last pull
  int64_t round_samples = 0;
  bool balancing = false;       // policy.balance_every: shares of the batch from shard 0
  std::vector<int64_t> shares;  // ... for the step in progress
  std::vector<int64_t> global_idx, my_idx;
  // policy.steal_micro_batches (policies/work_stealing.hpp): the other workers, the queue
  // of this step's micro-batches not yet started, and the step's sum of gradients.
  int64_t micro_size = 0;                             // examples per micro-batch; 0: no stealing
  std::vector<caf::actor> peers;                      // every worker, by index (this one included)
  std::vector<int32_t> step_members;                  // the workers of the step pulled, from shard 0
  std::vector<int32_t> victims;                       // ... whom to ask of them (all at once)
  size_t asking = 0;                                  // steal requests not yet answered
  bool got_work = false;                              // ... and whether any answer had some
  bool back_to_back = false;                          // the last micro-batch's emulated time just ran out
  std::chrono::steady_clock::time_point device_free;  // ... when it did
  std::deque<int64_t> queue;
  int64_t queue_step = -1;  // the step `queue` belongs to
  arena accum;              // sum over its micro-batches of examples x gradient
  double loss_sum = 0;
  std::vector<int64_t> versions;  // per shard: the version of the parameters held
  // The last push to each shard (its slice, the version it was for), its clock and examples:
  // sent again when a shard moves (repush_atom).
  std::vector<tensor> last_push;
  std::vector<int64_t> last_push_version;
  int64_t last_push_clock = -1, last_push_samples = 0;
  bool finishing = false;  // cfg.shards_move: the last pull, after the last push, is out
  int64_t clock = 0;    // gradients pushed
  size_t awaiting = 0;  // pulls not yet answered
  std::chrono::steady_clock::time_point pull_start;
  worker_report report;  // of the step in progress
  static inline const char* name = "ps_worker";
};

caf::behavior ps_worker(caf::stateful_actor<ps_worker_state>* self, ps_worker_config cfg);

}  // namespace troupe
