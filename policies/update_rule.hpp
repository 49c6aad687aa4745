#pragma once
// A parameter shard's update rule: which gradient pushes become one optimizer update,
// when, with what weights and learning-rate factor, which pushes are thrown away, and when
// a worker may have its next parameters. The shard actor (actors/param_shard) keeps the
// tensors, does the arithmetic and answers the messages; a rule only decides. Each rule
// is one file and is chosen by name (`policy.name` in the job spec, docs/policies.md):
//
//   sync          every live worker's gradient of the current version, averaged
//   backup        the first n - b gradients of the current version; the b slowest dropped
//   k-async       any K gradients, whatever version they were computed from
//   downpour      every gradient applied alone as it arrives (Dean et al. 2012)
//   ssp           as downpour, but no worker starts a step more than s ahead of the slowest
//   staleness-lr  as downpour, learning rate divided by the staleness (Zhang et al. 2016)
//   dc-asgd       as downpour, delay-compensated: g + lambda g*g*(w_now - w_pulled)
//                 (Zheng et al. 2017)
//   local-sgd     each worker takes H steps of the job's optimizer on its own, then the
//                 shards average the workers' parameters (Stich 2019; Lin et al. 2020)
//   diloco        as local-sgd, but the averaged change of the parameters over the H steps
//                 is an outer gradient for Nesterov SGD (Douillard et al. 2023)
//
// The local rules push a parameter change, anchor - local (the parameters pulled minus
// the worker's after its H inner steps), where the others push a gradient; the shard
// treats both alike: it combines the pushes the rule takes and steps its optimizer,
// which for a local rule is the rule's outer optimizer (shard_optimizer) rather than the
// job's.
//
// Words: a shard's version counts the updates it has applied (0 before the first); a
// gradient's version is the shard version of the parameters it was computed from; its
// staleness is the shard's version when it is applied minus that. A worker's clock counts
// the gradients it has pushed.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

namespace proto {
class OptimizerSpec;
class PolicySpec;
}

struct push_info {
  int32_t worker = 0;
  int64_t version = 0;  // shard version the gradient was computed from
  int64_t clock = 0;    // the pushing worker's clock before this push (0 for its first)
  int64_t samples = 0;  // examples behind the gradient (a mean over them)
};

// What to do now. Empty `take` and `drop`: nothing until the next arrival.
struct update_plan {
  std::vector<size_t> take;     // indices into the pending pushes, combined into one update
  std::vector<double> weight;   // one per taken push, summing to 1
  double lr_scale = 1;          // multiplies this update's learning rate
  double dc_lambda = 0;         // > 0: each taken gradient is delay-compensated first
  bool dc_adaptive = false;     // ... with lambda / sqrt(moving mean of g*g) (DC-ASGD-a)
  std::vector<size_t> drop;     // indices of pending pushes to discard unused
  bool empty() const { return take.empty() && drop.empty(); }
};

// What a shard knows of the workers, kept from the pushes it received.
struct worker_view {
  std::vector<int64_t> clock;  // gradients each worker has pushed
  std::vector<bool> live;      // false once the worker has failed or finished
  int live_count() const;
  // Smallest clock among live workers; INT64_MAX when none is live.
  int64_t min_live_clock() const;
};

// A worker asking for parameters.
struct pull_info {
  int32_t worker = 0;
  int64_t after_version = -1;  // version its last pushed gradient was computed from; -1: none yet
  int64_t clock = 0;           // gradients it has pushed so far (the step it is about to start)
};

class update_rule {
 public:
  virtual ~update_rule() = default;
  virtual std::string_view name() const = 0;
  // Called after each push joins `pending` (arrival order) and after a worker leaves;
  // the shard applies the plan and asks again until the plan is empty.
  virtual update_plan decide(const std::vector<push_info>& pending, int64_t version,
                             const worker_view& workers) const = 0;
  // Whether `pull` may be answered with the shard's parameters at `version` now; the
  // shard asks again after every update and every push.
  virtual bool may_serve(const pull_info& pull, int64_t version, const worker_view& workers) const = 0;
  // Local rules: the optimizer steps a worker takes on its own between a pull and its
  // push of the parameter change; 0 (the default): a worker pushes every step's gradient.
  virtual int local_steps() const { return 0; }
  // The optimizer the shard steps with the combined pushes: rewrites `opt` (a copy of the
  // job's) into it. By default the job's own.
  virtual void shard_optimizer(proto::OptimizerSpec& opt) const { (void)opt; }
};

// The names of the built-in rules, in the order docs and experiments list them.
const std::vector<std::string>& update_rule_names();
// A rule of one's own (docs/policies.md): make_update_rule builds it for a spec whose
// policy.name is `name`, ahead of a built-in rule of that name. Thread-safe; register
// before the job starts. Job files accept only the built-in names: a registered rule is
// used by jobs built in code (spec.mutable_policy()->set_name(...)).
using update_rule_factory = std::function<std::unique_ptr<update_rule>(const proto::PolicySpec&)>;
void register_update_rule(const std::string& name, update_rule_factory make);
// Throws input_error naming the known rules for an unknown name.
std::unique_ptr<update_rule> make_update_rule(const proto::PolicySpec& spec);

// policy.lr_scaling: the factor on the learning rate of an update made from `samples`
// examples where the single-process step has `batch`: 1 ("none"), samples / batch
// ("linear": SGD's linear scaling rule, Goyal et al. 2017) or its square root ("sqrt":
// the rule for Adam, Malladi et al. 2022). An asynchronous rule's update of one worker's
// slice thus steps as far as a step of that batch size would.
double lr_batch_scale(const std::string& scaling, int64_t samples, int64_t batch);

// Shared by the rules: weights proportional to the pushes' samples.
std::vector<double> sample_weights(const std::vector<push_info>& pending, const std::vector<size_t>& take);

}  // namespace troupe
