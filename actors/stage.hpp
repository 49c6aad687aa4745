#pragma once
// stage: one pipeline stage, holding one or more model chunks (virtual stages). For each
// step it runs its schedule's order of forward, backward (and, for zero-bubble schedules,
// weight-gradient) passes, each as soon as its input has arrived; inputs that arrive
// early wait in an inbox, so the schedule (a policy) alone decides how many micro-batches
// are in flight. The stage decides and moves messages; every computation runs on its
// device actor's thread (cfg.device), one at a time, so several stages may share one
// device. Spawn it detached: on this 2-core machine, stages on CAF's work-stealing pool
// made every pass ~20% slower (idle pool workers poll, and steal the compute threads'
// cores); a detached actor sleeps until its next message.
//
// Accepts: (peers_atom, vector<actor> stages, actor reporter)  the stage actors, by index
//          (step_atom, int64 step)                              run one step's order (a step
//                                                               sent during another waits)
//          pipe_msg                                             an activation or gradient
//          data_msg                                             a micro-batch's examples
//          (names_atom)                     -> vector<string>   its parameters' names
//          (grads_atom, vector<string> shared) -> (int32 replica, int32 stage, double sum of
//                                              squares of the other gradients, vector<tensor>
//                                              views of the shared ones), after averaging the
//                                              gradients over the replicas (ring all-reduce)
//          (apply_atom, vector<string> names, vector<tensor> totals, float clip_scale, float lr)
//                                           -> int32 0 when the optimizer step is done
//          (params_atom, vector<string> names) -> vector<tensor> views of those parameters
// Sends:   pipe_msg to the stage of the next (activations) or previous (gradients)
//          virtual stage; stage_report to the reporter when its order is done;
//          (run_atom, device_task) requests to its device.
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include "actors/messages.hpp"
#include "policies/pipeline_schedule.hpp"
#include "runtime/stage_compute.hpp"
#include "runtime/stage_snapshots.hpp"
#include "runtime/trace.hpp"
#include "transport/bucketed_allreduce.hpp"
#include "transport/communicator.hpp"

namespace troupe {

struct stage_config {
  int stage = 0, stages = 1, micro_batches = 1;
  int replica = 0;
  caf::actor device;  // where this stage's compute runs (a stage_device or device actor)
  // The same stage in every replica (rank = replica); null with one replica.
  std::shared_ptr<communicator> replica_group;
  // A stage that holds the whole model (one stage, any replicas) finishes its step alone:
  // average with its replicas, clip by the gradient norm, optimizer step, then report —
  // one message round per step instead of three. lr_at gives step -> learning rate.
  bool self_step = false;
  float max_norm = 0;
  std::function<float(int64_t)> lr_at;
  // Gradients are averaged over the replicas in buckets of about this many elements,
  // each started as soon as backward has finished it (0: one all-reduce after backward).
  size_t bucket_elems = 65536;
  // Optional: where the stage records its spans, on track `track`; the all-reduces that
  // overlap backward go on `comm_track`.
  std::shared_ptr<trace_recorder> trace;
  int track = 0, comm_track = 0;
  std::shared_ptr<const pipeline_schedule> schedule;
  std::shared_ptr<stage_compute> compute;
  // fed: the data feeder sends this stage's micro-batch examples (data_msg), and the first
  // and last virtual stage's forwards wait for them; else `source` gives the input of
  // virtual stage 0 for (step, micro) (a stand-in, for emulated compute).
  bool fed = false;
  std::function<tensor(int64_t step, int micro)> source;
  // Optional: after each optimizer step where snapshots->due(steps done), the stage's
  // state goes in here (on its device, before it reports or answers), keyed (replica, stage).
  std::shared_ptr<stage_snapshots> snapshots;
  // Optional (a model of several stages): called on its device with (step, its flat
  // gradients) once they are final for the step (averaged over the replicas), before it
  // answers grads_atom; what it throws fails the step.
  std::function<void(int64_t step, const tensor& flat_grads)> on_grads;
};

struct stage_state {
  stage_config cfg;
  int chunks = 1;
  std::vector<caf::actor> peers;
  caf::actor reporter;
  int64_t step = -1;
  std::vector<pipeline_op> order;
  size_t next = 0;
  // (step, kind, micro, chunk) -> the tensor that op needs.
  std::map<std::tuple<int64_t, int, int, int>, tensor> inbox;
  std::map<std::pair<int64_t, int>, tensor> data;  // (step, micro) -> examples from the feeder
  stage_report report;
  int stash = 0;
  bool computing = false;  // a task is on the device; the next op waits for its result
  bool in_step = false;    // between a step's start and its report
  std::deque<int64_t> queued_steps;  // steps sent ahead (a whole-model stage runs them back to back)
  // With replicas: averages while backward runs. Shared with tasks on the device.
  std::shared_ptr<bucketed_allreduce> buckets;
  static inline const char* name = "stage";
};

caf::behavior stage(caf::stateful_actor<stage_state>* self, stage_config cfg);

}  // namespace troupe
