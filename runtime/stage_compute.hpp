#pragma once
// What a pipeline stage computes, seen from the stage actor: forward and backward of one
// micro-batch through one of its model chunks. The actor decides nothing and computes
// nothing itself; it feeds these in the order its schedule gives.
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace troupe {

struct checkpoint_shard;

class stage_compute {
 public:
  virtual ~stage_compute() = default;
  // The examples of micro-batch `micro` (i32 indices from the data feeder), given before
  // the forward of the first and of the last virtual stage: compute that reads data
  // gathers them (inputs for the first, targets for the last). Stand-ins ignore them.
  virtual void feed(int64_t step, int micro, const tensor& examples) { (void)step, (void)micro, (void)examples; }
  // x: the chunk's input (data for virtual stage 0). Returns its output: the activation
  // for the next virtual stage, or the micro-batch's loss (shape (1)) for the last.
  virtual tensor forward(int chunk, int64_t step, int micro, const tensor& x) = 0;
  // dy: gradient of the loss w.r.t. the chunk's output (for the last virtual stage, the
  // loss scale, shape (1)). Returns the gradient w.r.t. its input (undefined for the
  // first virtual stage).
  virtual tensor backward(int chunk, int64_t step, int micro, const tensor& dy) = 0;
  // Backward in two parts, for schedules that split it (zero-bubble): backward_input
  // returns what backward returns but leaves the weight gradients for backward_weight,
  // which a schedule calls later for the same chunk and micro-batch. Compute that cannot
  // split does all of it in backward_input, and nothing in backward_weight.
  virtual tensor backward_input(int chunk, int64_t step, int micro, const tensor& dy) {
    return backward(chunk, step, micro, dy);
  }
  virtual void backward_weight(int chunk, int64_t step, int micro) { (void)chunk, (void)step, (void)micro; }

  // Between steps (compute that owns parameters overrides these; an emulation has none).
  virtual void begin_step() {}
  virtual std::vector<std::string> param_names() const { return {}; }
  // Sum of squared gradients of this stage's parameters other than `shared` ones.
  virtual double grad_sum_squares(const std::vector<std::string>& shared) const { (void)shared; return 0; }
  // Views of the named parameters or of their gradients.
  virtual std::vector<tensor> params_of(const std::vector<std::string>& names) { (void)names; return {}; }
  virtual std::vector<tensor> grads_of(const std::vector<std::string>& names) { (void)names; return {}; }
  // All gradients as one flat buffer (what replicas all-reduce); undefined if none.
  virtual tensor flat_grads() { return {}; }
  // Called on the compute thread, during a step's last backward (or weight) passes, with
  // ranges [begin, end) of flat_grads() whose values are final for the step, so averaging
  // them can start while backward goes on. Every element is reported once per step, in
  // the same order on every replica. Compute that never calls it is averaged whole at the
  // end of its step.
  using grads_ready_fn = std::function<void(size_t begin, size_t end)>;
  virtual void on_grads_ready(grads_ready_fn fn) { (void)fn; }
  // The most bytes of activations this stage has held for backward at once, so far.
  virtual double peak_stash_bytes() const { return 0; }
  // Replaces the named gradients by `totals` (the sum over the stages sharing them),
  // scales all gradients by clip_scale and takes one optimizer step at lr.
  virtual void apply_update(const std::vector<std::string>& names, const std::vector<tensor>& totals,
                            float clip_scale, float lr) {
    (void)names, (void)totals, (void)clip_scale, (void)lr;
  }
  // Its state between steps (parameters and optimizer state) into a shard, reusing the
  // shard's tensors where they fit, and back (checkpoint_error when the shard is another
  // stage's, naming `what`). Compute without state saves nothing and loads anything.
  virtual void save_state(checkpoint_shard& s) const { (void)s; }
  virtual void load_state(const checkpoint_shard& s, const std::string& what) { (void)s, (void)what; }
};

// Stand-in compute for schedule experiments: sleeps for the configured time per pass
// (a stage's whole forward, input-gradient or weight-gradient pass, divided over its
// chunks; a whole backward is the last two) and passes a one-element tensor along.
// Sleeping, not spinning, so p stages emulate p devices on any core count.
class emulated_compute : public stage_compute {
 public:
  emulated_compute(std::chrono::microseconds t_fwd, std::chrono::microseconds t_bwd, std::chrono::microseconds t_wgt,
                   int chunks)
      : t_fwd_(t_fwd / chunks), t_bwd_(t_bwd / chunks), t_wgt_(t_wgt / chunks) {}
  tensor forward(int chunk, int64_t step, int micro, const tensor& x) override;
  tensor backward(int chunk, int64_t step, int micro, const tensor& dy) override;
  tensor backward_input(int chunk, int64_t step, int micro, const tensor& dy) override;
  void backward_weight(int chunk, int64_t step, int micro) override;

 private:
  std::chrono::microseconds t_fwd_, t_bwd_, t_wgt_;
};

}  // namespace troupe
