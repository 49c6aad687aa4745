#pragma once
// Training through parameter shards (policy.name other than "allreduce"): a ps_coordinator
// spawns policy.shards param_shard actors and policy.workers ps_worker actors, watches the
// workers (one that fails leaves the shards' quorum; the others go on), reports progress,
// keeps parameter snapshots over wall-clock time for offline evaluation, stops at
// policy.time_limit_s, and collects the shards' statistics.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/messages.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/progress.hpp"
#include "runtime/sharding.hpp"
#include "runtime/training.hpp"
#include "transport/communicator.hpp"

namespace troupe {

// The parameters at one moment: every shard's served tensor (shared, never written).
struct ps_snapshot {
  double t = 0;              // seconds since the workers started
  int64_t version = 0;       // shard 0's version
  int64_t worker_steps = 0;  // gradients pushed by then, all workers
  std::vector<tensor> shards;
};

struct ps_outcome {
  std::vector<std::shared_ptr<const shard_layout>> layouts;
  std::vector<double> step_loss;      // per worker step k: the workers' loss on step k, weighted by examples
  std::vector<int32_t> step_workers;  // how many workers trained step k
  // Per worker over the run: examples trained, and (policy.steal_micro_batches)
  // micro-batches it stole from others and others stole from it.
  std::vector<int64_t> worker_samples, stolen, given;
  std::vector<ps_snapshot> snapshots;  // every policy.snapshot period, and the final parameters last
  std::vector<shard_stats> shards;
  std::vector<std::string> failures;  // workers that failed, and why
  std::vector<std::string> moves;     // shards whose standby copy took over (elastic respawn)
  int64_t worker_steps = 0, samples = 0, bytes = 0;
  double seconds = 0;  // from start to the last worker's end
  bool time_limited = false;
  // Applied-gradient staleness over all shards; updates per second of shard 0.
  double mean_staleness() const;
  double updates_per_s() const;
  // The whole model's parameters of a snapshot, into an arena of the model's table.
  void assemble(const ps_snapshot& snap, arena& whole) const;
};

struct ps_options {
  bool announce_failures = false;  // print a line when a worker fails
  double snapshot_every_s = 0;     // 0: only the final parameters
  // Also the parameters the moment the shards' versions reach these (under a synchronous
  // rule every shard's version v is the same update).
  std::vector<int64_t> snapshot_versions;
  progress_log* progress = nullptr;  // where steps and shard statistics go (none: not logged)
  // Equal work instead of equal steps: > 0 lets each worker run up to that many steps and
  // stops them all once they have pushed `stop_after_pushes` gradients together (so under
  // an asynchronous rule the fast workers take the work a straggler does not). A gradient
  // already on its way when they stop may still be applied.
  int64_t worker_step_limit = 0, stop_after_pushes = 0;
  // A checkpoint to start from (troupe train --resume): one "shard-S" per shard; the
  // synchronous rule only (check_ps_checkpoints).
  std::shared_ptr<const checkpoint_version> resume_from;
  // Parameters to start from instead of those the spec's seed makes (a model trained
  // before, as DiLoCo's paper starts from one): the whole model's flat f32 parameters in
  // the model table's layout. The shards' optimizers start fresh. Empty: the seed's. Every
  // process of a job must pass the same. Not with resume_from.
  tensor start_params;
  // Set by run_ps_training (elastic.mode "respawn" over processes): shards may move to
  // their standby copies, so a request to one that fails is asked again.
  bool shards_move = false;
};

// Checkpoints of a policy job (train.checkpoint_every, --resume): each shard copies its
// parameters and optimizer state when its version is a multiple of checkpoint_every and
// process 0 writes the copies as shards "shard-0".. of version step-V. Under the
// synchronous rule version V is after step V, and a resumed run is the uninterrupted one
// bit for bit; other rules have no step the shards share, and are refused (input_error
// naming the rule). With `resume`: input_error unless it holds every shard of this job.
void check_ps_checkpoints(const proto::JobSpec& spec, const checkpoint_version* resume);

// Which process holds which shard and worker when a policy job runs as `world` processes
// (troupe launch): shard s in process s % world, worker w in process w % world, the
// coordinator in process 0.
struct ps_placement {
  int rank = 0, world = 1;
  int shard_process(int shard) const;
  int worker_process(int worker) const;
  int standby_process(int shard) const;  // elastic respawn: where its standby copy runs
  // input_error when some process would hold nothing.
  static ps_placement of(const proto::JobSpec& spec, int rank, int world);
};

// A policy job's processes: where this one stands, and a group of one rank per process
// over which their actors talk (actors/actor_bridge.hpp).
struct ps_processes {
  ps_placement place;
  std::shared_ptr<communicator> group;
  // elastic respawn: waits until the launcher has counted `process` lost (true: it is gone
  // for good, and its shards may move to their copies) or a deadline passes (false: a link
  // between live processes failed, which the job cannot mend, so it ends). Unset: false.
  std::function<bool(int process)> confirm_lost;
};

// elastic.mode "respawn" of a parameter-shard job (troupe launch, the synchronous rule):
// shard s has a standby copy in process (s % N + 1) % N that replays each of its updates
// (param_shard), and when the shard's process is lost the copy takes over, in place: the
// other processes' messages for the shard go to it (actor_bridge::move), the workers push
// again what the lost process may have taken with it, and no survivor restarts. The lost
// process's workers leave the quorum as failed workers do. Process 0 (the coordinator's)
// is not covered: its loss ends the job. input_error for what it cannot do.
void check_ps_respawn(const proto::JobSpec& spec, int world);

// Runs the job to its end (or its time limit) in a fresh actor system: the whole job, or
// with `procs` this process's part of it (only process 0's outcome is filled in; the
// others return once their shards and workers have ended). Throws input_error for bad
// data, runtime_error when the job fails (a link to another process failed included).
ps_outcome run_ps_training(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                           const ps_options& opts, const ps_processes* procs = nullptr);

}  // namespace troupe
