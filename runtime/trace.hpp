#pragma once
// Trace recording: spans of work on named tracks (one per actor), written as a Chrome
// trace (open it in Perfetto or chrome://tracing) and drawn as a timeline picture.
// Recording is off until a run starts a recorder; a span costs one locked push.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace troupe {

struct trace_span {
  int track = 0;
  std::string name;      // e.g. "F3" (forward of micro-batch 3)
  std::string category;  // forward, backward, allreduce, optimizer
  int64_t step = 0;
  double start_s = 0, end_s = 0;  // steady clock, seconds
};

class trace_recorder {
 public:
  // The tracks get ids in the order they are named.
  int track(const std::string& name);
  void record(trace_span span);
  std::vector<trace_span> spans() const;
  std::vector<std::string> track_names() const;
  // Chrome trace JSON ("X" complete events, microseconds from the first span).
  void write_chrome_trace(const std::string& path) const;
  // One row per track, the spans of steps [first_step, last_step] as coloured bars.
  void write_timeline_svg(const std::string& path, const std::string& title, int64_t first_step,
                          int64_t last_step) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::string> tracks_;
  std::vector<trace_span> spans_;
};

double steady_now_s();

}  // namespace troupe
