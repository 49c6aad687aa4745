#include "runtime/stage_model.hpp"

#include <algorithm>
#include <climits>
#include <set>

#include "kernels/cpu/optim.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/partition.hpp"

namespace troupe {

step_batches::step_batches(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, int micro_batches,
                           int replicas)
    : source_(spec, std::move(data)), micro_batches_(micro_batches), replicas_(replicas) {
  if (micro_batches < 1 || replicas < 1 || spec.train().batch_size() % uint32_t(micro_batches * replicas) != 0)
    throw input_error("train.batch_size " + std::to_string(spec.train().batch_size()) +
                      " must be a multiple of the micro-batches per step (" + std::to_string(micro_batches) +
                      ") times the replicas (" + std::to_string(replicas) + ")");
}

std::vector<std::vector<tensor>> step_batches::next_step() {
  source_.next_indices(idx_);
  const int64_t rows = int64_t(idx_.size()) / (micro_batches_ * replicas_);
  std::vector<std::vector<tensor>> shares(static_cast<size_t>(replicas_));
  for (int r = 0; r < replicas_; ++r)
    for (int m = 0; m < micro_batches_; ++m) {
      tensor t = tensor::empty({rows}, dtype::i32);
      const int64_t first = (int64_t(r) * micro_batches_ + m) * rows;
      for (int64_t i = 0; i < rows; ++i) {
        TROUPE_CHECK(idx_[size_t(first + i)] <= INT32_MAX, "example index ", idx_[size_t(first + i)], " beyond i32");
        t.i32()[i] = int32_t(idx_[size_t(first + i)]);
      }
      shares[size_t(r)].push_back(std::move(t));
    }
  return shares;
}

batch step_batches::gather(const tensor& examples) const {
  std::vector<int64_t> idx(examples.i32(), examples.i32() + examples.numel());
  return source_.gather(idx);
}

std::vector<std::pair<size_t, size_t>> plan_virtual_stages(const model& m, int virtual_stages) {
  std::vector<double> costs;
  for (const auto& l : m.layers) costs.push_back(l->forward_flops_per_sample());
  std::vector<size_t> b = partition_balanced(costs, virtual_stages);
  std::vector<std::pair<size_t, size_t>> ranges;
  for (int i = 0; i < virtual_stages; ++i) ranges.push_back({b[size_t(i)], b[size_t(i) + 1]});
  return ranges;
}

stage_model::stage_model(const proto::JobSpec& spec, std::unique_ptr<model> net,
                         std::vector<std::pair<size_t, size_t>> chunk_ranges, const arena& init,
                         std::shared_ptr<step_batches> data, int micro_batches, int replica)
    : model_(std::move(net)),
      ranges_(std::move(chunk_ranges)),
      data_(std::move(data)),
      micro_batches_(micro_batches),
      replica_(replica) {
  // This stage's own table: only the parameters of its layers (indices are re-assigned).
  model_->table = param_table{};
  layer_params_.assign(model_->layers.size(), {});
  for (const auto& [first, last] : ranges_) {
    for (size_t i = first; i < last; ++i) {
      model_->table.record_into(&layer_params_[i]);
      model_->layers[i]->declare(model_->table);
      model_->table.record_into(nullptr);
    }
    last_ = last_ || last == model_->layers.size();
  }
  // layer_done() walks a layer's parameters highest index first, the order backward reaches them.
  for (auto& used : layer_params_) std::sort(used.rbegin(), used.rend());
  touching_.assign(model_->table.entries().size(), 0);
  for (const auto& used : layer_params_)
    for (int p : used) ++touching_[size_t(p)];
  backwards_done_.assign(ranges_.size(), 0);
  weights_done_.assign(ranges_.size(), 0);
  params_ = arena(model_->table);
  grads_ = arena(model_->table);
  const param_table& full = init.table();
  for (size_t i = 0; i < model_->table.entries().size(); ++i) {
    int j = full.find(model_->table.entries()[i].name);
    TROUPE_CHECK(j >= 0, "stage parameter ", model_->table.entries()[i].name, " not in the model");
    params_.get(int(i)).copy_from(init.get(j));
  }
  optimizer_ = make_optimizer(spec.optimizer(), model_->table);
}

void stage_model::feed(int64_t, int micro, const tensor& examples) { fed_[micro] = examples; }

tensor stage_model::forward(int chunk, int64_t step, int micro, const tensor& x) {
  auto [first, last] = ranges_.at(size_t(chunk));
  tensor input = x, targets;
  if (first == 0 || last == model_->layers.size()) {
    auto f = fed_.find(micro);
    // Reachable from user code (a stage_compute wrapper that does not pass feed() on):
    // an error the stage reports, not an abort.
    if (f == fed_.end())
      throw std::logic_error("no examples fed for micro-batch " + std::to_string(micro) + " of step " +
                             std::to_string(step) + " (a stage_compute that wraps another must forward feed())");
    batch b = data_->gather(f->second);
    if (first == 0) input = b.x;
    if (last == model_->layers.size()) targets = b.y;
  }
  activations& acts = stash_[{micro, chunk}];
  tensor out = troupe::forward(*model_, params_, input, targets, acts, first, last);
  // Measured stash: what this micro-batch keeps alive for backward.
  double bytes = saved_bytes(acts);
  stash_bytes_[{micro, chunk}] = bytes;
  stash_total_ += bytes;
  peak_stash_bytes_ = std::max(peak_stash_bytes_, stash_total_);
  return out;
}

tensor stage_model::run_backward(int chunk, int micro, const tensor& dy, deferred_weight_grads* defer) {
  auto [first, last] = ranges_.at(size_t(chunk));
  auto it = stash_.find({micro, chunk});
  TROUPE_CHECK(it != stash_.end(), "backward of micro-batch ", micro, " chunk ", chunk, " before its forward");
  // The chunk's last backward of the step finalises its layers' gradients one by one.
  const bool last_pass = ++backwards_done_.at(size_t(chunk)) == micro_batches_;
  std::function<void(size_t)> after;
  if (last_pass && grads_ready_) {
    after = [this](size_t layer) { layer_done(layer); };
    if (defer) reporting_weights_.insert({micro, chunk});
  }
  return troupe::backward(*model_, params_, grads_, dy, it->second, first, last, defer, after);
}

// Parameters touched only by finished layers are final: report each (with its padding),
// highest index first, the order backward reaches them.
void stage_model::layer_done(size_t layer) {
  for (int p : layer_params_.at(layer)) {
    if (--left_[size_t(p)] != 0) continue;
    const param_info& info = model_->table.at(p);
    grads_ready_(size_t(info.offset), size_t(info.offset + info.padded_numel()));
  }
}

// The micro-batch's activations are no longer needed (the deferred weight gradients hold
// what they read; until they run, the measurement keeps counting the whole stash).
void stage_model::release_stash(int chunk, int micro) {
  stash_.erase({micro, chunk});
  auto b = stash_bytes_.find({micro, chunk});
  if (b == stash_bytes_.end()) return;
  stash_total_ -= b->second;
  stash_bytes_.erase(b);
}

tensor stage_model::backward(int chunk, int64_t, int micro, const tensor& dy) {
  tensor dx = run_backward(chunk, micro, dy, nullptr);
  release_stash(chunk, micro);
  return dx;
}

tensor stage_model::backward_input(int chunk, int64_t, int micro, const tensor& dy) {
  deferred_weight_grads& later = deferred_[{micro, chunk}];
  tensor dx = run_backward(chunk, micro, dy, &later);
  stash_.erase({micro, chunk});  // what the weight gradients read, `later` holds
  return dx;
}

void stage_model::backward_weight(int chunk, int64_t, int micro) {
  auto it = deferred_.find({micro, chunk});
  TROUPE_CHECK(it != deferred_.end(), "weight gradients of micro-batch ", micro, " chunk ", chunk,
               " before its backward");
  // The last backward's weight pass reports the chunk's gradients final: it must also be
  // the chunk's last weight pass, or averaging would start while others still add.
  const bool last = ++weights_done_.at(size_t(chunk)) == micro_batches_;
  TROUPE_CHECK(!reporting_weights_.count({micro, chunk}) || last, "weight pass of micro-batch ", micro, " chunk ",
               chunk, " is not the chunk's last but follows its last backward: schedules must run a chunk's "
               "weight passes in the order of its backward passes");
  it->second.run();
  deferred_.erase(it);
  release_stash(chunk, micro);
}

void stage_model::begin_step() {
  grads_.zero();
  stash_.clear();
  deferred_.clear();
  fed_.clear();
  left_ = touching_;
  std::fill(backwards_done_.begin(), backwards_done_.end(), 0);
  std::fill(weights_done_.begin(), weights_done_.end(), 0);
  reporting_weights_.clear();
  stash_bytes_.clear();
  stash_total_ = 0;
}

std::vector<std::string> stage_model::param_names() const {
  std::vector<std::string> names;
  for (const auto& p : model_->table.entries()) names.push_back(p.name);
  return names;
}

double stage_model::grad_sum_squares(const std::vector<std::string>& shared) const {
  double sum = 0;
  for (size_t i = 0; i < model_->table.entries().size(); ++i) {
    const auto& p = model_->table.entries()[i];
    if (std::find(shared.begin(), shared.end(), p.name) != shared.end()) continue;
    sum += kernels::sum_of_squares(grads_.ptr(int(i)), p.numel());
  }
  return sum;
}

namespace {
std::vector<tensor> views_of(const arena& a, const param_table& t, const std::vector<std::string>& names) {
  std::vector<tensor> out;
  for (const auto& n : names) {
    int i = t.find(n);
    out.push_back(i >= 0 ? a.get(i) : tensor{});
  }
  return out;
}
}  // namespace

std::vector<tensor> stage_model::params_of(const std::vector<std::string>& names) {
  return views_of(params_, model_->table, names);
}

std::vector<tensor> stage_model::grads_of(const std::vector<std::string>& names) {
  return views_of(grads_, model_->table, names);
}

void stage_model::apply_update(const std::vector<std::string>& names, const std::vector<tensor>& totals,
                               float clip_scale, float lr) {
  TROUPE_CHECK(names.size() == totals.size(), names.size(), " names for ", totals.size(), " gradients");
  for (size_t k = 0; k < names.size(); ++k) {
    int i = model_->table.find(names[k]);
    if (i >= 0) grads_.get(i).copy_from(totals[k]);
  }
  if (clip_scale != 1.0f) kernels::scale_inplace(grads_.flat().f32(), clip_scale, grads_.flat().numel());
  optimizer_->step(params_, grads_, lr);
}

void stage_model::save_state(checkpoint_shard& s) const { save_training_state(params_, *optimizer_, s); }

void stage_model::load_state(const checkpoint_shard& s, const std::string& what) {
  load_training_state(params_, *optimizer_, s, what);
}

}  // namespace troupe
