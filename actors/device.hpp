#pragma once
// device: owns a compute thread and its OpenMP team; every computation of the actors
// placed on it runs there, one at a time. Spawn it detached. Two kinds:
//  - device: the whole model as one trainer (the single-stage path), and stage work;
//  - stage_device: stage work only; several stage actors may share one.
//
// Accepts: tensor_batch                             -> one training step; sends a
//                                                      step_report to the coordinator and a
//                                                      credit_atom back to the sender
//          (eval_atom, tensor_batch)                -> replies eval_report
//          (generate_atom, string prompt, int32 n, uint64 seed) -> replies string
//          (run_atom, device_task)                  -> runs the task here, replies int32 0
//                                                      (the task reports its own failures)
#include <memory>

#include "actors/messages.hpp"
#include "runtime/background_snapshot.hpp"
#include "runtime/training.hpp"

namespace troupe {

struct device_state {
  std::unique_ptr<trainer> replica;
  caf::actor coordinator;
  int threads = 1;
  int64_t eval_chunk = 1;
  int64_t checkpoint_every = 0;
  int64_t total_steps = 0;
  // With checkpoint_every: the copy after a step runs here during the next step's forward
  // and backward (runtime/background_snapshot.hpp). After `replica`: it stops first.
  std::unique_ptr<background_snapshot> snapshots;
  static inline const char* name = "device";
};

// `restore`: a checkpoint shard to start from (null: fresh). With train.checkpoint_every
// it sends the coordinator a checkpoint_msg after every that many steps: copied on a
// thread of its own while the next step computes its gradients, and sent from there
// before that step's update (the last step's copy is made at once, before anything ends).
caf::behavior device(caf::stateful_actor<device_state>* self, proto::JobSpec spec, int64_t total_steps,
                     caf::actor coordinator, std::shared_ptr<const checkpoint_shard> restore);
caf::behavior stage_device(caf::stateful_actor<device_state>* self, int threads);

}  // namespace troupe
