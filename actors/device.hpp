#pragma once
// device: owns a compute thread pool and, for now, the whole model as a single stage
// (one trainer). Spawn it detached: it computes on its own thread.
//
// Accepts: tensor_batch                             -> one training step; sends a
//                                                      step_report to the coordinator and a
//                                                      credit_atom back to the sender
//          (eval_atom, tensor_batch)                -> replies eval_report
//          (generate_atom, string prompt, int32 n, uint64 seed) -> replies string
#include <memory>

#include "actors/messages.hpp"
#include "runtime/training.hpp"

namespace troupe {

struct device_state {
  std::unique_ptr<trainer> replica;
  caf::actor coordinator;
  int threads = 1;
  int64_t eval_chunk = 1;
  static inline const char* name = "device";
};

caf::behavior device(caf::stateful_actor<device_state>* self, proto::JobSpec spec, int64_t total_steps,
                     caf::actor coordinator);

}  // namespace troupe
