// DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
// Language Models"): as Local SGD, each worker takes H = policy.sync_every inner steps of
// the job's optimizer (AdamW in the paper) and pushes its change anchor - local; the shards
// average the changes (sync_rule's decision) and treat the mean as an outer gradient for
// SGD with Nesterov momentum: buf = mu buf + delta, anchor -= outer_lr (delta + mu buf).
// The paper's outer_lr 0.7 and mu 0.9 are the defaults. outer_lr 1 and mu 0 make it Local
// SGD. Inner optimizer state stays with each worker across rounds; the outer momentum
// lives with the shards.
#include "policies/update_rules.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

void diloco_rule::shard_optimizer(proto::OptimizerSpec& opt) const {
  opt.Clear();
  proto::SgdSpec& sgd = *opt.mutable_sgd();
  sgd.set_lr(lr_);
  sgd.set_momentum(momentum_);
  sgd.set_weight_decay(0.0f);
  sgd.set_nesterov(momentum_ > 0);
  opt.set_lr_schedule("constant");
}

}  // namespace troupe
