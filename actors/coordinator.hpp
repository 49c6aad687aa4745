#pragma once
// coordinator: builds the actor graph of one job (a data_feeder and a device holding
// the model as a single stage), starts it, reports each step (progress line, metrics as
// JSON lines), evaluates at the end and answers the run request with the outcome.
//
// Accepts: (run_atom)        -> replies (eval_report, string sample) when the job ends
//          step_report       from the device
//          checkpoint_msg    from the device: phase 1 done, handed to the background writer
// Sends:   (start_atom, ...) to the feeder; (eval_atom, tensor_batch) and
//          (generate_atom, ...) requests to the device.
#include <memory>

#include "actors/messages.hpp"
#include "runtime/progress.hpp"
#include "runtime/training.hpp"

namespace troupe {

struct coordinator_options {
  bool live_progress = true;  // rewrite one progress line in place (a terminal)
  bool quiet = false;         // no progress at all (tests)
  int32_t prefetch = 2;       // batches in flight from the feeder to the device
  // One of several processes of the job (troupe launch): this is process `rank` of
  // `world`; the processes meet through a file rendezvous in `rendezvous` and keep their
  // links apart from other jobs' by `group`. Each runs replicas / world replicas.
  int rank = 0, world = 1;
  std::string rendezvous;
  bool serve_store = true;
  // A checkpoint to continue from (troupe train --resume): its "device" shard and step.
  std::shared_ptr<const checkpoint_version> resume_from;  // rank 0 serves a tcp:// rendezvous (false: troupe launch does)
  uint64_t group = 0;
  // elastic.mode "respawn": this process replaces a lost one (troupe launch respawned it);
  // `rank` is its member id, which may be beyond `world`.
  bool elastic_join = false;
  std::string host = "127.0.0.1";  // the address this process listens on for its links
  progress_display display() const {
    return quiet ? progress_display::quiet : live_progress ? progress_display::live_line : progress_display::log_lines;
  }
};

struct coordinator_state {
  proto::JobSpec spec;
  std::shared_ptr<const training_data> data;
  coordinator_options opts;
  int64_t total_steps = 0;
  caf::actor feeder, dev;
  int64_t first_step = 0;                     // > 0: resumed from a checkpoint of that step
  std::unique_ptr<checkpoint_writer> writer;  // train.checkpoint_every > 0
  caf::response_promise done;
  std::unique_ptr<progress_log> progress;
  static inline const char* name = "coordinator";
};

caf::behavior coordinator(caf::stateful_actor<coordinator_state>* self, proto::JobSpec spec,
                          std::shared_ptr<const training_data> data, coordinator_options opts);

}  // namespace troupe
