#pragma once
// An update rule written outside Troupe's own policies (docs/policies.md walks through it):
// asynchronous SGD that applies each gradient alone as it arrives, like Downpour, but
// throws away any gradient more than `max_staleness` updates old instead of applying it.
#include <memory>

#include "policies/update_rule.hpp"

namespace example {

class drop_stale_rule : public troupe::update_rule {
 public:
  explicit drop_stale_rule(int64_t max_staleness) : max_staleness_(max_staleness) {}

  std::string_view name() const override { return "drop-stale"; }

  troupe::update_plan decide(const std::vector<troupe::push_info>& pending, int64_t version,
                             const troupe::worker_view&) const override {
    troupe::update_plan plan;
    if (pending.empty()) return plan;
    if (version - pending[0].version > max_staleness_) {
      plan.drop = {0};  // too old: discard it, the shard asks again for the next one
    } else {
      plan.take = {0};
      plan.weight = {1.0};
    }
    return plan;
  }

  // Workers never wait: every pull is answered with the current parameters.
  bool may_serve(const troupe::pull_info&, int64_t, const troupe::worker_view&) const override { return true; }

 private:
  int64_t max_staleness_;
};

// Makes the rule known under its name, so a job whose policy.name is "drop-stale" uses it.
inline void register_drop_stale_rule(int64_t max_staleness) {
  troupe::register_update_rule("drop-stale", [max_staleness](const troupe::proto::PolicySpec&) {
    return std::make_unique<drop_stale_rule>(max_staleness);
  });
}

}  // namespace example
