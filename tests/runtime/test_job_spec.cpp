// Job specs: the example jobs parse, defaults are filled, bad specs give errors that name
// the field, and docs/job-spec.md matches the schema field for field.
#include <doctest/doctest.h>
#include <google/protobuf/descriptor.h>  // walking the JobSpec schema

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/data.hpp"
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

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The message of the input_error that parsing `json` must throw.
std::string parse_error(const std::string& json) {
  try {
    parse_job_spec(json, "job.json");
  } catch (const input_error& e) {
    return e.what();
  }
  FAIL("expected an input_error for: ", json);
  return "";
}

// A valid MLP spec with one part replaced: each malformed case differs in one place.
std::string mlp_spec(const std::string& model = R"({"mlp": {"widths": [784, 64, 10]}})",
                     const std::string& train = R"({"batch_size": 32, "epochs": 1})",
                     const std::string& optimizer = R"({"sgd": {"lr": 0.1}})") {
  return R"({"name": "t", "model": )" + model + R"(, "data": {"dataset": "fashion_mnist"}, "optimizer": )" +
         optimizer + R"(, "train": )" + train + "}";
}

std::string gpt_spec(const std::string& gpt) {
  return R"({"model": {"gpt": )" + gpt +
         R"(}, "data": {"dataset": "fortunes"}, "optimizer": {"adamw": {"lr": 1e-3}}, "train": {"batch_size": 4, "steps": 10}})";
}

void schema_paths(const google::protobuf::Descriptor* d, const std::string& prefix, std::set<std::string>& out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    out.insert(path);
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) schema_paths(f->message_type(), path, out);
  }
}

}  // namespace

TEST_CASE("job spec: the example jobs parse and read as intended") {
  const proto::JobSpec mlp = load_job_spec(source_dir + "/apps/jobs/fmnist_mlp.json");
  CHECK(mlp.name() == "fmnist_mlp");
  REQUIRE(mlp.model().has_mlp());
  CHECK(mlp.model().mlp().widths_size() == 4);
  CHECK(mlp.model().mlp().activation() == "relu");
  CHECK(mlp.data().dataset() == "fashion_mnist");
  CHECK(mlp.data().path() == "/usr/share/datasets/fashion-mnist");
  CHECK(mlp.optimizer().sgd().lr() == doctest::Approx(0.05));
  CHECK(mlp.optimizer().sgd().momentum() == doctest::Approx(0.9));
  CHECK(mlp.train().batch_size() == 128);
  CHECK(mlp.train().epochs() == 2);
  CHECK(!mlp.train().has_steps());
  CHECK(mlp.train().metrics_file() == "runs/fmnist_mlp/metrics.jsonl");
  CHECK(describe(mlp) ==
        "fmnist_mlp: mlp 784-256-256-10 relu on fashion_mnist; sgd lr 0.05 momentum 0.9, constant; batch 128, 2 "
        "epochs, seed 1337");

  for (const char* job : {"fmnist_async_straggler.json", "fortunes_diloco.json", "fmnist_sync_shards.json",
                          "fmnist_shards_elastic.json"}) {
    CAPTURE(job);
    const proto::JobSpec p = load_job_spec(source_dir + "/apps/jobs/" + job);
    CHECK(p.policy().name() != "allreduce");
  }
  const proto::JobSpec dl = load_job_spec(source_dir + "/apps/jobs/fortunes_diloco.json");
  CHECK(dl.policy().sync_every() == 50);
  CHECK(dl.optimizer().grad_clip() == doctest::Approx(1.0));

  const proto::JobSpec lng = load_job_spec(source_dir + "/apps/jobs/fmnist_mlp_long.json");
  CHECK(lng.optimizer().lr_schedule() == "cosine");
  CHECK(lng.train().epochs() == 10);

  const proto::JobSpec gpt = load_job_spec(source_dir + "/apps/jobs/fortunes_gpt.json");
  REQUIRE(gpt.model().has_gpt());
  CHECK(gpt.model().gpt().n_layer() == 4);
  CHECK(gpt.model().gpt().n_head() == 4);
  CHECK(gpt.model().gpt().d_model() == 128);
  CHECK(gpt.model().gpt().context() == 128);
  CHECK(gpt.model().gpt().vocab() == 256);
  CHECK(gpt.data().path() == "/usr/share/games/fortunes");
  CHECK(gpt.data().val_fraction() == doctest::Approx(0.1));
  const proto::AdamWSpec& a = gpt.optimizer().adamw();
  CHECK(a.lr() == doctest::Approx(1e-3));
  CHECK(a.beta1() == doctest::Approx(0.9));
  CHECK(a.beta2() == doctest::Approx(0.95));
  CHECK(a.eps() == doctest::Approx(1e-8));
  CHECK(a.weight_decay() == doctest::Approx(0.1));
  CHECK(gpt.optimizer().grad_clip() == doctest::Approx(1.0));
  CHECK(gpt.train().batch_size() == 16);
  CHECK(gpt.train().steps() == 300);
  CHECK(gpt.train().sample_tokens() == 200);
  CHECK(has(describe(gpt), "gpt 4 layers, 4 heads, d_model 128, context 128 on fortunes"));
  CHECK(has(describe(gpt), "300 steps"));
}

TEST_CASE("job spec: defaults fill every unset field that applies") {
  const proto::JobSpec s = parse_job_spec(
      R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
          "optimizer": {"sgd": {"lr": 0.1}}, "train": {"batchSize": 8, "epochs": 1}})",
      "job.json");
  CHECK(s.name() == "job");
  CHECK(s.model().mlp().activation() == "relu");
  CHECK(s.data().path() == "/usr/share/datasets/fashion-mnist");
  CHECK(!s.data().has_val_fraction());  // fashion_mnist evaluates on its test files
  CHECK(s.optimizer().sgd().momentum() == 0.0f);
  CHECK(s.optimizer().sgd().weight_decay() == 0.0f);
  CHECK(s.optimizer().grad_clip() == 0.0f);
  CHECK(s.optimizer().lr_schedule() == "constant");
  CHECK(s.optimizer().warmup_steps() == 0);
  CHECK(s.train().batch_size() == 8);  // written batchSize: protobuf's JSON takes both
  CHECK(s.train().seed() == 1337);
  CHECK(s.train().has_threads());
  CHECK(s.train().threads() == 0);
  CHECK(s.train().log_every() == 10);
  CHECK(s.train().metrics_file() == "runs/job/metrics.jsonl");
  CHECK(s.train().eval_batches() == 50);
  CHECK(!s.train().has_sample_tokens());

  const proto::JobSpec g = parse_job_spec(gpt_spec("{}"), "job.json");
  CHECK(g.model().gpt().n_layer() == 4);
  CHECK(g.model().gpt().n_head() == 4);
  CHECK(g.model().gpt().d_model() == 128);
  CHECK(g.model().gpt().context() == 128);
  CHECK(g.model().gpt().vocab() == 256);
  CHECK(g.data().val_fraction() == 0.1f);
  CHECK(g.optimizer().adamw().beta1() == 0.9f);
  CHECK(g.optimizer().adamw().beta2() == 0.999f);
  CHECK(g.optimizer().adamw().eps() == 1e-8f);
  CHECK(g.optimizer().adamw().weight_decay() == 0.01f);
  CHECK(g.train().sample_tokens() == 200);
  CHECK(parse_job_spec(gpt_spec(R"({"n_head": 8, "d_model": 64})"), "job.json").model().gpt().d_model() == 64);

  // Numbers as strings, as protobuf's JSON mapping allows; the full uint64 range for seeds.
  const proto::JobSpec q = parse_job_spec(
      R"({"model": {"gpt": {"context": "64"}}, "data": {"dataset": "fortunes"}, "optimizer": {"adamw": {"lr": "1e-3"}},
          "train": {"batch_size": "4", "steps": 10, "seed": "18446744073709551615"}})",
      "job.json");
  CHECK(q.model().gpt().context() == 64);
  CHECK(q.optimizer().adamw().lr() == 1e-3f);
  CHECK(q.train().batch_size() == 4);
  CHECK(q.train().seed() == 18446744073709551615ull);
}

TEST_CASE("job spec: malformed specs name the file, the field, the value and what is allowed") {
  struct bad_case {
    std::string what;
    std::string json;
    std::vector<std::string> parts;  // each must appear in the message
  };
  const std::vector<bad_case> cases = {
      {"unknown field", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 32, "epochs": 1, "bach_size": 2})"),
       {"job.json: train.bach_size: unknown field (did you mean \"batch_size\"?)", "known fields of train"}},
      {"unknown top-level field", R"({"nmae": "x"})", {"job.json: nmae: unknown field", "\"name\""}},
      {"wrong type", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": "big", "epochs": 1})"),
       {"job.json: train.batch_size: invalid value \"big\": expected an integer in [1, 1048576]"}},
      {"negative size", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": -1, "epochs": 1})"),
       {"job.json: train.batch_size: invalid value -1: expected an integer in [1, 1048576]"}},
      {"zero size", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 0, "epochs": 1})"),
       {"job.json: train.batch_size: invalid value 0: expected an integer in [1, 1048576]"}},
      {"fractional size", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 1.5, "epochs": 1})"),
       {"train.batch_size", "1.5"}},
      {"missing batch size", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"epochs": 1})"),
       {"train.batch_size: missing"}},
      {"bad enum string", mlp_spec(R"({"mlp": {"widths": [784, 10], "activation": "tanhh"}})"),
       {"model.mlp.activation: invalid value \"tanhh\"", "\"relu\", \"gelu\""}},
      {"d_model not divisible by n_head", gpt_spec(R"({"n_head": 3, "d_model": 128})"),
       {"model.gpt.d_model: invalid value 128", "multiple of model.gpt.n_head (3)"}},
      {"vocab not 256", gpt_spec(R"({"vocab": 512})"), {"model.gpt.vocab: invalid value 512", "256"}},
      {"both epochs and steps", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1, "steps": 5})"),
       {"train.epochs", "train.steps"}},
      {"neither epochs nor steps", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8})"),
       {"train.steps: missing", "train.epochs"}},
      {"epochs for text", R"({"model": {"gpt": {}}, "data": {"dataset": "fortunes"}, "optimizer": {"adamw": {"lr": 1e-3}},
                              "train": {"batch_size": 4, "epochs": 1}})",
       {"train.epochs", "fortunes"}},
      {"missing optimizer", R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
                                "train": {"batch_size": 8, "epochs": 1}})",
       {"job.json: optimizer: missing", "optimizer.sgd", "optimizer.adamw"}},
      {"empty optimizer", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                                   R"({"grad_clip": 1})"),
       {"optimizer:", "optimizer.sgd"}},
      {"two optimizers", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                                  R"({"sgd": {"lr": 1}, "adamw": {"lr": 1}})"),
       {"optimizer.sgd", "optimizer.adamw", "exactly one"}},
      {"sgd without lr", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                                  R"({"sgd": {"momentum": 0.9}})"),
       {"optimizer.sgd.lr: missing", "> 0"}},
      {"momentum 1", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                              R"({"sgd": {"lr": 0.1, "momentum": 1}})"),
       {"optimizer.sgd.momentum: invalid value 1: expected a number in [0, 1)"}},
      {"NaN lr", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                          R"({"sgd": {"lr": "NaN"}})"),
       {"optimizer.sgd.lr: invalid value nan"}},
      {"bad schedule", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1})",
                                R"({"sgd": {"lr": 0.1}, "lr_schedule": "linear"})"),
       {"optimizer.lr_schedule: invalid value \"linear\"", "\"constant\", \"cosine\""}},
      {"missing model", R"({"data": {"dataset": "fashion_mnist"}})", {"job.json: model: missing"}},
      {"two models", R"({"model": {"mlp": {"widths": [784, 10]}, "gpt": {}}})", {"model.gpt", "model.mlp", "exactly one"}},
      {"model / data mismatch", R"({"model": {"gpt": {}}, "data": {"dataset": "fashion_mnist"}})",
       {"data.dataset: invalid value \"fashion_mnist\" for a gpt model", "\"fortunes\""}},
      {"unknown dataset", R"({"model": {"gpt": {}}, "data": {"dataset": "cifar"}})",
       {"data.dataset: invalid value \"cifar\"", "\"fashion_mnist\", \"fortunes\""}},
      {"mlp input width", mlp_spec(R"({"mlp": {"widths": [100, 10]}})"), {"model.mlp.widths[0]: invalid value 100", "784"}},
      {"mlp classes", mlp_spec(R"({"mlp": {"widths": [784, 64, 9]}})"), {"model.mlp.widths[2]: invalid value 9", "10"}},
      {"mlp zero width", mlp_spec(R"({"mlp": {"widths": [784, 0, 10]}})"), {"model.mlp.widths[1]: invalid value 0"}},
      {"mlp one width", mlp_spec(R"({"mlp": {"widths": [784]}})"), {"model.mlp.widths", "at least 2"}},
      {"widths not a list", mlp_spec(R"({"mlp": {"widths": 784}})"), {"model.mlp.widths: invalid value 784", "a list"}},
      {"widths element wrong type", mlp_spec(R"({"mlp": {"widths": [784, "x", 10]}})"),
       {"model.mlp.widths[1]: invalid value \"x\""}},
      {"threads too many", mlp_spec(R"({"mlp": {"widths": [784, 10]}})", R"({"batch_size": 8, "epochs": 1, "threads": 1000})"),
       {"train.threads: invalid value 1000", "[0, 256]", "all cores"}},
      {"sample_tokens for mlp", mlp_spec(R"({"mlp": {"widths": [784, 10]}})",
                                         R"({"batch_size": 8, "epochs": 1, "sample_tokens": 5})"),
       {"train.sample_tokens", "gpt"}},
      {"sample_tokens too many", gpt_spec("{}").replace(gpt_spec("{}").find("\"steps\""), 0, "\"sample_tokens\": 20000, "),
       {"train.sample_tokens: invalid value 20000", "[0, 10000]"}},
      {"bad name", gpt_spec("{}").replace(1, 0, R"("name": "../x", )"), {"job.json: name: invalid value \"../x\""}},
      {"string for a message", R"({"train": "fast"})", {"train: invalid value \"fast\"", "JSON object"}},
      {"not an object", "[1, 2]", {"job.json: top level", "JSON object"}},
      {"syntax error", R"({"name": "x", "model": {"mlp": )", {"job.json: not valid JSON", "Unexpected end"}},
      {"missing comma", R"({"name": "x" "model": {}})", {"job.json: not valid JSON"}},
  };
  for (const bad_case& c : cases) {
    CAPTURE(c.what);
    const std::string msg = parse_error(c.json);
    CAPTURE(msg);
    CHECK(has(msg, "job.json"));
    for (const std::string& part : c.parts) CHECK_MESSAGE(has(msg, part), "missing \"", part, "\"");
  }
}

// A valid policy job with the policy section replaced.
std::string policy_spec(const std::string& policy, const std::string& extra = "") {
  return R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 1e-3}}, "train": {"batch_size": 12, "steps": 5}, "policy": )" + policy + extra + "}";
}

TEST_CASE("job spec: the policy section is checked field by field, with defaults per rule") {
  struct bad_case {
    const char* what;
    std::string json;
    std::vector<std::string> parts;
  };
  const std::vector<bad_case> cases = {
      {"unknown rule", policy_spec(R"({"name": "hogwild"})"), {"policy.name: invalid value \"hogwild\"", "\"dc-asgd\""}},
      {"workers do not divide", policy_spec(R"({"name": "sync", "workers": 5})"),
       {"policy.workers: invalid value 5", "divisor of train.batch_size (12)"}},
      {"backup too many", policy_spec(R"({"name": "backup", "workers": 4, "backup": 4})"),
       {"policy.backup: invalid value 4", "fewer than policy.workers (4)"}},
      {"knob of another rule", policy_spec(R"({"name": "sync", "staleness": 2})"),
       {"policy.staleness", "only applies to policy.name \"ssp\""}},
      {"k above workers", policy_spec(R"({"name": "k-async", "workers": 2, "k": 3})"), {"policy.k: invalid value 3"}},
      {"allreduce with workers", policy_spec(R"({"workers": 2})"), {"policy.name", "allreduce", "no other policy field"}},
      {"with replicas", policy_spec(R"({"name": "sync"})", R"(, "parallel": {"replicas": 2})"),
       {"policy.name", "parallel.replicas"}},
      {"with grad_clip", R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
         "optimizer": {"adamw": {"lr": 1e-3}, "grad_clip": 1}, "train": {"batch_size": 12, "steps": 5},
         "policy": {"name": "downpour"}})",
       {"optimizer.grad_clip", "expected 0"}},
      {"straggler without worker", policy_spec(R"({"name": "sync", "sample_ms": 1, "stragglers": [{"slowdown": 2}]})"),
       {"policy.stragglers[0].worker", "missing"}},
      {"straggler worker out of range",
       policy_spec(R"({"name": "sync", "workers": 2, "sample_ms": 1, "stragglers": [{"worker": 2, "slowdown": 2}]})"),
       {"policy.stragglers[0].worker: invalid value 2", "less than policy.workers (2)"}},
      {"straggler named twice",
       policy_spec(R"({"name": "sync", "sample_ms": 1, "stragglers": [{"worker": 0, "slowdown": 2}, {"worker": 0}]})"),
       {"policy.stragglers[1].worker", "named twice"}},
      {"slow-down without emulation", policy_spec(R"({"name": "sync", "stragglers": [{"worker": 1, "slowdown": 2}]})"),
       {"policy.stragglers[0]", "policy.sample_ms is 0"}},
      {"probability above 1",
       policy_spec(R"({"name": "sync", "sample_ms": 1, "stragglers": [{"worker": 1, "spike_prob": 1.5}]})"),
       {"policy.stragglers[0].spike_prob: invalid value 1.5"}},
      {"unknown straggler field", policy_spec(R"({"name": "sync", "stragglers": [{"worker": 1, "slow": 2}]})"),
       {"policy.stragglers[0]", "slow"}},
      {"sync_every of a gradient rule", policy_spec(R"({"name": "sync", "sync_every": 5})"),
       {"policy.sync_every", "only applies to policy.name \"local-sgd\" or \"diloco\""}},
      {"outer_lr of local-sgd", policy_spec(R"({"name": "local-sgd", "outer_lr": 0.5})"),
       {"policy.outer_lr", "only applies to policy.name \"diloco\""}},
      {"sync_every 0", policy_spec(R"({"name": "diloco", "sync_every": 0})"), {"policy.sync_every: invalid value 0"}},
      {"outer momentum 1", policy_spec(R"({"name": "diloco", "outer_momentum": 1})"),
       {"policy.outer_momentum: invalid value 1"}},
      {"outer lr 0", policy_spec(R"({"name": "diloco", "outer_lr": 0})"), {"policy.outer_lr: invalid value 0"}},
      {"unknown lr scaling", policy_spec(R"({"name": "downpour", "lr_scaling": "cube"})"),
       {"policy.lr_scaling", "cube", "\"none\"", "\"sqrt\""}},
      {"lr scaling of a local rule", policy_spec(R"({"name": "diloco", "lr_scaling": "sqrt"})"),
       {"policy.lr_scaling", "only applies to the gradient rules"}},
      {"stealing with backup", policy_spec(R"({"name": "backup", "workers": 3, "steal_micro_batches": 6})"),
       {"policy.steal_micro_batches", "only applies to policy.name \"sync\""}},
      {"micro-batches not a multiple of the workers",
       policy_spec(R"({"name": "sync", "workers": 4, "steal_micro_batches": 6})"),
       {"policy.steal_micro_batches: invalid value 6", "a multiple of policy.workers (4)", "train.batch_size (12)"}},
      {"micro-batches not dividing the batch", policy_spec(R"({"name": "sync", "workers": 2, "steal_micro_batches": 8})"),
       {"policy.steal_micro_batches: invalid value 8"}},
      {"stealing and balancing", policy_spec(R"({"name": "sync", "workers": 2, "steal_micro_batches": 4, "balance_every": 2})"),
       {"policy.steal_micro_batches", "policy.balance_every"}},
      {"nesterov without momentum", R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
         "optimizer": {"sgd": {"lr": 0.1, "nesterov": true}}, "train": {"batch_size": 12, "steps": 5}})",
       {"optimizer.sgd.nesterov", "momentum > 0"}},
  };
  for (const bad_case& c : cases) {
    CAPTURE(c.what);
    const std::string msg = parse_error(c.json);
    CAPTURE(msg);
    CHECK(has(msg, "job.json"));
    for (const std::string& part : c.parts) CHECK_MESSAGE(has(msg, part), "missing \"", part, "\"");
  }
  const proto::JobSpec plain = parse_job_spec(policy_spec("{}"), "job.json");
  CHECK(plain.policy().name() == "allreduce");
  const proto::JobSpec k = parse_job_spec(policy_spec(R"({"name": "k-async", "workers": 4})"), "job.json");
  CHECK(k.policy().k() == 2);
  CHECK(k.policy().shards() == 1);
  const proto::JobSpec ssp = parse_job_spec(policy_spec(R"({"name": "ssp"})"), "job.json");
  CHECK(ssp.policy().workers() == 2);
  CHECK(ssp.policy().staleness() == 3);
  CHECK_FALSE(ssp.policy().has_k());
  const proto::JobSpec f = parse_job_spec(
      policy_spec(R"({"name": "sync", "workers": 3, "stragglers": [{"worker": 2, "fail_at_step": 4}]})"), "job.json");
  CHECK(f.policy().stragglers(0).fail_at_step() == 4);
  // A local rule's workers clip their own whole gradient: grad_clip is allowed there.
  const proto::JobSpec d = parse_job_spec(R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
         "optimizer": {"adamw": {"lr": 1e-3}, "grad_clip": 1}, "train": {"batch_size": 12, "steps": 5},
         "policy": {"name": "diloco", "workers": 3}})", "job.json");
  CHECK(d.policy().sync_every() == 50);
  CHECK(d.policy().outer_lr() == doctest::Approx(0.7));
  CHECK(d.policy().outer_momentum() == doctest::Approx(0.9));
}

TEST_CASE("job spec: a missing data directory is reported, with its path, when the data is loaded") {
  const proto::JobSpec s = parse_job_spec(
      R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist", "path": "/nonexistent/fmnist"},
          "optimizer": {"sgd": {"lr": 0.1}}, "train": {"batch_size": 8, "epochs": 1}})",
      "job.json");
  CHECK(s.data().path() == "/nonexistent/fmnist");
  try {
    load_fashion_mnist(s.data().path(), true);
    FAIL("expected an input_error");
  } catch (const input_error& e) {
    CHECK(has(e.what(), "/nonexistent/fmnist/train-images-idx3-ubyte.gz"));
  }
  try {
    load_job_spec("/nonexistent/job.json");
    FAIL("expected an input_error");
  } catch (const input_error& e) {
    CHECK(has(e.what(), "/nonexistent/job.json"));
  }
}

TEST_CASE("job spec: docs/job-spec.md documents exactly the fields of the schema") {
  std::set<std::string> schema;
  schema_paths(proto::JobSpec::descriptor(), "", schema);
  REQUIRE(schema.count("train.batch_size") == 1);
  REQUIRE(schema.count("model.gpt.n_head") == 1);

  const std::string doc = read_text(source_dir + "/docs/job-spec.md");
  const std::regex row_field(R"(^\|\s*`([^`]+)`\s*\|)");           // a table row naming a field
  const std::regex dotted(R"(`([a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+)`)");  // `a.b.c` anywhere in a row
  std::set<std::string> documented;
  std::istringstream lines(doc);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("|", 0) != 0 || line.rfind("|---", 0) == 0 || line.rfind("| Field", 0) == 0) continue;
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_search(line, m, row_field), "table row without a `field` first: ", line);
    CHECK_MESSAGE(schema.count(m[1]) == 1, "docs/job-spec.md documents `", m[1].str(), "`, not in the schema");
    documented.insert(m[1]);
    for (auto it = std::sregex_iterator(line.begin(), line.end(), dotted); it != std::sregex_iterator(); ++it)
      CHECK_MESSAGE(schema.count((*it)[1]) == 1, "docs/job-spec.md mentions `", (*it)[1].str(),
                    "`, not in the schema");
  }
  for (const std::string& path : schema)
    CHECK_MESSAGE(documented.count(path) == 1, "schema field `", path, "` has no row in docs/job-spec.md");
}

TEST_CASE("job spec: the JSON examples in docs/job-spec.md parse") {
  const std::string doc = read_text(source_dir + "/docs/job-spec.md");
  const std::string open = "```json\n", close = "```";
  int examples = 0;
  for (size_t at = doc.find(open); at != std::string::npos; at = doc.find(open, at)) {
    at += open.size();
    const size_t end = doc.find(close, at);
    REQUIRE(end != std::string::npos);
    const std::string json = doc.substr(at, end - at);
    CAPTURE(json);
    CHECK_NOTHROW(parse_job_spec(json, "docs/job-spec.md"));
    ++examples;
    at = end + close.size();
  }
  CHECK(examples >= 2);
}

TEST_CASE("job spec: the parallel section has defaults and clear errors") {
  auto with_parallel = [](const std::string& parallel) {
    return R"({"model": {"gpt": {"n_layer": 2}}, "data": {"dataset": "fortunes"}, "optimizer": {"adamw": {"lr": 1e-3}},
               "train": {"batch_size": 8, "steps": 10}, "parallel": )" +
           parallel + "}";
  };
  proto::JobSpec none = parse_job_spec(gpt_spec("{}"), "job.json");
  CHECK(none.parallel().stages() == 1);
  CHECK(none.parallel().micro_batches() == 1);
  CHECK(none.parallel().schedule() == "1f1b");
  proto::JobSpec two = parse_job_spec(with_parallel(R"({"stages": 2})"), "job.json");
  CHECK(two.parallel().micro_batches() == 4);
  CHECK(parse_job_spec(with_parallel(R"({"stages": 2, "schedule": "interleaved"})"), "job.json").parallel().chunks() == 2);
  const auto hosts = parse_job_spec(with_parallel(R"({"hosts": ["10.0.0.1", "any", "fd00::2"]})"), "job.json");
  CHECK(hosts.parallel().hosts_size() == 3);
  CHECK(hosts.parallel().hosts(2) == "fd00::2");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"stages": 2, "micro_batches": 3})",
       "job.json: parallel.micro_batches: invalid value 3: expected a divisor of train.batch_size / parallel.replicas (8)"},
      {R"({"replicas": 3})", "job.json: parallel.replicas: invalid value 3: expected a divisor of train.batch_size (8)"},
      {R"({"replicas": 4, "micro_batches": 4})",
       "parallel.micro_batches: invalid value 4: expected a divisor of train.batch_size / parallel.replicas (2)"},
      {R"({"stages": 5, "micro_batches": 8})", "job.json: parallel.stages: invalid value 5: the model has 4 layers, too few for 5"},
      {R"({"stages": 2, "schedule": "interleaved", "chunks": 3})", "too few for 6 pipeline pieces (stages x chunks)"},
      {R"({"stages": 2, "chunks": 2})", "parallel.chunks: only applies to parallel.schedule \"interleaved\""},
      {R"({"schedule": "zigzag"})", "parallel.schedule: invalid value \"zigzag\""},
      {R"({"transport": "carrier-pigeon"})", "parallel.transport: invalid value \"carrier-pigeon\""},
      {R"({"stages": 0})", "parallel.stages: invalid value 0"},
      {R"({"stages": 4, "micro_batches": 4, "schedule": "interleaved", "chunks": 2})",
       "the model has 4 layers, too few for 8"},
      {R"({"hosts": ["10.0.0.1", "node7"]})",
       "job.json: parallel.hosts[1]: invalid value \"node7\": expected an IPv4 or IPv6 address (the one the process "
       "runs at) or \"any\""},
      {R"({"hosts": "10.0.0.1"})", "parallel.hosts: invalid value \"10.0.0.1\": expected a list [ ... ]"},
      {R"({"stages": 2, "replicas": 2, "devices": 3})",
       "job.json: parallel.devices: invalid value 3: expected 0 (one device per stage actor) or a multiple of "
       "parallel.replicas (2), so that replicas never share a device"},
  };
  for (const auto& [parallel, want] : bad) {
    CAPTURE(parallel);
    try {
      parse_job_spec(with_parallel(parallel), "job.json");
      FAIL("expected an error");
    } catch (const input_error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(want) != std::string::npos, std::string(e.what()));
    }
  }
}
