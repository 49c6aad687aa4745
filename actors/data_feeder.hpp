#pragma once
// data_feeder: turns the job's data into batch messages for one device, keeping at most
// `window` batches in flight (credit-based backpressure: a device returns one credit
// per batch it has consumed).
//
// Accepts: (start_atom, actor device, int64 first_step, int64 total_steps, int32 window)
//                                       first_step > 0: a resumed job, whose earlier batches
//                                       are drawn and dropped (the sampler's sequence holds)
//          (credit_atom)                -> sends the next tensor_batch to the device
//          (eval_atom)                  -> replies tensor_batch (step -1): the eval set
// Sends:   tensor_batch to the device.
#include <memory>
#include <vector>

#include "actors/messages.hpp"
#include "runtime/stage_model.hpp"  // step_batches
#include "runtime/training.hpp"

namespace troupe {

struct data_feeder_state {
  std::unique_ptr<batch_source> source;
  caf::actor device;
  int64_t next_step = 0;
  int64_t total_steps = 0;
  static inline const char* name = "data_feeder";
};

caf::behavior data_feeder(caf::stateful_actor<data_feeder_state>* self, proto::JobSpec spec,
                          std::shared_ptr<const training_data> data);

// The data feeder of a pipeline job: draws each step's examples (in step order, when the
// coordinator asks, so it runs at most as far ahead as the coordinator lets it) and
// sends every stage that reads data its micro-batches' shares as data_msg.
//
// Accepts: (step_atom, int64 step)  -> draws step `step` (steps come in order) and sends
//          data_msg{step, micro} to readers[replica] (each actor once per micro-batch).
struct pipeline_feeder_state {
  std::shared_ptr<step_batches> batches;
  std::vector<std::vector<caf::actor>> readers;  // [replica]: the stage actors that read data
  int64_t next_step = 0;
  static inline const char* name = "data_feeder";
};

// first_step: the job goes on from there (a resumed job): `batches` already skipped the
// steps before it.
caf::behavior pipeline_feeder(caf::stateful_actor<pipeline_feeder_state>* self, std::shared_ptr<step_batches> batches,
                              std::vector<std::vector<caf::actor>> readers, int64_t first_step = 0);

}  // namespace troupe
