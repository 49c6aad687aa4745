#pragma once
// The real compute of one pipeline stage: some model chunks (contiguous layer ranges),
// their parameters, gradients and optimizer state, and the activations stashed between a
// micro-batch's forward and backward. Stages of one model each hold only their own
// parameters; a parameter two stages share (the tied embedding and head) is held by both
// and its gradients are summed between them before the optimizer step.
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/model.hpp"
#include "runtime/optimizer.hpp"
#include "runtime/stage_compute.hpp"
#include "runtime/training.hpp"

namespace troupe {

// The examples of a job's steps, drawn in step order (the same sequence a single trainer
// sees) and cut into micro-batch shares, and the rows of any share. The data feeder draws
// (not thread-safe); the stages that read data (the first for inputs, the last for
// targets) gather their micro-batch's rows on their own device (gather is thread-safe), so
// replicas assemble their data in parallel and never wait on one another.
class step_batches {
 public:
  step_batches(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, int micro_batches,
               int replicas = 1);
  // The next step's examples (image indices or window starts, i32), by [replica][micro].
  std::vector<std::vector<tensor>> next_step();
  // Draws and drops the next `steps` steps: where a resumed job's batches start.
  void skip(int64_t steps) { source_.skip(steps); }
  // The rows (inputs and targets) of one share.
  batch gather(const tensor& examples) const;

 private:
  batch_source source_;
  int micro_batches_, replicas_;
  std::vector<int64_t> idx_;
};

// Layer ranges [first, last) of the model, one per virtual stage, balanced by cost.
std::vector<std::pair<size_t, size_t>> plan_virtual_stages(const model& m, int virtual_stages);

class stage_model : public stage_compute {
 public:
  // net: this stage's own instance of the whole model (it keeps only its layers' params).
  // chunk_ranges[c]: the layers of this stage's chunk c. init: the whole model's initial
  // parameters (by name), so every stage starts where a single-process run starts.
  stage_model(const proto::JobSpec& spec, std::unique_ptr<model> net, std::vector<std::pair<size_t, size_t>> chunk_ranges,
              const arena& init, std::shared_ptr<step_batches> data, int micro_batches, int replica = 0);

  void feed(int64_t step, int micro, const tensor& examples) override;
  tensor forward(int chunk, int64_t step, int micro, const tensor& x) override;
  tensor backward(int chunk, int64_t step, int micro, const tensor& dy) override;
  tensor backward_input(int chunk, int64_t step, int micro, const tensor& dy) override;
  void backward_weight(int chunk, int64_t step, int micro) override;

  void begin_step() override;
  std::vector<std::string> param_names() const override;
  double grad_sum_squares(const std::vector<std::string>& shared) const override;
  std::vector<tensor> params_of(const std::vector<std::string>& names) override;
  std::vector<tensor> grads_of(const std::vector<std::string>& names) override;
  void apply_update(const std::vector<std::string>& names, const std::vector<tensor>& totals, float clip_scale,
                    float lr) override;
  tensor flat_grads() override { return grads_.flat(); }
  void on_grads_ready(grads_ready_fn fn) override { grads_ready_ = std::move(fn); }
  double peak_stash_bytes() const override { return peak_stash_bytes_; }
  void save_state(checkpoint_shard& s) const override;
  void load_state(const checkpoint_shard& s, const std::string& what) override;

 private:
  std::unique_ptr<model> model_;
  std::vector<std::pair<size_t, size_t>> ranges_;
  arena params_, grads_;
  std::unique_ptr<optimizer> optimizer_;
  std::shared_ptr<step_batches> data_;
  std::map<int, tensor> fed_;  // micro -> its examples, this step
  int micro_batches_;
  int replica_;
  bool last_ = false;  // holds the model's last layer (the loss)
  std::map<std::pair<int, int>, activations> stash_;  // (micro, chunk) -> what backward needs
  // (micro, chunk) -> weight gradients a split backward left for backward_weight.
  std::map<std::pair<int, int>, deferred_weight_grads> deferred_;
  std::map<std::pair<int, int>, double> stash_bytes_;  // the bytes each entry keeps alive
  double stash_total_ = 0, peak_stash_bytes_ = 0;

  // Gradient readiness: the parameters each layer touches, how many of this stage's layers
  // touch each parameter, and per step the layers still to finish and the passes done.
  grads_ready_fn grads_ready_;
  std::vector<std::vector<int>> layer_params_;  // by model layer index
  std::vector<int> touching_, left_;            // by parameter index
  std::vector<int> backwards_done_, weights_done_;  // by chunk, this step
  // Split backward: the (micro, chunk) whose deferred weight pass carries the readiness
  // reports; it must be the chunk's last weight pass.
  std::set<std::pair<int, int>> reporting_weights_;
  void layer_done(size_t layer);

  tensor run_backward(int chunk, int micro, const tensor& dy, deferred_weight_grads* defer);
  void release_stash(int chunk, int micro);
};

}  // namespace troupe
