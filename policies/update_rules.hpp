#pragma once
// The update rules behind make_update_rule, one .cpp each (update_rule.hpp says what each
// decides).
#include "policies/update_rule.hpp"

namespace troupe {

class sync_rule : public update_rule {
 public:
  std::string_view name() const override { return "sync"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info& pull, int64_t version, const worker_view& w) const override;
};

class backup_workers_rule : public update_rule {
 public:
  explicit backup_workers_rule(int backup) : backup_(backup) {}
  std::string_view name() const override { return "backup"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info& pull, int64_t version, const worker_view& w) const override;

 private:
  int backup_;
};

class k_async_rule : public update_rule {
 public:
  explicit k_async_rule(int k) : k_(k) {}
  std::string_view name() const override { return "k-async"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info&, int64_t, const worker_view&) const override { return true; }

 private:
  int k_;
};

class downpour_rule : public update_rule {
 public:
  std::string_view name() const override { return "downpour"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info&, int64_t, const worker_view&) const override { return true; }
};

class ssp_rule : public update_rule {
 public:
  explicit ssp_rule(int64_t bound) : bound_(bound) {}
  std::string_view name() const override { return "ssp"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info& pull, int64_t version, const worker_view& w) const override;

 private:
  int64_t bound_;
};

class staleness_lr_rule : public update_rule {
 public:
  std::string_view name() const override { return "staleness-lr"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info&, int64_t, const worker_view&) const override { return true; }
};

class dc_asgd_rule : public update_rule {
 public:
  dc_asgd_rule(double lambda, bool adaptive) : lambda_(lambda), adaptive_(adaptive) {}
  std::string_view name() const override { return "dc-asgd"; }
  update_plan decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const override;
  bool may_serve(const pull_info&, int64_t, const worker_view&) const override { return true; }

 private:
  double lambda_;
  bool adaptive_;
};

// Local SGD: as sync (every live worker's push of the current version, averaged), but each
// push is the change over `steps` local steps, applied by SGD with lr 1: the new
// parameters are the workers' mean.
class local_sgd_rule : public sync_rule {
 public:
  explicit local_sgd_rule(int steps) : steps_(steps) {}
  std::string_view name() const override { return "local-sgd"; }
  int local_steps() const override { return steps_; }
  void shard_optimizer(proto::OptimizerSpec& opt) const override;

 private:
  int steps_;
};

// DiLoCo: as local-sgd, the averaged change stepped by Nesterov SGD (outer_lr, momentum).
class diloco_rule : public sync_rule {
 public:
  diloco_rule(int steps, float outer_lr, float momentum) : steps_(steps), lr_(outer_lr), momentum_(momentum) {}
  std::string_view name() const override { return "diloco"; }
  int local_steps() const override { return steps_; }
  void shard_optimizer(proto::OptimizerSpec& opt) const override;

 private:
  int steps_;
  float lr_, momentum_;
};

// The plan that applies pending[0] alone with full weight: the asynchronous rules' core.
update_plan apply_first_alone(const std::vector<push_info>& pending);

}  // namespace troupe
