// Local SGD (Stich 2019; Lin et al. 2020, "Don't use large mini-batches, use local SGD"):
// every worker takes H = policy.sync_every steps of the job's optimizer on its own slice of
// each step's batch, then pushes anchor - local, the change from the parameters it pulled.
// The shards wait for every live worker's change (sync_rule's decision) and step plain SGD
// with lr 1 on their mean: anchor - mean(anchor - local_w) = mean(local_w), the average of
// the workers' parameters. Traffic is one pull and one push per H steps instead of per
// step. With H = 1 and SGD without momentum it is synchronous SGD; each worker keeps its
// own optimizer state (momentum, Adam moments) across rounds, as the papers do.
#include "policies/update_rules.hpp"
#include "runtime/proto/job.pb.h"

namespace troupe {

void local_sgd_rule::shard_optimizer(proto::OptimizerSpec& opt) const {
  opt.Clear();
  proto::SgdSpec& sgd = *opt.mutable_sgd();
  sgd.set_lr(1.0f);
  sgd.set_momentum(0.0f);
  sgd.set_weight_decay(0.0f);
  sgd.set_nesterov(false);
  opt.set_lr_schedule("constant");
}

}  // namespace troupe
