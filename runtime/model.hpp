#pragma once
// A model is an ordered layer list plus the table of its parameters. Forward and
// backward run over a range of layers, so a pipeline stage is just [first, last).
#include <memory>
#include <string>

#include "runtime/layers.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

enum class model_kind : uint8_t { mlp, gpt };

struct model {
  model_kind kind = model_kind::mlp;
  gpt_dims gpt;     // for kind == gpt
  int classes = 0;  // for kind == mlp
  layer_list layers;
  param_table table;
  std::string describe() const;  // "GPT 4 layers, ... 0.80M parameters"
};

std::unique_ptr<model> build_model(const proto::ModelSpec& spec);
// Parameters from a seed: each layer in order draws from one generator.
void init_params(const model& m, arena& params, uint64_t seed);

// What a forward pass over a range of layers leaves for its backward pass.
struct activations {
  std::vector<stash> stashes;  // one per layer of the range
};

tensor forward(const model& m, const arena& params, const tensor& x, const tensor& targets, activations& acts,
               size_t first = 0, size_t last = size_t(-1));
// With `defer`, the layers' weight-gradient GEMMs are left in it (see layer.hpp).
// after_layer (optional) is called with each layer's index once that layer has added all
// its parameter gradients: right after its backward, or, with `defer`, from the deferred
// work, after the layer's own part of it.
tensor backward(const model& m, const arena& params, arena& grads, const tensor& dy, const activations& acts,
                size_t first = 0, size_t last = size_t(-1), deferred_weight_grads* defer = nullptr,
                const std::function<void(size_t)>& after_layer = {});

// Bytes a stash keeps alive for backward: each saved view's own elements, a view counted
// once however many layers keep it (a view of a whole batch counts only its rows).
double saved_bytes(const stash& st);
double saved_bytes(const activations& acts);

// Forward without keeping anything: logits (targets undefined) or the mean loss.
tensor infer(const model& m, const arena& params, const tensor& x, const tensor& targets = {});

}  // namespace troupe
