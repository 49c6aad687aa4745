#pragma once
// Runs a pipeline of stage actors with emulated compute for some steps and measures what
// the schedule did: the bubble, the makespan, and the peak stash of every stage.
#include <chrono>
#include <vector>

#include "actors/stage.hpp"

namespace troupe {

struct pipeline_measurement {
  double bubble = 0;      // median over steps of 1 - busy / (stages * makespan)
  double makespan_s = 0;  // of the median step
  std::vector<int> peak_stash;
};

pipeline_measurement run_emulated_pipeline(caf::actor_system& sys, std::shared_ptr<const pipeline_schedule> schedule,
                                           int stages, int micro_batches, std::chrono::microseconds t_fwd,
                                           std::chrono::microseconds t_bwd, std::chrono::microseconds t_wgt,
                                           int steps);

}  // namespace troupe
