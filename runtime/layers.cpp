#include "runtime/layers.hpp"

#include <cmath>

#include "kernels/cpu/activation.hpp"
#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/crossentropy.hpp"
#include "kernels/cpu/embedding.hpp"
#include "kernels/cpu/head.hpp"
#include "kernels/cpu/layernorm.hpp"
#include "kernels/cpu/linear.hpp"
#include "kernels/cpu/residual.hpp"

namespace troupe {

namespace k = kernels;

namespace {

// Gradients of out = inp · w^T + b: dinp (if wanted) now; dw and db (if any) now, or
// later through `defer`, whose closure keeps dout and inp alive. Split or not, every
// element is the same sum in the same order.
void linear_grads(float* dinp, float* dw, float* db, const tensor& dout, const tensor& inp, const float* w, int N,
                  int C, int OC, deferred_weight_grads* defer) {
  if (!defer) {
    k::linear_backward(dinp, dw, db, dout.f32(), inp.f32(), w, N, C, OC);
    return;
  }
  if (dinp) k::linear_backward(dinp, nullptr, nullptr, dout.f32(), inp.f32(), w, N, C, OC);
  defer->add([=] { k::linear_backward(nullptr, dw, db, dout.f32(), inp.f32(), w, N, C, OC); });
}

void fill_uniform(tensor t, rng& r, double bound) {
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float((2.0 * r.uniform() - 1.0) * bound);
}

void fill_normal(tensor t, rng& r, double stddev) {
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(r.normal() * stddev);
}

void fill_value(tensor t, float v) {
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = v;
}

// Rows of an activation: everything but the last dimension.
int rows_of(const tensor& x) { return int(x.numel() / x.shape().back()); }

// Mean of per-row losses, summed in double so the result does not depend on chunking.
tensor mean_loss(const tensor& losses) {
  double sum = 0;
  const float* l = losses.f32();
  for (int64_t i = 0; i < losses.numel(); ++i) sum += l[i];
  tensor loss = tensor::empty({1});
  loss.f32()[0] = losses.numel() ? float(sum / double(losses.numel())) : 0.f;
  return loss;
}

}  // namespace

// ---- linear ---------------------------------------------------------------------------

void linear_layer::declare(param_table& table) {
  w_ = table.add(prefix_ + ".weight", {out_, in_}, weight_decay::apply);
  b_ = table.add(prefix_ + ".bias", {out_}, weight_decay::skip);
}

void linear_layer::init(arena& params, rng& r) const {
  double bound = 1.0 / std::sqrt(double(in_));
  fill_uniform(params.get(w_), r, bound);
  fill_uniform(params.get(b_), r, bound);
}

tensor linear_layer::forward(const arena& params, const tensor& x, const tensor&, stash& st) const {
  TROUPE_CHECK(x.shape().back() == in_, name(), " expects ", in_, " features, got ", shape_str(x.shape()));
  int N = rows_of(x);
  shape_t out_shape = x.shape();
  out_shape.back() = out_;
  tensor y = tensor::empty(out_shape);
  k::linear_forward(y.f32(), x.f32(), params.ptr(w_), params.ptr(b_), N, in_, out_);
  st.saved = {x};
  return y;
}

tensor linear_layer::backward(const arena& params, arena& grads, const tensor& dy, const stash& st, input_grad want,
                              deferred_weight_grads* defer) const {
  const tensor& x = st.saved.at(0);
  tensor dx = want == input_grad::needed ? tensor::empty(x.shape()) : tensor{};
  linear_grads(dx.defined() ? dx.f32() : nullptr, grads.ptr(w_), grads.ptr(b_), dy, x, params.ptr(w_), rows_of(x),
               in_, out_, defer);
  return dx;
}

// ---- activation -----------------------------------------------------------------------

tensor activation_layer::forward(const arena&, const tensor& x, const tensor&, stash& st) const {
  tensor y = tensor::empty(x.shape());
  if (kind_ == activation_kind::relu)
    k::relu_forward(y.f32(), x.f32(), x.numel());
  else
    k::gelu_forward(y.f32(), x.f32(), x.numel());
  st.saved = {x};
  return y;
}

tensor activation_layer::backward(const arena&, arena&, const tensor& dy, const stash& st, input_grad,
                                  deferred_weight_grads*) const {
  const tensor& x = st.saved.at(0);
  tensor dx = tensor::empty(x.shape());
  if (kind_ == activation_kind::relu)
    k::relu_backward(dx.f32(), x.f32(), dy.f32(), x.numel());
  else
    k::gelu_backward(dx.f32(), x.f32(), dy.f32(), x.numel());
  return dx;
}

// ---- softmax cross-entropy ------------------------------------------------------------

tensor softmax_ce_layer::forward(const arena&, const tensor& x, const tensor& targets, stash& st) const {
  if (!targets.defined()) return x;
  int N = rows_of(x), V = int(x.shape().back());
  TROUPE_CHECK(V == classes_ && targets.numel() == N, "loss over ", shape_str(x.shape()), " with targets ",
               shape_str(targets.shape()));
  tensor losses = tensor::empty({N});
  tensor probs = tensor::empty({N, V});
  k::crossentropy_forward(losses.f32(), probs.f32(), x.f32(), targets.i32(), N, V);
  st.saved = {probs, targets};
  return mean_loss(losses);
}

tensor softmax_ce_layer::backward(const arena&, arena&, const tensor& dy, const stash& st, input_grad,
                                  deferred_weight_grads*) const {
  const tensor& probs = st.saved.at(0);
  const tensor& targets = st.saved.at(1);
  int N = int(probs.dim(0)), V = int(probs.dim(1));
  tensor dx = tensor::empty({N, V});
  k::crossentropy_backward(dx.f32(), probs.f32(), targets.i32(), dy.f32()[0] / float(N), N, V);
  return dx;
}

// ---- GPT embedding --------------------------------------------------------------------

void embedding_layer::declare(param_table& table) {
  wte_ = table.add("wte.weight", {d_.vocab, d_.d_model}, weight_decay::apply);
  wpe_ = table.add("wpe.weight", {d_.context, d_.d_model}, weight_decay::apply);
}

void embedding_layer::init(arena& params, rng& r) const {
  fill_normal(params.get(wte_), r, 0.02);
  fill_normal(params.get(wpe_), r, 0.02);
}

tensor embedding_layer::forward(const arena& params, const tensor& x, const tensor&, stash& st) const {
  TROUPE_CHECK(x.ndim() == 2 && x.dim(1) <= d_.context, "tokens ", shape_str(x.shape()), " for context ",
               d_.context);
  int B = int(x.dim(0)), T = int(x.dim(1)), C = d_.d_model;
  const int32_t* tok = x.i32();
  for (int64_t i = 0; i < x.numel(); ++i)
    TROUPE_CHECK(tok[i] >= 0 && tok[i] < d_.vocab, "token ", tok[i], " outside vocabulary of ", d_.vocab);
  tensor y = tensor::empty({B, T, C});
  k::embedding_forward(y.f32(), tok, params.ptr(wte_), params.ptr(wpe_), B, T, C);
  st.saved = {x};
  return y;
}

// The scatter-add of the embedding gradient is cheap: it is never deferred.
tensor embedding_layer::backward(const arena&, arena& grads, const tensor& dy, const stash& st, input_grad,
                                 deferred_weight_grads*) const {
  const tensor& x = st.saved.at(0);
  k::embedding_backward(grads.ptr(wte_), grads.ptr(wpe_), dy.f32(), x.i32(), int(x.dim(0)), int(x.dim(1)),
                        d_.d_model);
  return tensor{};  // token ids have no gradient
}

// ---- GPT block ------------------------------------------------------------------------

void gpt_block_layer::declare(param_table& t) {
  std::string p = name() + ".";
  int C = d_.d_model;
  ln1_w_ = t.add(p + "ln_1.weight", {C}, weight_decay::skip);
  ln1_b_ = t.add(p + "ln_1.bias", {C}, weight_decay::skip);
  qkv_w_ = t.add(p + "attn.c_attn.weight", {3 * C, C}, weight_decay::apply);
  qkv_b_ = t.add(p + "attn.c_attn.bias", {3 * C}, weight_decay::skip);
  proj_w_ = t.add(p + "attn.c_proj.weight", {C, C}, weight_decay::apply);
  proj_b_ = t.add(p + "attn.c_proj.bias", {C}, weight_decay::skip);
  ln2_w_ = t.add(p + "ln_2.weight", {C}, weight_decay::skip);
  ln2_b_ = t.add(p + "ln_2.bias", {C}, weight_decay::skip);
  fc_w_ = t.add(p + "mlp.c_fc.weight", {4 * C, C}, weight_decay::apply);
  fc_b_ = t.add(p + "mlp.c_fc.bias", {4 * C}, weight_decay::skip);
  fc2_w_ = t.add(p + "mlp.c_proj.weight", {C, 4 * C}, weight_decay::apply);
  fc2_b_ = t.add(p + "mlp.c_proj.bias", {C}, weight_decay::skip);
}

void gpt_block_layer::init(arena& params, rng& r) const {
  // GPT-2's scheme: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer).
  double residual_std = 0.02 / std::sqrt(2.0 * d_.n_layer);
  fill_value(params.get(ln1_w_), 1.f);
  fill_value(params.get(ln1_b_), 0.f);
  fill_normal(params.get(qkv_w_), r, 0.02);
  fill_value(params.get(qkv_b_), 0.f);
  fill_normal(params.get(proj_w_), r, residual_std);
  fill_value(params.get(proj_b_), 0.f);
  fill_value(params.get(ln2_w_), 1.f);
  fill_value(params.get(ln2_b_), 0.f);
  fill_normal(params.get(fc_w_), r, 0.02);
  fill_value(params.get(fc_b_), 0.f);
  fill_normal(params.get(fc2_w_), r, residual_std);
  fill_value(params.get(fc2_b_), 0.f);
}

double gpt_block_layer::forward_flops_per_sample() const {
  double T = d_.context, C = d_.d_model;
  return T * (2 * C * 3 * C + 2 * C * C + 2 * C * 4 * C * 2) + 2.0 * T * T * C * 2 / 2;  // causal: half of QK^T, PV
}

// Stash layout of one block, in order.
enum block_saved { s_x, s_ln1, s_mean1, s_rstd1, s_qkv, s_att, s_atty, s_res1, s_ln2, s_mean2, s_rstd2, s_fch, s_fcg };

tensor gpt_block_layer::forward(const arena& P, const tensor& x, const tensor&, stash& st) const {
  int B = int(x.dim(0)), T = int(x.dim(1)), C = d_.d_model, NH = d_.n_head, N = B * T;
  TROUPE_CHECK(x.ndim() == 3 && x.dim(2) == C, name(), " input ", shape_str(x.shape()));
  tensor ln1 = tensor::empty({B, T, C}), mean1 = tensor::empty({N}), rstd1 = tensor::empty({N});
  k::layernorm_forward(ln1.f32(), mean1.f32(), rstd1.f32(), x.f32(), P.ptr(ln1_w_), P.ptr(ln1_b_), N, C);
  tensor qkv = tensor::empty({B, T, 3 * C});
  k::linear_forward(qkv.f32(), ln1.f32(), P.ptr(qkv_w_), P.ptr(qkv_b_), N, C, 3 * C);
  tensor att = tensor::empty({B, NH, T, T}), atty = tensor::empty({B, T, C});
  k::attention_forward(atty.f32(), att.f32(), qkv.f32(), B, T, C, NH);
  tensor res1 = tensor::empty({B, T, C});
  k::linear_forward(res1.f32(), atty.f32(), P.ptr(proj_w_), P.ptr(proj_b_), N, C, C);
  k::residual_forward(res1.f32(), res1.f32(), x.f32(), int64_t(N) * C);
  tensor ln2 = tensor::empty({B, T, C}), mean2 = tensor::empty({N}), rstd2 = tensor::empty({N});
  k::layernorm_forward(ln2.f32(), mean2.f32(), rstd2.f32(), res1.f32(), P.ptr(ln2_w_), P.ptr(ln2_b_), N, C);
  tensor fch = tensor::empty({B, T, 4 * C}), fcg = tensor::empty({B, T, 4 * C});
  k::linear_forward(fch.f32(), ln2.f32(), P.ptr(fc_w_), P.ptr(fc_b_), N, C, 4 * C);
  k::gelu_forward(fcg.f32(), fch.f32(), int64_t(N) * 4 * C);
  tensor y = tensor::empty({B, T, C});
  k::linear_forward(y.f32(), fcg.f32(), P.ptr(fc2_w_), P.ptr(fc2_b_), N, 4 * C, C);
  k::residual_forward(y.f32(), y.f32(), res1.f32(), int64_t(N) * C);
  st.saved = {x, ln1, mean1, rstd1, qkv, att, atty, res1, ln2, mean2, rstd2, fch, fcg};
  return y;
}

tensor gpt_block_layer::backward(const arena& P, arena& G, const tensor& dy, const stash& st, input_grad,
                                 deferred_weight_grads* defer) const {
  const auto& s = st.saved;
  const tensor& x = s.at(s_x);
  int B = int(x.dim(0)), T = int(x.dim(1)), C = d_.d_model, NH = d_.n_head, N = B * T;
  int64_t NC = int64_t(N) * C;
  // Each gradient a linear's weight gradient reads (its dout) is written once and never
  // changed afterwards, so the weight gradients may run later. LayerNorm's parameter
  // gradients come with its input gradient: they are cheap.
  tensor dfcg = tensor::empty({B, T, 4 * C}), dfch = tensor::empty({B, T, 4 * C});
  linear_grads(dfcg.f32(), G.ptr(fc2_w_), G.ptr(fc2_b_), dy, s[s_fcg], P.ptr(fc2_w_), N, 4 * C, C, defer);
  k::gelu_backward(dfch.f32(), s[s_fch].f32(), dfcg.f32(), int64_t(N) * 4 * C);
  tensor dln = tensor::empty({B, T, C}), dbranch = tensor::empty({B, T, C});
  linear_grads(dln.f32(), G.ptr(fc_w_), G.ptr(fc_b_), dfch, s[s_ln2], P.ptr(fc_w_), N, C, 4 * C, defer);
  k::layernorm_backward(dbranch.f32(), G.ptr(ln2_w_), G.ptr(ln2_b_), dln.f32(), s[s_res1].f32(), P.ptr(ln2_w_),
                        s[s_mean2].f32(), s[s_rstd2].f32(), N, C);
  // The residual stream's gradient: dy, plus what flows back through each branch.
  tensor dres = tensor::empty({B, T, C});
  k::residual_forward(dres.f32(), dy.f32(), dbranch.f32(), NC);
  tensor datty = tensor::empty({B, T, C});
  linear_grads(datty.f32(), G.ptr(proj_w_), G.ptr(proj_b_), dres, s[s_atty], P.ptr(proj_w_), N, C, C, defer);
  tensor dqkv = tensor::empty({B, T, 3 * C}), datt = tensor::empty({B, NH, T, T});
  k::attention_backward(dqkv.f32(), datt.f32(), datty.f32(), s[s_qkv].f32(), s[s_att].f32(), B, T, C, NH);
  linear_grads(dln.f32(), G.ptr(qkv_w_), G.ptr(qkv_b_), dqkv, s[s_ln1], P.ptr(qkv_w_), N, C, 3 * C, defer);
  k::layernorm_backward(dbranch.f32(), G.ptr(ln1_w_), G.ptr(ln1_b_), dln.f32(), x.f32(), P.ptr(ln1_w_),
                        s[s_mean1].f32(), s[s_rstd1].f32(), N, C);
  tensor dx = tensor::empty({B, T, C});
  k::residual_forward(dx.f32(), dres.f32(), dbranch.f32(), NC);
  return dx;
}

// ---- GPT head -------------------------------------------------------------------------

void gpt_head_layer::declare(param_table& t) {
  lnf_w_ = t.add("ln_f.weight", {d_.d_model}, weight_decay::skip);
  lnf_b_ = t.add("ln_f.bias", {d_.d_model}, weight_decay::skip);
  wte_ = t.add("wte.weight", {d_.vocab, d_.d_model}, weight_decay::apply);  // tied with the embedding
}

void gpt_head_layer::init(arena& params, rng&) const {
  fill_value(params.get(lnf_w_), 1.f);
  fill_value(params.get(lnf_b_), 0.f);
  // wte is initialised by the embedding layer that declared it first.
}

enum head_saved { h_x, h_lnf, h_mean, h_rstd, h_probs, h_targets };

tensor gpt_head_layer::forward(const arena& P, const tensor& x, const tensor& targets, stash& st) const {
  int B = int(x.dim(0)), T = int(x.dim(1)), C = d_.d_model, V = d_.vocab, N = B * T;
  tensor lnf = tensor::empty({B, T, C}), mean = tensor::empty({N}), rstd = tensor::empty({N});
  k::layernorm_forward(lnf.f32(), mean.f32(), rstd.f32(), x.f32(), P.ptr(lnf_w_), P.ptr(lnf_b_), N, C);
  tensor logits = tensor::empty({B, T, V});
  k::head_forward(logits.f32(), lnf.f32(), P.ptr(wte_), N, C, V);
  if (!targets.defined()) return logits;
  TROUPE_CHECK(targets.numel() == N, "targets ", shape_str(targets.shape()), " for tokens ", shape_str(x.shape()));
  tensor losses = tensor::empty({N}), probs = tensor::empty({N, V});
  k::crossentropy_forward(losses.f32(), probs.f32(), logits.f32(), targets.i32(), N, V);
  st.saved = {x, lnf, mean, rstd, probs, targets};
  return mean_loss(losses);
}

tensor gpt_head_layer::backward(const arena& P, arena& G, const tensor& dy, const stash& st, input_grad,
                                deferred_weight_grads* defer) const {
  const auto& s = st.saved;
  const tensor& x = s.at(h_x);
  int B = int(x.dim(0)), T = int(x.dim(1)), C = d_.d_model, V = d_.vocab, N = B * T;
  tensor dlogits = tensor::empty({N, V});
  k::crossentropy_backward(dlogits.f32(), s[h_probs].f32(), s[h_targets].i32(), dy.f32()[0] / float(N), N, V);
  tensor dlnf = tensor::empty({B, T, C}), dx = tensor::empty({B, T, C});
  if (defer) {
    k::head_backward(dlnf.f32(), nullptr, dlogits.f32(), s[h_lnf].f32(), P.ptr(wte_), N, C, V);
    defer->add([=, dwte = G.ptr(wte_), wte = P.ptr(wte_), lnf = s[h_lnf]] {
      k::head_backward(nullptr, dwte, dlogits.f32(), lnf.f32(), wte, N, C, V);
    });
  } else {
    k::head_backward(dlnf.f32(), G.ptr(wte_), dlogits.f32(), s[h_lnf].f32(), P.ptr(wte_), N, C, V);
  }
  k::layernorm_backward(dx.f32(), G.ptr(lnf_w_), G.ptr(lnf_b_), dlnf.f32(), x.f32(), P.ptr(lnf_w_), s[h_mean].f32(),
                        s[h_rstd].f32(), N, C);
  return dx;
}

}  // namespace troupe
