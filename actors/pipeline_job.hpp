#pragma once
// Trains a job as pipelines of stage actors in one process: the model's layers cut into
// stages x chunks, the schedule ordering each stage's work, `replicas` copies of the
// pipeline each on its share of the batch, every stage's passes on a device actor (the
// threads). run_pipeline_training builds that graph and hands it to a
// pipeline_coordinator actor, which drives the steps: after the passes, each stage's
// gradients are averaged over the replicas (bucketed ring all-reduce, overlapping
// backward), the gradients of parameters several stages hold (the tied embedding and
// head) summed between them, one global gradient norm taken for clipping, and each
// stage's optimizer step. The same job in one stage and one replica gives the same losses.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "actors/stage.hpp"
#include "runtime/progress.hpp"
#include "runtime/stage_model.hpp"

namespace troupe {

struct pipeline_options {
  int stages = 2;
  int replicas = 1;
  int micro_batches = 4;  // per replica
  std::string schedule = "1f1b";
  int chunks = 2;  // for the interleaved schedule
  // Device actors the stage actors run on (0: one per stage actor; see device_of in
  // runtime/partition.hpp), each with this many compute threads.
  int devices = 0;
  int threads_per_device = 1;
  // Gradient all-reduce bucket, in elements (0: one all-reduce after backward).
  size_t bucket_elems = 65536;
  // Optional: wraps each stage's compute (fault injection in tests and experiments).
  std::function<std::shared_ptr<stage_compute>(int stage, int replica, std::shared_ptr<stage_compute>)> wrap_compute;
  // Optional: every stage records its spans here, one track per stage actor.
  std::shared_ptr<trace_recorder> trace;
  // Optional: builds the model in code (the C++ API for layer lists a job spec cannot
  // express); called once per stage actor and once for the plan. Default: the spec's.
  std::function<std::unique_ptr<model>()> make_model;
  // Several processes (troupe launch): this one runs the replicas [first_replica,
  // first_replica + local_replicas) of `replicas` (local_replicas 0: all of them, here).
  // make_replica_group(s) returns this process's members of stage s's replica group,
  // one per local replica in order: ranks first_replica.. of a group of `replicas` that
  // spans the processes. global_loss(step, mean of the local replicas' losses) returns
  // the step's mean over every replica (all processes call it for every step, in order).
  int first_replica = 0;
  int local_replicas = 0;
  std::function<std::vector<std::shared_ptr<communicator>>(int stage)> make_replica_group;
  std::function<float(int64_t step, float local_loss)> global_loss;
  // Stages in several processes too: this process runs stages [first_stage, first_stage +
  // local_stages) of `stages` (local_stages 0: all of them). `pipe` links the processes that
  // hold the other stages of the same replicas, pipe rank i holding stages [i *
  // local_stages, (i + 1) * local_stages): activations and gradients cross it
  // (actors/remote_stage.hpp), the coordinator sums the gradient norm and the shared
  // gradients over it, and at the end pipe rank 0 gathers every parameter.
  int first_stage = 0;
  int local_stages = 0;
  std::shared_ptr<communicator> pipe;
  // Going on from a state (a checkpoint, or a respawn): the job's steps before first_step
  // are done, and initial[s] is stage s's state after them (every local replica's); each
  // local stage needs one (checkpoint_error, naming the stage, when one is missing or
  // another model's).
  int64_t first_step = 0;
  std::map<int, checkpoint_shard> initial;
  // Optional: the stage actors of the first local replica snapshot their state in here
  // (key (first_replica, stage)) after the optimizer steps where snapshots->due(steps
  // done) (runtime/stage_snapshots.hpp); the other replicas hold the same.
  std::shared_ptr<stage_snapshots> snapshots;
  // Optional: called after each step, on the coordinator (steps done; every local stage's
  // snapshot of it, where due, is in `snapshots`). What it throws fails the job.
  std::function<void(int64_t steps_done)> on_step;
  // Optional, stages in several processes: called on the coordinator before step `step`'s
  // gradient sum over the pipe (after which every stage takes its optimizer step); it may
  // wait (for a standby's acknowledgement of the step's gradients). What it throws fails the job.
  std::function<void(int64_t step)> before_update;
  // Optional, a model of several stages: on_grads(stage, step, flat gradients) from each
  // local stage of the first local replica, on its device, once its gradients of the
  // step are final (before the sum over the pipe); after_sum(step, shared names, their
  // totals, clip scale, lr) on the coordinator, once the step's optimizer step is decided
  // (what every stage's apply_update then takes). A standby copy of a stage elsewhere
  // replays the step from the two (actors/elastic_pipeline.cpp).
  std::function<void(int stage, int64_t step, const tensor& flat_grads)> on_grads;
  std::function<void(int64_t step, const std::vector<std::string>& shared, const std::vector<tensor>& totals,
                     float clip_scale, float lr)>
      after_sum;
  static pipeline_options from(const proto::JobSpec& spec);
};

struct pipeline_outcome {
  std::vector<float> losses;                      // mean loss of each step
  std::map<std::string, tensor> params;           // every parameter after the last step
  std::vector<std::vector<std::string>> layout;   // stage -> names of the parameters it holds
                                                  // (the same in every replica)
  std::vector<double> peak_stash_mb;              // stage -> most activation MB held, measured
                                                  // (-1: the stage runs in another process)
  std::vector<double> step_s;                     // wall time of each step, start to optimizer done
};

// Stage `stage`'s compute as run_pipeline_training builds it (its chunks of the model by
// opts.stages, opts.schedule and opts.chunks; the seed's initial parameters), without data:
// a standby copy of a stage another process runs.
std::unique_ptr<stage_model> build_stage_model(const proto::JobSpec& spec, const pipeline_options& opts, int stage);

// progress (optional) gets every step's loss, learning rate and gradient norm.
pipeline_outcome run_pipeline_training(caf::actor_system& sys, const proto::JobSpec& spec,
                                       const pipeline_options& opts, int64_t steps, progress_log* progress = nullptr);

}  // namespace troupe
