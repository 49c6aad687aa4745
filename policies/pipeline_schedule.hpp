#pragma once
// A pipeline schedule decides the order of work on each stage for one step of m
// micro-batches: which micro-batch's forward or backward runs next, and on which model
// chunk (virtual stage) where a stage holds several. It does not move bytes or own
// threads; a stage actor executes the order, waiting for inputs where it must.
//
// Names: p = pipeline stages, m = micro-batches per step, v = chunks per stage.
// Virtual stage of (stage s, chunk c) is c*p + s; activations flow through virtual
// stages 0 .. p*v-1 in order, gradients back.
#include <memory>
#include <string>
#include <vector>

namespace troupe {

// backward: the whole backward of a micro-batch, or only its input-gradient part when
// the schedule splits backward (splits_backward()); weight: the weight-gradient part,
// which only such schedules emit, after the same micro-batch's backward.
enum class pass_kind : uint8_t { forward, backward, weight };

struct pipeline_op {
  pass_kind kind = pass_kind::forward;
  int micro = 0;  // micro-batch index within the step
  int chunk = 0;  // model chunk on this stage (0 unless the schedule interleaves)
  bool operator==(const pipeline_op&) const = default;
};

// Times of one micro-batch's passes through a whole stage (all its chunks). A schedule
// that does not split backward runs t_bwd + t_wgt as one backward.
struct pipeline_timing {
  double t_fwd = 1.0;  // forward
  double t_bwd = 1.0;  // input-gradient part of backward
  double t_wgt = 1.0;  // weight-gradient part of backward
};

class pipeline_schedule {
 public:
  virtual ~pipeline_schedule() = default;
  virtual std::string name() const = 0;
  // Model chunks (virtual stages) per stage.
  virtual int chunks() const { return 1; }
  // Whether orders split each backward into backward (input gradient) and weight ops.
  virtual bool splits_backward() const { return false; }
  // The order of work on `stage` (0-based) of `stages` for one step of `micro_batches`.
  // Throws input_error when the schedule cannot serve this shape.
  virtual std::vector<pipeline_op> order(int stage, int stages, int micro_batches) const = 0;
  // The schedule's analysis: idle fraction of total stage time for passes timed `t`.
  virtual double bubble_formula(int stages, int micro_batches, const pipeline_timing& t) const = 0;
  // The most micro-batch activations (in chunk units) `stage` holds at once: from a
  // forward until the backward (or the weight op, where backward is split) that frees it.
  virtual int peak_stash_formula(int stage, int stages, int micro_batches) const = 0;
};

// "gpipe", "1f1b", "interleaved" (v = chunks, 2 by default), "zb-h1". Unknown names are an
// input_error naming the known ones.
std::unique_ptr<pipeline_schedule> make_pipeline_schedule(const std::string& name, int chunks = 2);
std::vector<std::string> pipeline_schedule_names();

}  // namespace troupe
