#pragma once
// Optimizers over a whole parameter arena: state lives in arenas of the same layout,
// so a sharded optimizer later is offset arithmetic on the same buffers.
#include <memory>

#include "runtime/arena.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

class optimizer {
 public:
  virtual ~optimizer() = default;
  // One update of every parameter with learning rate lr; counts steps from 1.
  virtual void step(arena& params, const arena& grads, float lr) = 0;
  virtual const char* name() const = 0;
  int64_t steps_taken() const { return steps_; }
  // Its state into / out of a checkpoint shard (entries "optim.*"); load throws
  // checkpoint_error when the shard holds another optimizer's state or another layout's.
  virtual void save_state(checkpoint_shard& out) const = 0;
  virtual void load_state(const checkpoint_shard& in) = 0;

 protected:
  int64_t steps_ = 0;
};

std::unique_ptr<optimizer> make_optimizer(const proto::OptimizerSpec& spec, const param_table& table);

// The learning rate of step `step` (0-based) of `total`: linear warmup, then constant or
// cosine decay to 10% of the base rate.
float learning_rate(const proto::OptimizerSpec& spec, int64_t step, int64_t total);
float base_learning_rate(const proto::OptimizerSpec& spec);

// PyTorch's clip_grad_norm_ factor for a gradient of global norm `norm`: max_norm /
// (norm + 1e-6) when that is below 1, else 1 (and 1 when max_norm <= 0: clipping off).
float clip_coefficient(double norm, float max_norm);

// Scales the gradients so that their global L2 norm is at most max_norm (PyTorch's
// clip_grad_norm_ rule); returns the norm before clipping. max_norm <= 0: only measures.
float clip_grad_norm(arena& grads, float max_norm);

}  // namespace troupe
