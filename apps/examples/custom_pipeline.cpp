// Example: a job the JSON spec cannot express, built with the C++ API.
//
// The job spec's MLP has one activation for every hidden layer; this one alternates GELU
// and ReLU, and is built as a layer list in code. It trains on Fashion-MNIST as 3
// pipeline stages (GPipe) x 2 data-parallel replicas: six stage actors, the same graph
// `troupe train` builds from a spec. At the end the stages' parameters are assembled into
// one model and evaluated on the test set.
//
// Usage: custom_pipeline [STEPS]   (default 300; exits 1 if test accuracy < 0.75)
#include <cstdio>
#include <cstdlib>

#include "actors/pipeline_job.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"

using namespace troupe;

// The model, in code: the spec only supplies data, optimizer and schedule.
std::unique_ptr<model> alternating_mlp() {
  auto m = std::make_unique<model>();
  m->kind = model_kind::mlp;
  m->classes = 10;
  const int widths[] = {784, 256, 128, 64, 10};
  for (int i = 0; i < 4; ++i) {
    m->layers.push_back(std::make_unique<linear_layer>("fc" + std::to_string(i), widths[i], widths[i + 1]));
    if (i < 3)
      m->layers.push_back(std::make_unique<activation_layer>(
          "act" + std::to_string(i), i % 2 == 0 ? activation_kind::gelu : activation_kind::relu, widths[i + 1]));
  }
  m->layers.push_back(std::make_unique<softmax_ce_layer>(10));
  for (auto& l : m->layers) l->declare(m->table);
  return m;
}

int main(int argc, char** argv) {
  use_fast_blas(argv);
  long steps = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 300;
  if (steps < 1 || steps > 100000) {
    std::fprintf(stderr, "custom_pipeline: STEPS must be 1..100000, got '%s'\n", argv[1]);
    return 2;
  }
  try {
    // widths here only satisfy the spec's checks; make_model below replaces the model.
    proto::JobSpec spec = parse_job_spec(R"({"name": "custom_pipeline",
        "model": {"mlp": {"widths": [784, 256, 128, 64, 10]}}, "data": {"dataset": "fashion_mnist"},
        "optimizer": {"sgd": {"lr": 0.05, "momentum": 0.9}},
        "train": {"batch_size": 128, "steps": 1, "threads": 2},
        "parallel": {"stages": 3, "replicas": 2, "micro_batches": 4, "schedule": "gpipe"}})",
                                         "custom_pipeline");
    spec.mutable_train()->set_steps(uint32_t(steps));

    caf::actor_system_config cfg;
    register_message_types(cfg);
    caf::actor_system sys{cfg};
    pipeline_options opts = pipeline_options::from(spec);
    opts.make_model = alternating_mlp;
    pipeline_outcome out = run_pipeline_training(sys, spec, opts, steps);
    for (size_t s = 0; s < out.layout.size(); ++s) {
      std::printf("stage %zu holds:", s);
      for (const auto& name : out.layout[s]) std::printf(" %s", name.c_str());
      std::printf("\n");
    }
    std::printf("loss: step 1 %.4f -> step %ld %.4f\n", out.losses.front(), steps, out.losses.back());

    // One model with every stage's parameters, on the test set.
    set_compute_threads(2);
    auto whole = alternating_mlp();
    arena params(whole->table);
    for (size_t i = 0; i < whole->table.entries().size(); ++i)
      params.get(int(i)).copy_from(out.params.at(whole->table.entries()[i].name));
    image_set test = load_fashion_mnist(spec.data().path(), false);
    tensor logits = infer(*whole, params, test.images);
    int64_t correct = 0;
    for (int64_t i = 0; i < logits.dim(0); ++i) {
      const float* row = logits.f32() + i * 10;
      correct += std::max_element(row, row + 10) - row == test.labels.i32()[i];
    }
    double accuracy = double(correct) / double(logits.dim(0));
    std::printf("test accuracy %.4f on %lld images\n", accuracy, (long long)logits.dim(0));
    return accuracy >= 0.75 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_pipeline: %s\n", e.what());
    return 1;
  }
}
