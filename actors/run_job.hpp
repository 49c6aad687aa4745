#pragma once
// Runs one job to its end in a fresh actor system: the entry point for `troupe train`
// and for tests that check the whole path through the actors.
#include <string>
#include <vector>

#include "actors/coordinator.hpp"

namespace troupe {

struct job_outcome {
  eval_report eval;
  std::string sample;  // generated text (GPT), empty otherwise
  double seconds = 0;
  int64_t steps = 0;
  std::string trace_path, timeline_path;  // pipeline runs: Chrome trace and timeline picture
  std::vector<double> peak_stash_mb;      // pipeline runs: measured activation peak per stage
};

// Throws input_error for bad data; returns the evaluation after the last step.
job_outcome run_job(const proto::JobSpec& spec, const coordinator_options& opts);

}  // namespace troupe
