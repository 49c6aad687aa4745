#pragma once
// A layer is one entry of a model's ordered layer list: the unit a partitioner later
// cuts into pipeline stages. Layers own no tensors: parameters and gradients live in
// arenas passed in, and what forward saves for backward goes into a per-micro-batch
// stash the caller owns, so one layer object can serve many micro-batches in flight.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/arena.hpp"
#include "runtime/rng.hpp"

namespace troupe {

// Whether a backward pass must produce the gradient w.r.t. the layer's input. The first
// layer of a model never needs it (its input is data), and skipping it saves a GEMM as
// large as the weight gradient's.
enum class input_grad : uint8_t { needed, not_needed };

struct stash {
  std::vector<tensor> saved;
};

// Weight-gradient work a backward pass leaves for later. Zero-bubble pipeline schedules
// run a micro-batch's backward in two parts: the input gradient first (the previous stage
// waits for it), the weight gradients when the stage would otherwise idle. A layer given
// one of these computes its input gradient and adds closures for its weight-gradient
// GEMMs; the closures hold the tensors they read, so the caller may drop the stash.
class deferred_weight_grads {
 public:
  void add(std::function<void()> work) { work_.push_back(std::move(work)); }
  // Runs the work in the order it was added, then forgets it.
  void run() {
    for (auto& w : work_) w();
    work_.clear();
  }
  bool empty() const { return work_.empty(); }

 private:
  std::vector<std::function<void()>> work_;
};

class layer {
 public:
  virtual ~layer() = default;
  virtual std::string name() const = 0;
  // Registers this layer's parameters (remembering their indices).
  virtual void declare(param_table& table) = 0;
  // Writes initial values of the parameters this layer declared.
  virtual void init(arena& params, rng& r) const = 0;
  // x: this layer's input. targets: only read by loss layers; when it is undefined a
  // loss layer returns its logits instead of the loss (evaluation, sampling).
  virtual tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const = 0;
  // dy: gradient of the loss w.r.t. this layer's output (a loss layer gets the scale of
  // its loss, shape (1)). Returns the gradient w.r.t. the input (undefined for layers
  // whose input is not differentiable, e.g. token ids, or when `want` is not_needed);
  // parameter gradients are added, now, or when `defer` runs if it is given (a layer
  // may still add small ones, such as LayerNorm's, now).
  virtual tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                          deferred_weight_grads* defer = nullptr) const = 0;
  // Forward floating-point operations per sample, for cost estimates and throughput.
  virtual double forward_flops_per_sample() const = 0;
};

using layer_list = std::vector<std::unique_ptr<layer>>;

}  // namespace troupe
