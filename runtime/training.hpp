#pragma once
// The compute side of training one model replica in one place: data sources that turn a
// job spec into batches, and a trainer that runs forward, backward and the optimizer.
// Actors call these; they decide nothing and move no messages themselves.
#include <memory>
#include <string>

#include "runtime/data.hpp"
#include "runtime/model.hpp"
#include "runtime/optimizer.hpp"

namespace troupe {

// The data a job trains and evaluates on, loaded once (errors name the file).
struct training_data {
  model_kind kind = model_kind::mlp;
  image_set train_images, test_images;
  byte_corpus corpus;
};

std::shared_ptr<const training_data> load_training_data(const proto::JobSpec& spec);
int64_t total_steps(const proto::JobSpec& spec, const training_data& data);

// Seeded batches in a fixed order: the same spec and seed give the same batches.
class batch_source {
 public:
  batch_source(const proto::JobSpec& spec, std::shared_ptr<const training_data> data);
  // The training batch of the next step.
  batch next();
  // The same in two parts: which examples (image indices or window starts) the next step
  // takes, and the batch of any of them. gather() only reads the data: any thread may
  // call it while another draws indices.
  void next_indices(std::vector<int64_t>& idx);
  // Draws and drops the next `steps` steps' indices: where a resumed job's batches start.
  void skip(int64_t steps);
  batch gather(const std::vector<int64_t>& idx) const;
  // The whole evaluation set: the test images, or eval_batches x batch_size validation
  // windows at fixed offsets.
  batch eval_set() const;

 private:
  proto::JobSpec spec_;
  std::shared_ptr<const training_data> data_;
  std::unique_ptr<epoch_sampler> images_;
  std::unique_ptr<window_sampler> windows_;
  std::vector<int64_t> idx_;
};

struct step_result {
  float loss = 0, grad_norm = 0, lr = 0;
};

struct eval_result {
  double loss = 0;
  double accuracy = -1;
  int64_t count = 0;
};

// A parameter arena and its optimizer's state into a checkpoint shard (entries "params",
// "params.layout", "optim.*"; tensors reused where they fit), and back: load throws
// checkpoint_error, before anything changes, when the shard is another model's or
// optimizer's. `what` names the state in that error ("checkpoint", "stage 1's snapshot").
void save_training_state(const arena& params, const optimizer& opt, checkpoint_shard& s);
void load_training_state(arena& params, optimizer& opt, const checkpoint_shard& s, const std::string& what);

// One replica of the whole model: parameters, gradients, optimizer state.
class trainer {
 public:
  explicit trainer(const proto::JobSpec& spec, int64_t total_steps);
  step_result train_step(const tensor& x, const tensor& y);
  // train_step in two parts, for replicas that sum their gradients in between: the loss
  // of (x, y), its gradients left in grads(); then clipping and the optimizer's step.
  float compute_gradients(const tensor& x, const tensor& y);
  step_result apply_gradients();
  eval_result evaluate(const tensor& x, const tensor& y, int64_t chunk_rows) const;
  // Samples `count` bytes after `prompt` at temperature 0.8 from a seeded generator.
  std::string generate(const std::string& prompt, int count, uint64_t seed) const;

  const model& net() const { return *model_; }
  int64_t steps_done() const { return step_; }
  // Phase 1 of a checkpoint: copies of the parameters, the optimizer state and the step
  // (entries "params", "params.layout", "step", "optim.*").
  checkpoint_shard snapshot() const;
  // The same into `s`, reusing its tensors where they fit (a shard the writer handed back).
  void snapshot_into(checkpoint_shard& s) const;
  // Back to a snapshot's state; checkpoint_error when it is another model's or optimizer's.
  void restore(const checkpoint_shard& s);
  arena& params() { return params_; }
  arena& grads() { return grads_; }

 private:
  proto::JobSpec spec_;
  int64_t total_steps_;
  std::unique_ptr<model> model_;
  arena params_, grads_;
  std::unique_ptr<optimizer> optimizer_;
  int64_t step_ = 0;
};

}  // namespace troupe
