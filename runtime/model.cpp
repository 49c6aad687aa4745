#include "runtime/model.hpp"

#include <cstdio>
#include <set>

namespace troupe {

std::unique_ptr<model> build_model(const proto::ModelSpec& spec) {
  auto m = std::make_unique<model>();
  if (spec.has_gpt()) {
    const auto& g = spec.gpt();
    m->kind = model_kind::gpt;
    m->gpt = gpt_dims{int(g.n_layer()), int(g.n_head()), int(g.d_model()), int(g.context()), int(g.vocab())};
    m->layers.push_back(std::make_unique<embedding_layer>(m->gpt));
    for (int i = 0; i < m->gpt.n_layer; ++i) m->layers.push_back(std::make_unique<gpt_block_layer>(m->gpt, i));
    m->layers.push_back(std::make_unique<gpt_head_layer>(m->gpt));
  } else {
    TROUPE_CHECK(spec.has_mlp(), "model spec has neither mlp nor gpt (validation should have caught this)");
    const auto& w = spec.mlp().widths();
    auto act = spec.mlp().activation() == "gelu" ? activation_kind::gelu : activation_kind::relu;
    m->kind = model_kind::mlp;
    m->classes = int(w[w.size() - 1]);
    for (int i = 0; i + 1 < w.size(); ++i) {
      m->layers.push_back(std::make_unique<linear_layer>("fc" + std::to_string(i), int(w[i]), int(w[i + 1])));
      if (i + 2 < w.size())
        m->layers.push_back(std::make_unique<activation_layer>("act" + std::to_string(i), act, int(w[i + 1])));
    }
    m->layers.push_back(std::make_unique<softmax_ce_layer>(m->classes));
  }
  for (auto& l : m->layers) l->declare(m->table);
  return m;
}

std::string model::describe() const {
  int64_t n = 0;
  for (const auto& p : table.entries()) n += p.numel();
  char buf[200];
  if (kind == model_kind::gpt)
    std::snprintf(buf, sizeof buf, "GPT %d layers, %d heads, d_model %d, context %d, vocab %d: %.2fM parameters",
                  gpt.n_layer, gpt.n_head, gpt.d_model, gpt.context, gpt.vocab, double(n) / 1e6);
  else
    std::snprintf(buf, sizeof buf, "MLP, %zu layers: %.3fM parameters", layers.size(), double(n) / 1e6);
  return buf;
}

void init_params(const model& m, arena& params, uint64_t seed) {
  rng r(seed);
  for (const auto& l : m.layers) l->init(params, r);
}

tensor forward(const model& m, const arena& params, const tensor& x, const tensor& targets, activations& acts,
               size_t first, size_t last) {
  last = std::min(last, m.layers.size());
  acts.stashes.assign(last - first, stash{});
  tensor h = x;
  for (size_t i = first; i < last; ++i) h = m.layers[i]->forward(params, h, targets, acts.stashes[i - first]);
  return h;
}

tensor backward(const model& m, const arena& params, arena& grads, const tensor& dy, const activations& acts,
                size_t first, size_t last, deferred_weight_grads* defer,
                const std::function<void(size_t)>& after_layer) {
  last = std::min(last, m.layers.size());
  TROUPE_CHECK(acts.stashes.size() == last - first, "backward over ", last - first, " layers with ",
               acts.stashes.size(), " stashes");
  tensor g = dy;
  for (size_t i = last; i-- > first;) {
    g = m.layers[i]->backward(params, grads, g, acts.stashes[i - first],
                              i == 0 ? input_grad::not_needed : input_grad::needed, defer);
    if (!after_layer) continue;
    if (defer)
      defer->add([after_layer, i] { after_layer(i); });
    else
      after_layer(i);
  }
  return g;
}

namespace {
void count_saved(const stash& st, std::set<std::pair<const void*, size_t>>& seen, double& bytes) {
  for (const tensor& t : st.saved)
    if (t.defined() && seen.insert({t.raw(), t.bytes()}).second) bytes += double(t.bytes());
}
}  // namespace

double saved_bytes(const stash& st) {
  std::set<std::pair<const void*, size_t>> seen;
  double bytes = 0;
  count_saved(st, seen, bytes);
  return bytes;
}

double saved_bytes(const activations& acts) {
  std::set<std::pair<const void*, size_t>> seen;
  double bytes = 0;
  for (const auto& st : acts.stashes) count_saved(st, seen, bytes);
  return bytes;
}

tensor infer(const model& m, const arena& params, const tensor& x, const tensor& targets) {
  activations acts;
  tensor h = x;
  stash scratch;
  for (const auto& l : m.layers) {
    scratch.saved.clear();
    h = l->forward(params, h, targets, scratch);
  }
  return h;
}

}  // namespace troupe
