#include "runtime/optimizer.hpp"

#include <cmath>

#include "kernels/cpu/optim.hpp"

namespace troupe {

namespace {

const tensor& entry_of(const checkpoint_shard& in, const std::string& name, const tensor& like) {
  auto it = in.tensors.find(name);
  if (it == in.tensors.end()) throw checkpoint_error("checkpoint: no entry \"" + name + "\" (optimizer state)");
  if (it->second.type() != like.type() || it->second.shape() != like.shape())
    throw checkpoint_error("checkpoint: \"" + name + "\" has shape " + shape_str(it->second.shape()) +
                           ", this job's optimizer state has " + shape_str(like.shape()) + " (another model?)");
  return it->second;
}

void save_common(checkpoint_shard& out, const char* name, int64_t steps) {
  out.texts["optim.name"] = name;
  out.texts["optim.steps"] = std::to_string(steps);
}

int64_t load_common(const checkpoint_shard& in, const char* name) {
  auto n = in.texts.find("optim.name");
  if (n == in.texts.end() || n->second != name)
    throw checkpoint_error(std::string("checkpoint: the optimizer state is ") +
                           (n == in.texts.end() ? "missing" : "\"" + n->second + "\"") + ", this job uses " + name);
  return checkpoint_count(in, "optim.steps");
}

void load_into(arena& a, const tensor& from) { a.flat().copy_from(from); }

class sgd_optimizer : public optimizer {
 public:
  sgd_optimizer(const proto::SgdSpec& s, const param_table& t) : spec_(s), momentum_(t) {}
  const char* name() const override { return "sgd"; }
  void save_state(checkpoint_shard& out) const override {
    save_common(out, name(), steps_);
    copy_entry(out, "optim.momentum", momentum_.flat());
  }
  void load_state(const checkpoint_shard& in) override {
    const int64_t steps = load_common(in, name());
    load_into(momentum_, entry_of(in, "optim.momentum", momentum_.flat()));
    steps_ = steps;
  }
  void step(arena& params, const arena& grads, float lr) override {
    ++steps_;
    const auto& entries = params.table().entries();
    for (size_t i = 0; i < entries.size(); ++i) {
      float wd = entries[i].decay == weight_decay::apply ? spec_.weight_decay() : 0.f;
      kernels::sgd_momentum_update(params.ptr(int(i)), momentum_.ptr(int(i)), grads.ptr(int(i)), entries[i].numel(), lr,
                                   spec_.momentum(), wd, int(steps_), spec_.nesterov());
    }
  }

 private:
  proto::SgdSpec spec_;
  arena momentum_;
};

class adamw_optimizer : public optimizer {
 public:
  adamw_optimizer(const proto::AdamWSpec& s, const param_table& t) : spec_(s), m_(t), v_(t) {}
  const char* name() const override { return "adamw"; }
  void save_state(checkpoint_shard& out) const override {
    save_common(out, name(), steps_);
    copy_entry(out, "optim.m", m_.flat());
    copy_entry(out, "optim.v", v_.flat());
  }
  void load_state(const checkpoint_shard& in) override {
    const int64_t steps = load_common(in, name());
    const tensor& m = entry_of(in, "optim.m", m_.flat());
    const tensor& v = entry_of(in, "optim.v", v_.flat());
    load_into(m_, m);
    load_into(v_, v);
    steps_ = steps;
  }
  void step(arena& params, const arena& grads, float lr) override {
    ++steps_;
    const auto& entries = params.table().entries();
    for (size_t i = 0; i < entries.size(); ++i) {
      float wd = entries[i].decay == weight_decay::apply ? spec_.weight_decay() : 0.f;
      kernels::adamw_update(params.ptr(int(i)), m_.ptr(int(i)), v_.ptr(int(i)), grads.ptr(int(i)), entries[i].numel(), lr,
                            spec_.beta1(), spec_.beta2(), spec_.eps(), wd, int(steps_));
    }
  }

 private:
  proto::AdamWSpec spec_;
  arena m_, v_;
};

}  // namespace

std::unique_ptr<optimizer> make_optimizer(const proto::OptimizerSpec& spec, const param_table& table) {
  if (spec.has_adamw()) return std::make_unique<adamw_optimizer>(spec.adamw(), table);
  TROUPE_CHECK(spec.has_sgd(), "optimizer spec has neither sgd nor adamw (validation should have caught this)");
  return std::make_unique<sgd_optimizer>(spec.sgd(), table);
}

float base_learning_rate(const proto::OptimizerSpec& spec) {
  return spec.has_adamw() ? spec.adamw().lr() : spec.sgd().lr();
}

float learning_rate(const proto::OptimizerSpec& spec, int64_t step, int64_t total) {
  double lr = base_learning_rate(spec);
  int64_t warmup = spec.warmup_steps();
  if (step < warmup) return float(lr * double(step + 1) / double(warmup));
  if (spec.lr_schedule() == "cosine" && total > warmup) {
    double progress = double(step - warmup) / double(total - warmup);
    double min_lr = 0.1 * lr;
    return float(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
  }
  return float(lr);
}

float clip_coefficient(double norm, float max_norm) {
  if (max_norm <= 0) return 1.0f;
  double coef = double(max_norm) / (norm + 1e-6);
  return coef < 1.0 ? float(coef) : 1.0f;
}

float clip_grad_norm(arena& grads, float max_norm) {
  tensor& g = grads.flat();
  double norm = std::sqrt(kernels::sum_of_squares(g.f32(), g.numel()));
  float coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0f) kernels::scale_inplace(g.f32(), coef, g.numel());
  return float(norm);
}

}  // namespace troupe
