#include "policies/update_rule.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>

#include "policies/update_rules.hpp"
#include "runtime/check.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

int worker_view::live_count() const { return int(std::count(live.begin(), live.end(), true)); }

int64_t worker_view::min_live_clock() const {
  int64_t m = std::numeric_limits<int64_t>::max();
  for (size_t w = 0; w < clock.size(); ++w)
    if (live[w]) m = std::min(m, clock[w]);
  return m;
}

std::vector<double> sample_weights(const std::vector<push_info>& pending, const std::vector<size_t>& take) {
  double total = 0;
  for (size_t i : take) total += double(pending[i].samples);
  std::vector<double> w;
  for (size_t i : take) w.push_back(total > 0 ? double(pending[i].samples) / total : 1.0 / double(take.size()));
  return w;
}

double lr_batch_scale(const std::string& scaling, int64_t samples, int64_t batch) {
  const double r = batch > 0 ? double(samples) / double(batch) : 1.0;
  if (scaling == "linear") return r;
  if (scaling == "sqrt") return std::sqrt(r);
  return 1.0;
}

const std::vector<std::string>& update_rule_names() {
  static const std::vector<std::string> names = {"sync", "backup",       "k-async", "downpour",  "ssp",
                                                 "staleness-lr", "dc-asgd", "local-sgd", "diloco"};
  return names;
}

namespace {

std::mutex registry_mutex;
std::map<std::string, update_rule_factory>& registry() {
  static std::map<std::string, update_rule_factory> r;
  return r;
}

}  // namespace

void register_update_rule(const std::string& name, update_rule_factory make) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry()[name] = std::move(make);
}

std::unique_ptr<update_rule> make_update_rule(const proto::PolicySpec& spec) {
  const std::string& n = spec.name();
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry().find(n);
    if (it != registry().end()) return it->second(spec);
  }
  if (n == "sync") return std::make_unique<sync_rule>();
  if (n == "backup") return std::make_unique<backup_workers_rule>(int(spec.backup()));
  if (n == "k-async") return std::make_unique<k_async_rule>(int(spec.k()));
  if (n == "downpour") return std::make_unique<downpour_rule>();
  if (n == "ssp") return std::make_unique<ssp_rule>(int64_t(spec.staleness()));
  if (n == "staleness-lr") return std::make_unique<staleness_lr_rule>();
  if (n == "dc-asgd") return std::make_unique<dc_asgd_rule>(spec.dc_lambda(), spec.dc_adaptive());
  if (n == "local-sgd") return std::make_unique<local_sgd_rule>(int(std::max(1u, spec.sync_every())));
  if (n == "diloco")
    return std::make_unique<diloco_rule>(int(std::max(1u, spec.sync_every())), spec.outer_lr(), spec.outer_momentum());
  std::string known;
  for (const std::string& k : update_rule_names()) known += (known.empty() ? "" : ", ") + k;
  throw input_error("policy.name: unknown update rule '" + n + "' (known: " + known + ")");
}

}  // namespace troupe
