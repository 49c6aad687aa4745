#include "runtime/stage_model.hpp"

#include <algorithm>
#include <set>

#include "kernels/cpu/optim.hpp"
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

void step_batches::prepare(int64_t step) {
  std::lock_guard<std::mutex> gen(gen_mu_);
  for (;;) {
    int64_t next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (made_ > step) return;
      next = made_;
    }
    auto idx = std::make_shared<std::vector<int64_t>>();
    source_.next_indices(*idx);  // outside mu_: readers of drawn steps do not wait for this
    std::lock_guard<std::mutex> lock(mu_);
    kept_[next] = std::move(idx);
    made_ = next + 1;
  }
}

batch step_batches::micro_batch(int64_t step, int replica, int micro) {
  bool ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready = made_ > step;
  }
  if (!ready) prepare(step);
  std::shared_ptr<const std::vector<int64_t>> idx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Two steps back is as far as any stage can lag behind the newest request.
    while (!kept_.empty() && kept_.begin()->first + 2 < step) kept_.erase(kept_.begin());
    auto it = kept_.find(step);
    TROUPE_CHECK(it != kept_.end(), "batch of step ", step, " requested after it was dropped");
    idx = it->second;
  }
  const int64_t rows = int64_t(idx->size()) / (micro_batches_ * replicas_);
  const int64_t first = (int64_t(replica) * micro_batches_ + micro) * rows;
  std::vector<int64_t> mine(idx->begin() + first, idx->begin() + first + rows);
  return source_.gather(mine);  // on the caller's thread, no lock held
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

tensor stage_model::forward(int chunk, int64_t step, int micro, const tensor& x) {
  auto [first, last] = ranges_.at(size_t(chunk));
  tensor input = x, targets;
  if (first == 0 || last == model_->layers.size()) {
    batch b = data_->micro_batch(step, replica_, micro);
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
  std::vector<int> used = layer_params_.at(layer);
  std::sort(used.rbegin(), used.rend());
  for (int p : used) {
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

}  // namespace troupe
