#include "apps/cluster.hpp"

#include <caf/io/all.hpp>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "actors/messages.hpp"
#include "runtime/check.hpp"

namespace troupe {

std::chrono::milliseconds control_silence() {
  const char* ms = std::getenv("TROUPE_SILENCE_MS");
  if (!ms) return std::chrono::milliseconds(10000);
  char* end = nullptr;
  const long v = std::strtol(ms, &end, 10);
  if (!*ms || *end || v < 100 || v > 3600000)
    throw input_error("TROUPE_SILENCE_MS: expected milliseconds 100..3600000, got '" + std::string(ms) + "'");
  return std::chrono::milliseconds(v);
}

std::chrono::milliseconds join_deadline() {
  const char* ms = std::getenv("TROUPE_CONNECT_MS");
  if (!ms) return std::chrono::milliseconds(60000);
  char* end = nullptr;
  const long v = std::strtol(ms, &end, 10);
  if (!*ms || *end || v < 100 || v > 86400000)
    throw input_error("TROUPE_CONNECT_MS: expected milliseconds 100..86400000, got '" + std::string(ms) + "'");
  return std::chrono::milliseconds(v);
}

void configure_control_plane(caf::actor_system_config& cfg, std::chrono::milliseconds silence) {
  register_message_types(cfg);
  cfg.load<caf::io::middleman>();
  const auto heartbeat = std::min<std::chrono::milliseconds>(silence / 4, std::chrono::milliseconds(1000));
  cfg.set("middleman.heartbeat-interval", caf::timespan{heartbeat});
  cfg.set("middleman.connection-timeout", caf::timespan{silence});
  cfg.set("scheduler.max-threads", size_t(2));
}

}  // namespace troupe
