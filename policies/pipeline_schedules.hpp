#pragma once
// The schedules behind make_pipeline_schedule, one .cpp each.
#include "policies/pipeline_schedule.hpp"

namespace troupe {

class gpipe_schedule : public pipeline_schedule {
 public:
  std::string name() const override { return "gpipe"; }
  std::vector<pipeline_op> order(int stage, int stages, int micro_batches) const override;
  double bubble_formula(int stages, int micro_batches, const pipeline_timing& t) const override;
  int peak_stash_formula(int stage, int stages, int micro_batches) const override;
};

class one_f_one_b_schedule : public pipeline_schedule {
 public:
  std::string name() const override { return "1f1b"; }
  std::vector<pipeline_op> order(int stage, int stages, int micro_batches) const override;
  double bubble_formula(int stages, int micro_batches, const pipeline_timing& t) const override;
  int peak_stash_formula(int stage, int stages, int micro_batches) const override;
};

class interleaved_1f1b_schedule : public pipeline_schedule {
 public:
  explicit interleaved_1f1b_schedule(int chunks) : v_(chunks) {}
  std::string name() const override { return "interleaved"; }
  int chunks() const override { return v_; }
  std::vector<pipeline_op> order(int stage, int stages, int micro_batches) const override;
  double bubble_formula(int stages, int micro_batches, const pipeline_timing& t) const override;
  int peak_stash_formula(int stage, int stages, int micro_batches) const override;

 private:
  int v_;
};

class zero_bubble_h1_schedule : public pipeline_schedule {
 public:
  std::string name() const override { return "zb-h1"; }
  bool splits_backward() const override { return true; }
  std::vector<pipeline_op> order(int stage, int stages, int micro_batches) const override;
  double bubble_formula(int stages, int micro_batches, const pipeline_timing& t) const override;
  int peak_stash_formula(int stage, int stages, int micro_batches) const override;
};

}  // namespace troupe
