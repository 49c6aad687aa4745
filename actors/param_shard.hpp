#pragma once
// param_shard: one slice of the parameters (runtime/sharding.hpp) with its optimizer state.
// It receives gradient pushes, asks its update rule (policies/update_rule.hpp) which of the
// pending pushes make an update, applies that update, counts its version, and answers
// parameter pulls when the rule allows (a pull the rule holds back waits in the shard as a
// response promise). The rule decides; the shard moves the tensors and does the
// arithmetic through kernels/cpu/optim.hpp.
//
// Accepts: (push_atom, worker, version, clock, samples, tensor grad)   no reply
//          (pull_atom, worker, after_version, clock) -> (version, tensor params)
//          (leave_atom, worker)       the worker has finished or failed: it no longer counts
//          (params_atom, at_version)  -> (version, tensor params): the snapshot taken the
//                                        moment the version reaches at_version (at once if
//                                        it has already; 0: now)
//          (drain_atom)               -> drain_atom, once every worker has left (at once if
//                                        all have): everything they pushed is here
//          (stats_atom)               -> shard_stats
//          (replica_atom, version, tensor combined, lr, samples) -> version: as a standby
//                                        copy (elastic.mode "respawn"), the primary's update
//                                        to `version`, replayed with the same arithmetic
//          (promote_atom, vector<actor> workers)  the primary's process is lost and this
//                                        copy now takes its messages: each worker is asked
//                                        to push again what it pushed for this version
// Sends:   (ckpt_atom, shard, version, checkpoint_shard) to cfg.coordinator, with
//          train.checkpoint_every, after each update whose version is a multiple of it
//          (speed_atom, worker, busy_s, samples)   policy.balance_every, shard 0: a step's time
//          (shares_atom)              -> vector<int64_t>: each worker's share of the batch
//                                        for the current version (policies/speed_batches.hpp);
//                                        empty without policy.balance_every (equal slices)
//          (members_atom)             -> vector<int32_t>: shard 0 with policy.steal_micro_batches:
//                                        the workers live when the current version was made,
//                                        in order (the step's members, policies/work_stealing.hpp)
//          with cfg.standby: (replica_atom, ...) after each update, and every leave_atom,
//          to the standby; a version is served only once the standby has it, so a copy
//          that takes over is never behind what any worker pulled
//          as a promoted copy: (repush_atom, shard, version) to every worker, and
//          (moved_atom, shard, version) to cfg.coordinator
// Served parameter tensors are never written again (each version is a fresh copy that
// the pulls of that version share), so workers read them without locks.
#include <map>
#include <memory>
#include <vector>

#include "actors/messages.hpp"
#include "policies/speed_batches.hpp"
#include "policies/update_rule.hpp"
#include "runtime/optimizer.hpp"
#include "runtime/proto/job.pb.h"
#include "runtime/sharding.hpp"

namespace troupe {

// Staleness histogram bins: 0 .. kStalenessBins - 2, and the last for anything larger.
constexpr int kStalenessBins = 33;

struct param_shard_config {
  proto::JobSpec spec;
  std::shared_ptr<const shard_layout> layout;
  tensor initial;           // the shard's initial parameters (layout->table.total_numel() floats)
  int64_t total_steps = 0;  // the job's steps, for the learning-rate schedule
  // train.checkpoint_every > 0: each version that is a multiple of it is copied (phase 1
  // of a checkpoint) and sent to `coordinator` as (ckpt_atom, shard, version, copy).
  caf::actor coordinator;
  // A checkpoint's copy of this shard to start from (its version, optimizer state and
  // schedule clock): checkpoint_error if it is not this shard's.
  std::shared_ptr<const checkpoint_shard> resume;
  // elastic.mode "respawn": this shard's standby copy in another process (a param_shard of
  // the same config, without a standby of its own), which replays every update.
  caf::actor standby;
};

struct param_shard_state {
  struct pending_push {
    push_info info;
    tensor grad;
  };
  struct waiting_pull {
    pull_info info;
    caf::response_promise reply;
  };
  param_shard_config cfg;
  std::unique_ptr<update_rule> rule;
  arena params, combined;         // over cfg.layout->table
  proto::OptimizerSpec opt_spec;  // the job's, or the rule's outer optimizer
  std::unique_ptr<optimizer> opt;
  int64_t version = 0;
  int64_t applied_samples = 0;  // examples behind the updates so far: the lr schedule's clock
  worker_view workers;
  std::vector<pending_push> pending;
  std::vector<waiting_pull> pulls;
  tensor served;  // the parameters of `version`, as served
  int64_t served_version = -1;
  std::vector<tensor> pulled_at;                                // dc-asgd: the parameters each worker last pulled
  arena dc_meansq;                                              // dc-asgd with policy.dc_adaptive: moving mean of g*g
  std::multimap<int64_t, caf::response_promise> version_waits;  // snapshots asked for ahead
  std::vector<caf::response_promise> drains;                    // answered once no worker is live
  int64_t standby_has = 0;                   // with cfg.standby: the newest version the standby acked
  int64_t published = 0;                     // the newest version whose snapshots and checkpoint went out
  std::unique_ptr<speed_balancer> balancer;  // shard 0 with policy.balance_every
  std::vector<int32_t> members;              // the workers live when `version` was made ...
  bool tracks_members = false;               // ... kept up by shard 0 with policy.steal_micro_batches
  shard_stats stats;
  static inline const char* name = "param_shard";
};

caf::behavior param_shard(caf::stateful_actor<param_shard_state>* self, param_shard_config cfg);

}  // namespace troupe
