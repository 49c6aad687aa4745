// The backward split of zero-bubble schedules: the input gradient first, the deferred
// weight gradients later, must give the same bits as one whole backward, and the input
// gradient must not wait for (or touch) the weight gradients.
#include <doctest/doctest.h>

#include <cstring>

#include "runtime/model.hpp"

using namespace troupe;

namespace {

std::unique_ptr<model> tiny(bool gpt) {
  proto::ModelSpec spec;
  if (gpt) {
    auto* g = spec.mutable_gpt();
    g->set_n_layer(2), g->set_n_head(2), g->set_d_model(16), g->set_context(8), g->set_vocab(32);
  } else {
    auto* m = spec.mutable_mlp();
    for (int w : {12, 20, 16, 5}) m->add_widths(uint32_t(w));
    m->set_activation("gelu");
  }
  return build_model(spec);
}

tensor tokens(int64_t B, int64_t T, int vocab, uint64_t seed) {
  tensor t = tensor::empty({B, T}, dtype::i32);
  rng r(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.i32()[i] = int32_t(r.uniform() * vocab) % vocab;
  return t;
}

bool same_bits(const tensor& a, const tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.raw(), b.raw(), size_t(a.bytes())) == 0;
}

}  // namespace

TEST_CASE("split backward: input gradient now, weight gradients later, the same bits as one backward") {
  for (bool gpt : {false, true}) {
    CAPTURE(gpt);
    auto net = tiny(gpt);
    arena params(net->table), whole(net->table), split(net->table);
    init_params(*net, params, 7);
    tensor x, y;
    if (gpt) {
      x = tokens(3, 8, 32, 1), y = tokens(3, 8, 32, 2);
    } else {
      x = tensor::empty({6, 12});
      rng r(3);
      for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = float(r.normal());
      y = tensor::empty({6}, dtype::i32);
      for (int i = 0; i < 6; ++i) y.i32()[i] = i % 5;
    }
    tensor scale = tensor::empty({1});
    scale.f32()[0] = 0.5f;
    // Cut the model in two, as two pipeline stages would, so an input gradient crosses.
    const size_t cut = net->layers.size() / 2, n = net->layers.size();
    activations a0, a1, b0, b1;
    tensor h = forward(*net, params, x, y, a0, 0, cut);
    forward(*net, params, h, y, a1, cut, n);
    tensor h2 = forward(*net, params, x, y, b0, 0, cut);
    forward(*net, params, h2, y, b1, cut, n);

    whole.zero();
    tensor dh = backward(*net, params, whole, scale, a1, cut, n);
    backward(*net, params, whole, dh, a0, 0, cut);

    split.zero();
    deferred_weight_grads later1, later0;
    tensor dh2 = backward(*net, params, split, scale, b1, cut, n, &later1);
    CHECK(same_bits(dh, dh2));  // the input gradient alone is already exact
    CHECK_FALSE(later1.empty());
    b1 = activations{};  // the deferred work keeps what it reads
    backward(*net, params, split, dh2, b0, 0, cut, &later0);
    // No weight matrix has a gradient yet (LayerNorm's and the embedding's come at once).
    for (int i = 0; i < int(net->table.entries().size()); ++i) {
      const auto& p = net->table.at(i);
      if (p.name.find("weight") == std::string::npos || p.shape.size() != 2 || p.name == "wpe.weight") continue;
      CAPTURE(p.name);
      bool zero = true;
      for (int64_t j = 0; j < p.numel(); ++j) zero = zero && split.ptr(i)[j] == 0.0f;
      if (p.name != "wte.weight") CHECK(zero);
    }
    later1.run();
    later0.run();
    CHECK(later0.empty());
    for (int i = 0; i < int(net->table.entries().size()); ++i) {
      const auto& p = net->table.at(i);
      CAPTURE(p.name);
      if (p.name != "wte.weight") {
        CHECK(same_bits(whole.get(i), split.get(i)));
        continue;
      }
      // The tied table gets the embedding's share and the head's in the other order.
      for (int64_t j = 0; j < p.numel(); ++j)
        CHECK(split.ptr(i)[j] == doctest::Approx(whole.ptr(i)[j]).epsilon(1e-5).scale(1e-6));
    }
  }
}
