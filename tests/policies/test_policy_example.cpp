// docs/policies.md's example rule: the docs show apps/examples/drop_stale_rule.hpp as it is,
// the rule decides as documented, and a job trained with it through the shards runs.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "actors/ps_job.hpp"
#include "apps/examples/drop_stale_rule.hpp"
#include "runtime/job_spec.hpp"

using namespace troupe;

namespace {

#ifdef TROUPE_SOURCE_DIR
const std::string source_dir = TROUPE_SOURCE_DIR;
#else
const std::string source_dir = ".";
#endif

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot read ", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("policy example: docs/policies.md shows the example rule exactly as the tests build it") {
  const std::string doc = read_text(source_dir + "/docs/policies.md");
  const std::string code = read_text(source_dir + "/apps/examples/drop_stale_rule.hpp");
  CHECK_MESSAGE(doc.find("```cpp\n" + code + "```") != std::string::npos,
                "docs/policies.md must contain apps/examples/drop_stale_rule.hpp verbatim in a ```cpp block");
}

TEST_CASE("policy example: drop-stale applies fresh enough gradients alone and drops the rest") {
  example::drop_stale_rule r(2);
  worker_view w;
  w.clock = {0, 0};
  w.live = {true, true};
  update_plan p = r.decide({push_info{1, 8, 0, 4}, push_info{0, 5, 0, 4}}, 10, w);
  CHECK(p.take == std::vector<size_t>{0});
  CHECK(p.drop.empty());
  p = r.decide({push_info{0, 5, 0, 4}}, 10, w);
  CHECK(p.take.empty());
  CHECK(p.drop == std::vector<size_t>{0});
  CHECK(r.decide({}, 10, w).empty());
}

TEST_CASE("policy example: a job trains with the registered rule through the parameter shards") {
  example::register_drop_stale_rule(1);
  proto::JobSpec spec = parse_job_spec(R"({"name": "drop_stale",
    "model": {"mlp": {"widths": [784, 32, 10]}}, "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3}}, "train": {"batch_size": 24, "steps": 30, "threads": 1},
    "policy": {"name": "downpour", "workers": 3, "shards": 2}})",
                                       "drop_stale.json");
  spec.mutable_policy()->set_name("drop-stale");
  ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
  CHECK(out.worker_steps == 90);
  for (const shard_stats& st : out.shards) {
    CHECK(st.pushes == 90);
    CHECK(st.applied + st.dropped == 90);
    CHECK(st.version == st.applied);  // one update per applied gradient
    for (size_t t = 2; t < st.staleness.size(); ++t) CHECK(st.staleness[t] == 0);  // none older than 1 applied
  }
  CHECK(out.step_loss.back() < out.step_loss.front());
}
