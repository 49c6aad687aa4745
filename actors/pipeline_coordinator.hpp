#pragma once
// pipeline_coordinator: starts and watches a graph of stage actors (built by
// run_pipeline_training) and drives its steps. Per step: every stage actor gets
// (step_atom, step) and reports when its schedule's order is done; where the model spans
// several stages, the coordinator then asks each for its replica-averaged gradients
// (grads_atom), sums the gradients of parameters two stages share (the tied embedding),
// takes one global norm for clipping and sends every stage its optimizer step
// (apply_atom). It reports the end of each step to the progress log. It monitors every
// stage and device actor: one that stops, or a stage that reports an error, fails the
// job at once (communicator groups aborted, so no survivor waits out a deadline).
// Where every stage holds the whole model (one stage, any replicas), stages step by
// themselves and the coordinator sends each step one step ahead, so a stage starts the
// next step without waiting for the coordinator. Spawn it detached (see stage.hpp: idle
// pool workers poll on 2 cores).
//
// Accepts: (run_atom) -> int32 0 once every step ran and the parameters are collected
//          into graph.out, or an error naming what failed.
//          stage_report, and the stages' replies.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/pipeline_job.hpp"

namespace troupe {

struct pipeline_graph {
  std::vector<std::vector<caf::actor>> stages;  // [replica][stage], this process's replicas
  int first_replica = 0;                        // the replica stages[0] is
  std::vector<caf::actor> devices;
  std::vector<std::shared_ptr<communicator>> groups;  // one member of each stage's replica group
  caf::actor feeder;  // pipeline_feeder: draws each step's examples when asked
  int micro_batches = 1;
  int64_t steps = 0, total_steps = 0;  // steps to run up to; the schedule's length (learning rate)
  int64_t first_step = 0;              // the first step to run (a job that goes on from a state)
  std::function<void(int64_t steps_done)> on_step;  // optional: after each step, before the next
  std::function<void(int64_t step)> before_update;  // optional: before the sum over the pipe
  std::function<void(int64_t, const std::vector<std::string>&, const std::vector<tensor>&, float, float)>
      after_sum;  // optional: (step, shared, totals, clip scale, lr) once they are known
  const proto::JobSpec* spec = nullptr;
  progress_log* progress = nullptr;   // optional
  // Optional (replicas in several processes): the step's loss over every replica, from the
  // mean over this process's.
  std::function<float(int64_t step, float local_loss)> global_loss;
  // Optional (stages in several processes): this process holds stages [first_stage,
  // first_stage + local_stages) of every local replica; the other slots of `stages` are
  // remote_stage actors (`proxies`). The gradient norm and the shared gradients are summed
  // over `pipe`, and the layout of the whole model gathered over it.
  int first_stage = 0, local_stages = 0;
  std::shared_ptr<communicator> pipe;
  std::vector<caf::actor> proxies;
  std::shared_ptr<pipeline_outcome> out;  // filled in as the job runs
  bool local(int stage) const { return !pipe || (stage >= first_stage && stage < first_stage + local_stages); }
};

struct pipeline_coordinator_state {
  pipeline_graph g;
  std::vector<caf::actor> all;  // every stage actor of this process, replica-major
  std::vector<std::string> shared;
  std::map<std::string, int64_t> numel;  // every parameter's element count (with a pipe)
  caf::response_promise done;
  // The current step.
  int64_t step = -1;
  double t0 = 0, loss_sum = 0, self_norm = -1, sum_sq = 0;
  size_t waiting = 0;  // replies still due in the current phase
  int64_t sent = -1;   // the last step sent to the stages
  int64_t drawn = -1;  // the last step asked of the feeder
  std::map<int64_t, std::vector<stage_report>> reports;  // by step, as they arrive
  std::vector<double> busy;
  std::vector<tensor> totals;
  std::string failure;
  static inline const char* name = "pipeline_coordinator";
};

caf::behavior pipeline_coordinator(caf::stateful_actor<pipeline_coordinator_state>* self, pipeline_graph g);

}  // namespace troupe
