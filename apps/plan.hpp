#pragma once
// The plan of a job: which layers each pipeline stage holds and what memory it needs.
#include <string>
#include <vector>

#include "runtime/proto/job.pb.h"

namespace troupe {

struct stage_plan {
  int stage = 0;
  std::vector<std::string> layers;  // layer names, chunk by chunk
  int64_t params = 0;               // parameters held (a tied one counts on each holder)
  double param_mb = 0, grad_mb = 0, optimizer_mb = 0;
  int peak_stash = 0;               // micro-batch chunk activations held at once (schedule)
  double stash_mb_per_micro = 0;    // what one micro-batch leaves for backward, largest chunk
  double peak_activation_mb = 0;
};

// Measures activation sizes by running one micro-batch forward on real data.
std::vector<stage_plan> plan_job(const proto::JobSpec& spec);
std::string format_plan(const proto::JobSpec& spec, const std::vector<stage_plan>& plan);
int plan_main(const std::vector<std::string>& args);

}  // namespace troupe
