#include "policies/pipeline_schedule.hpp"

#include "policies/pipeline_schedules.hpp"
#include "runtime/check.hpp"

namespace troupe {

std::vector<std::string> pipeline_schedule_names() { return {"gpipe", "1f1b", "interleaved", "zb-h1"}; }

std::unique_ptr<pipeline_schedule> make_pipeline_schedule(const std::string& name, int chunks) {
  if (name == "gpipe") return std::make_unique<gpipe_schedule>();
  if (name == "1f1b") return std::make_unique<one_f_one_b_schedule>();
  if (name == "interleaved") {
    if (chunks < 2) throw input_error("schedule 'interleaved' needs at least 2 chunks per stage, got " + std::to_string(chunks));
    return std::make_unique<interleaved_1f1b_schedule>(chunks);
  }
  if (name == "zb-h1") return std::make_unique<zero_bubble_h1_schedule>();
  std::string known;
  for (const auto& n : pipeline_schedule_names()) known += (known.empty() ? "" : ", ") + n;
  throw input_error("unknown pipeline schedule '" + name + "' (known: " + known + ")");
}

}  // namespace troupe
