#pragma once
// Replays a schedule's orders on ideal stages (no communication cost): each op starts as
// soon as its stage is free and its inputs exist. Gives the bubble and stash a schedule
// implies, so plans and benchmarks can print them, and checks that the orders are
// complete and cannot deadlock.
#include <vector>

#include "policies/pipeline_schedule.hpp"

namespace troupe {

struct pipeline_sim_result {
  double makespan = 0;
  double bubble = 0;            // 1 - busy / (stages * makespan)
  std::vector<int> peak_stash;  // per stage, in chunk activations
};

// Throws std::logic_error when an order misses or repeats an op, or deadlocks.
pipeline_sim_result simulate_pipeline(const pipeline_schedule& schedule, int stages, int micro_batches,
                                      pipeline_timing timing = {});

}  // namespace troupe
