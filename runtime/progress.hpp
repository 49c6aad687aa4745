#pragma once
// What a run tells the person watching it and leaves behind: the progress line, metrics
// as JSON lines, and the loss-curve picture. Used by whichever actor drives the steps.
#include <chrono>
#include <fstream>
#include <string>

#include "runtime/plot.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

enum class progress_display : uint8_t { live_line, log_lines, quiet };

class progress_log {
 public:
  // Opens (appends to) the spec's metrics file; throws input_error if it cannot.
  progress_log(const proto::JobSpec& spec, int64_t total_steps, progress_display display);
  // Step `step` (0-based) finished. extra_json: more fields for the metrics line, e.g.
  // "\"busy\":[0.8,0.7]" (no leading comma).
  void step(int64_t step, float loss, float lr, float grad_norm, int64_t samples, int64_t tokens, double compute_s,
            const std::string& extra_json = {});
  void eval(double loss, double accuracy, int64_t count);
  // One more metrics line as it is: a JSON object ({"event":"...",...}).
  void record(const std::string& json_object);
  // Writes the loss curve next to the metrics and prints where both are.
  void finish();
  double elapsed_s() const;

 private:
  const proto::JobSpec& spec_;
  int64_t total_;
  progress_display display_;
  std::ofstream metrics_;
  std::chrono::steady_clock::time_point start_, window_start_;
  int64_t window_samples_ = 0, window_tokens_ = 0;
  plot_series loss_curve_{"train loss", {}, {}};
};

}  // namespace troupe
