#pragma once
// The concrete layers of the MLP and GPT models. Parameter names follow PyTorch's
// (nanoGPT's for GPT) so reference files and checkpoints map one to one.
#include "runtime/layer.hpp"

namespace troupe {

enum class activation_kind : uint8_t { relu, gelu };

// y (N,OC) = x (N,C) W^T + b. PyTorch's default init: U(-1/sqrt(C), 1/sqrt(C)) for both.
class linear_layer : public layer {
 public:
  linear_layer(std::string prefix, int in, int out) : prefix_(std::move(prefix)), in_(in), out_(out) {}
  std::string name() const override { return prefix_; }
  void declare(param_table& table) override;
  void init(arena& params, rng& r) const override;
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override { return 2.0 * in_ * out_; }

 private:
  std::string prefix_;
  int in_, out_;
  int w_ = -1, b_ = -1;
};

class activation_layer : public layer {
 public:
  activation_layer(std::string name, activation_kind kind, int width) : name_(std::move(name)), kind_(kind), width_(width) {}
  std::string name() const override { return name_; }
  void declare(param_table&) override {}
  void init(arena&, rng&) const override {}
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override { return width_; }

 private:
  std::string name_;
  activation_kind kind_;
  int width_;
};

// Mean softmax cross-entropy over the rows of (N,V) logits with (N) i32 targets.
class softmax_ce_layer : public layer {
 public:
  explicit softmax_ce_layer(int classes) : classes_(classes) {}
  std::string name() const override { return "loss"; }
  void declare(param_table&) override {}
  void init(arena&, rng&) const override {}
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override { return 4.0 * classes_; }

 private:
  int classes_;
};

struct gpt_dims {
  int n_layer = 4, n_head = 4, d_model = 128, context = 128, vocab = 256;
};

// Token + learned position embedding: (B,T) i32 -> (B,T,C).
class embedding_layer : public layer {
 public:
  explicit embedding_layer(gpt_dims d) : d_(d) {}
  std::string name() const override { return "embedding"; }
  void declare(param_table& table) override;
  void init(arena& params, rng& r) const override;
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override { return double(d_.context) * d_.d_model; }

 private:
  gpt_dims d_;
  int wte_ = -1, wpe_ = -1;
};

// One pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)).
class gpt_block_layer : public layer {
 public:
  gpt_block_layer(gpt_dims d, int index) : d_(d), index_(index) {}
  std::string name() const override { return "h." + std::to_string(index_); }
  void declare(param_table& table) override;
  void init(arena& params, rng& r) const override;
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override;

 private:
  gpt_dims d_;
  int index_;
  int ln1_w_ = -1, ln1_b_ = -1, qkv_w_ = -1, qkv_b_ = -1, proj_w_ = -1, proj_b_ = -1;
  int ln2_w_ = -1, ln2_b_ = -1, fc_w_ = -1, fc_b_ = -1, fc2_w_ = -1, fc2_b_ = -1;
};

// Final LayerNorm, the weight-tied head (logits = x wte^T) and the mean cross-entropy.
class gpt_head_layer : public layer {
 public:
  explicit gpt_head_layer(gpt_dims d) : d_(d) {}
  std::string name() const override { return "head"; }
  void declare(param_table& table) override;
  void init(arena& params, rng& r) const override;
  tensor forward(const arena& params, const tensor& x, const tensor& targets, stash& st) const override;
  tensor backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                  deferred_weight_grads* defer = nullptr) const override;
  double forward_flops_per_sample() const override {
    return double(d_.context) * (2.0 * d_.d_model * d_.vocab + 8.0 * d_.d_model);
  }

 private:
  gpt_dims d_;
  int lnf_w_ = -1, lnf_b_ = -1, wte_ = -1;
};

}  // namespace troupe
