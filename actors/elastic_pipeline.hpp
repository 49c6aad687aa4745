#pragma once
// One process of an elastic pipeline job (elastic.mode "respawn" with parallel.stages > 1,
// under troupe launch). Each process keeps its place: the stages of the replicas
// split_processes gives its rank (actors/run_job.hpp), run as stage actors by
// run_pipeline_training. A view (policies/elastic_membership.hpp) names the process in
// each place; the cluster_coordinator never shrinks it: a lost process's place waits for
// a replacement, which takes it in the next view (view_replacing).
//
// State, so that a lost stage comes back where it was:
//   - every process snapshots its stages in memory after each step (runtime/
//     stage_snapshots.hpp, its 3 newest);
//   - where a stage has no copy in another process (one process per stage group holds
//     all its replicas: split world_r == 1), the next place keeps a standby copy of it:
//     each step the stage's final gradients go there before the step's gradient sum
//     (acknowledged), and the standby replays the optimizer step with the same totals,
//     clip scale and lr (the standby ring, in the .cpp);
//   - where it has (world_r > 1), the same stage of another replica group is a live copy.
// When the pipeline fails (a peer's links closed or went silent), every process drops the
// step in flight, says so (failed/<g>) and waits for the next view; there, the processes
// list what they hold, take the newest step T that every stage has somewhere (step 0, the
// seed's initial state, always), and each gets the states of its stages at T from its own
// memory or from the lowest place that holds them (a checkpoint shard's tensors over the
// view's control group). Then the pipeline starts again at step T on the same data: the
// job ends as the uninterrupted run does, bit for bit. No survivor restarts; only the
// step in flight is lost, since no stage takes a step's optimizer step before every
// standby has that step's gradients. A stage whose process and standby are both lost
// goes back to step 0, and says so.
//
// Each view's links are groups of their own (opts.group + (g + 1) * 2^20 + ...), so no
// message of an older view reaches a newer one.
#include <memory>

#include "actors/run_job.hpp"

namespace troupe {

// Trains this process's place to the end; place 0 at the end evaluates and returns the
// report (the others return eval.loss -1). input_error for a job this path cannot run;
// std::runtime_error when this process is dropped, no view comes in time, or the
// pipeline fails 3 times running from the same step (a fault no respawn cures).
job_outcome run_elastic_pipeline(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                                 const coordinator_options& opts);

}  // namespace troupe
