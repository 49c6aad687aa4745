#pragma once
// What troupe launch (the cluster_coordinator) and troupe node (the node agents) share:
// the CAF set-up of their control connections, and how long a silent one may stay up.
#include <caf/all.hpp>

#include <chrono>

namespace troupe {

// How long the control connection to a peer may be silent before it counts as lost (a
// hung or cut-off process, not only a closed socket): TROUPE_SILENCE_MS, as for the data
// links, default 10 s. Throws input_error for a bad value.
std::chrono::milliseconds control_silence();

// How long the processes of a job wait for each other to join: TROUPE_CONNECT_MS, default
// 60 s (troupe launch --nodes raises it, since nodes are started by hand). input_error for
// a bad value.
std::chrono::milliseconds join_deadline();

// An actor system config for the launcher's or an agent's control plane: our message
// types, the middleman, heartbeats every silence / 4 (at most 1 s) and connections closed
// after `silence` without a heartbeat; few scheduler threads (the training has the cores).
void configure_control_plane(caf::actor_system_config& cfg, std::chrono::milliseconds silence);

}  // namespace troupe
