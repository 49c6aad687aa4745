#include "runtime/training.hpp"

#include <algorithm>
#include <cmath>

namespace troupe {

std::shared_ptr<const training_data> load_training_data(const proto::JobSpec& spec) {
  auto d = std::make_shared<training_data>();
  if (spec.model().has_gpt()) {
    d->kind = model_kind::gpt;
    d->corpus = load_byte_corpus(spec.data().path(), spec.data().val_fraction());
    int T = int(spec.model().gpt().context());
    if (int64_t(d->corpus.val.size()) < T + 2 || int64_t(d->corpus.train.size()) < T + 2)
      throw input_error("data.path: corpus in '" + spec.data().path() + "' is too small for context " +
                        std::to_string(T));
  } else {
    d->kind = model_kind::mlp;
    d->train_images = load_fashion_mnist(spec.data().path(), true);
    d->test_images = load_fashion_mnist(spec.data().path(), false);
    const int64_t pixels = int64_t(d->train_images.rows) * d->train_images.cols;
    if (pixels != int64_t(spec.model().mlp().widths(0)) || d->test_images.rows * d->test_images.cols != pixels)
      throw input_error("data.path: images in '" + spec.data().path() + "' have " + std::to_string(pixels) +
                        " pixels (train) and " + std::to_string(d->test_images.rows * d->test_images.cols) +
                        " (test), but model.mlp.widths[0] is " + std::to_string(spec.model().mlp().widths(0)));
    if (int64_t(spec.train().batch_size()) > d->train_images.labels.numel())
      throw input_error("train.batch_size " + std::to_string(spec.train().batch_size()) + " is larger than the " +
                        std::to_string(d->train_images.labels.numel()) + " training images in '" +
                        spec.data().path() + "'");
  }
  return d;
}

int64_t total_steps(const proto::JobSpec& spec, const training_data& data) {
  if (spec.train().steps() > 0) return spec.train().steps();
  return int64_t(spec.train().epochs()) * batches_per_epoch(data.train_images.labels.numel(), spec.train().batch_size());
}

batch_source::batch_source(const proto::JobSpec& spec, std::shared_ptr<const training_data> data)
    : spec_(spec), data_(std::move(data)) {
  if (data_->kind == model_kind::gpt)
    windows_ = std::make_unique<window_sampler>(int64_t(data_->corpus.train.size()), int(spec_.model().gpt().context()),
                                                spec_.train().seed());
  else
    images_ = std::make_unique<epoch_sampler>(data_->train_images.labels.numel(), spec_.train().seed());
}

batch batch_source::next() {
  next_indices(idx_);
  return gather(idx_);
}

void batch_source::skip(int64_t steps) {
  std::vector<int64_t> idx;
  for (int64_t k = 0; k < steps; ++k) next_indices(idx);
}

void batch_source::next_indices(std::vector<int64_t>& idx) {
  int64_t B = spec_.train().batch_size();
  if (windows_)
    windows_->next(B, idx);
  else
    images_->next(B, idx);
}

batch batch_source::gather(const std::vector<int64_t>& idx) const {
  if (windows_) return make_token_batch(data_->corpus.train, idx, int(spec_.model().gpt().context()));
  return make_image_batch(data_->train_images, idx);
}

batch batch_source::eval_set() const {
  if (data_->kind == model_kind::gpt) {
    int T = int(spec_.model().gpt().context());
    int64_t count = int64_t(spec_.train().eval_batches()) * spec_.train().batch_size();
    return make_token_batch(data_->corpus.val, eval_windows(int64_t(data_->corpus.val.size()), T, count), T);
  }
  return batch{data_->test_images.images, data_->test_images.labels};
}

trainer::trainer(const proto::JobSpec& spec, int64_t total_steps)
    : spec_(spec), total_steps_(total_steps), model_(build_model(spec.model())) {
  params_ = arena(model_->table);
  grads_ = arena(model_->table);
  init_params(*model_, params_, spec.train().seed());
  optimizer_ = make_optimizer(spec.optimizer(), model_->table);
}

step_result trainer::train_step(const tensor& x, const tensor& y) {
  const float loss = compute_gradients(x, y);
  step_result r = apply_gradients();
  r.loss = loss;
  return r;
}

float trainer::compute_gradients(const tensor& x, const tensor& y) {
  grads_.zero();
  activations acts;
  tensor loss = forward(*model_, params_, x, y, acts);
  tensor dloss = tensor::empty({1});
  dloss.f32()[0] = 1.f;
  backward(*model_, params_, grads_, dloss, acts);
  return loss.f32()[0];
}

step_result trainer::apply_gradients() {
  step_result r;
  r.grad_norm = clip_grad_norm(grads_, spec_.optimizer().grad_clip());
  r.lr = learning_rate(spec_.optimizer(), step_, total_steps_);
  optimizer_->step(params_, grads_, r.lr);
  ++step_;
  return r;
}

namespace {

// The parameter table as text: a checkpoint of another model is refused by it.
std::string layout_of(const param_table& t) {
  std::string out;
  for (const auto& e : t.entries()) out += e.name + " " + shape_str(e.shape) + "\n";
  return out;
}

}  // namespace

void save_training_state(const arena& params, const optimizer& opt, checkpoint_shard& s) {
  copy_entry(s, "params", params.flat());
  s.texts["params.layout"] = layout_of(params.table());
  opt.save_state(s);
}

void load_training_state(arena& params, optimizer& opt, const checkpoint_shard& s, const std::string& what) {
  auto layout = s.texts.find("params.layout");
  if (layout == s.texts.end() || layout->second != layout_of(params.table()))
    throw checkpoint_error(what + ": its parameters are laid out for another model than this job's (" +
                           std::string(layout == s.texts.end() ? "no params.layout" : "params.layout differs") + ")");
  auto p = s.tensors.find("params");
  if (p == s.tensors.end() || p->second.type() != dtype::f32 || p->second.shape() != params.flat().shape())
    throw checkpoint_error(what + ": no \"params\" of this model's " + shape_str(params.flat().shape()) + " floats");
  opt.load_state(s);  // first: it checks before anything changes
  params.flat().copy_from(p->second);
}

checkpoint_shard trainer::snapshot() const {
  checkpoint_shard s;
  snapshot_into(s);
  return s;
}

void trainer::snapshot_into(checkpoint_shard& s) const {
  save_training_state(params_, *optimizer_, s);
  s.texts["step"] = std::to_string(step_);
}

void trainer::restore(const checkpoint_shard& s) {
  const int64_t step = checkpoint_count(s, "step");
  load_training_state(params_, *optimizer_, s, "checkpoint");
  step_ = step;
}

eval_result trainer::evaluate(const tensor& x, const tensor& y, int64_t chunk_rows) const {
  eval_result r;
  int64_t rows = x.dim(0);
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t b = 0; b < rows; b += chunk_rows) {
    int64_t e = std::min(rows, b + chunk_rows);
    tensor xs = x.slice_rows(b, e), ys = y.slice_rows(b, e);
    if (model_->kind == model_kind::gpt) {
      loss_sum += double(infer(*model_, params_, xs, ys).f32()[0]) * double(e - b);
      continue;
    }
    // Classification: loss and accuracy from the logits in one pass.
    tensor logits = infer(*model_, params_, xs);
    int64_t K = logits.dim(1);
    const float* l = logits.f32();
    const int32_t* t = ys.i32();
    for (int64_t i = 0; i < e - b; ++i) {
      const float* row = l + i * K;
      int64_t best = std::max_element(row, row + K) - row;
      double mx = row[best], sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += std::exp(double(row[k]) - mx);
      loss_sum += std::log(sum) + mx - row[t[i]];
      correct += best == t[i];
    }
  }
  r.count = rows;
  r.loss = rows ? loss_sum / double(rows) : 0;
  if (model_->kind == model_kind::mlp) r.accuracy = rows ? double(correct) / double(rows) : 0;
  return r;
}

std::string trainer::generate(const std::string& prompt, int count, uint64_t seed) const {
  TROUPE_CHECK(model_->kind == model_kind::gpt, "generate needs a GPT model");
  std::vector<int32_t> toks(prompt.begin(), prompt.end());
  if (toks.empty()) toks.push_back('\n');
  rng r(seed);
  int ctx = model_->gpt.context, V = model_->gpt.vocab;
  std::string out;
  for (int n = 0; n < count; ++n) {
    int T = std::min<int>(ctx, int(toks.size()));
    tensor x = tensor::empty({1, T}, dtype::i32);
    std::copy(toks.end() - T, toks.end(), x.i32());
    tensor logits = infer(*model_, params_, x);
    const float* row = logits.f32() + int64_t(T - 1) * V;
    // Temperature 0.8 (nanoGPT's default for samples): a little sharper than the model.
    constexpr double inv_temperature = 1.0 / 0.8;
    double mx = *std::max_element(row, row + V), sum = 0;
    std::vector<double> p(static_cast<size_t>(V));
    for (int v = 0; v < V; ++v) sum += p[size_t(v)] = std::exp((double(row[v]) - mx) * inv_temperature);
    double u = r.uniform() * sum;
    int pick = V - 1;
    for (int v = 0; v < V; ++v) {
      u -= p[size_t(v)];
      if (u <= 0) {
        pick = v;
        break;
      }
    }
    toks.push_back(pick);
    out.push_back(char(uint8_t(pick)));
  }
  return out;
}

}  // namespace troupe
