#include "actors/messages.hpp"

namespace troupe {

void register_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<tensor>("tensor");
  cfg.add_message_type<tensor_batch>("tensor_batch");
  cfg.add_message_type<step_report>("step_report");
  cfg.add_message_type<eval_report>("eval_report");
  cfg.add_message_type<pipe_msg>("pipe_msg");
  cfg.add_message_type<data_msg>("data_msg");
  cfg.add_message_type<stage_report>("stage_report");
  cfg.add_message_type<device_task>("device_task");
  cfg.add_message_type<checkpoint_msg>("checkpoint_msg");
  cfg.add_message_type<checkpoint_shard>("checkpoint_shard");
  cfg.add_message_type<worker_report>("worker_report");
  cfg.add_message_type<shard_stats>("shard_stats");
  cfg.add_message_type<node_hello>("node_hello");
  cfg.add_message_type<node_challenge>("node_challenge");
  cfg.add_message_type<rank_assignment>("rank_assignment");
  cfg.add_message_type<std::vector<caf::actor>>("std::vector<caf::actor>");
  cfg.add_message_type<std::vector<tensor>>("std::vector<tensor>");
  cfg.add_message_type<std::vector<int64_t>>("std::vector<int64_t>");
  cfg.add_message_type<std::vector<int32_t>>("std::vector<int32_t>");
}

}  // namespace troupe
