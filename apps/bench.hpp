#pragma once
#include <string>
#include <vector>

namespace troupe {

// The flags `bench train` and `bench parallel` share: --model mlp|gpt, --steps N (>= 3),
// --rounds N, --json FILE, and the PyTorch switch (`torch_flag`: "--torch" turns the
// baselines on, "--no-torch" off). parse() prints what is wrong to stderr and returns
// false for an unknown or bad flag.
struct bench_flags {
  std::string only;  // "mlp", "gpt", or empty for both
  int steps = 0, rounds = 1;
  bool torch = false;
  std::string json_path;
  bool parse(const std::vector<std::string>& args, const std::string& command, const std::string& torch_flag,
             const std::string& usage);
};

// The median of `v` (the upper one of an even count; 0 when empty).
double median_of(std::vector<double> v);

// A bench's JSON into `path` (its directory made), then "json: PATH" on stdout; false, with
// "troupe COMMAND: cannot write PATH" on stderr, when it cannot be written.
bool write_bench_json(const std::string& path, const std::string& json, const std::string& command);

int bench_main(const std::vector<std::string>& args);
int bench_pipeline_main(const std::vector<std::string>& args);
int bench_actors_main(const std::vector<std::string>& args);
int bench_parallel_main(const std::vector<std::string>& args);
int bench_allreduce_main(const std::vector<std::string>& args);
int bench_checkpoint_main(const std::vector<std::string>& args);
int bench_recovery_main(const std::vector<std::string>& args);
}
