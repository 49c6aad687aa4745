#pragma once
// What troupe launch (the cluster_coordinator) and troupe node (the node agents) share:
// the CAF set-up of their control connections, and how long a silent one may stay up.
#include <caf/all.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace troupe {

// How long the control connection to a peer may be silent before it counts as lost (a
// hung or cut-off process, not only a closed socket): TROUPE_SILENCE_MS, as for the data
// links, default 10 s. Throws input_error for a bad value.
std::chrono::milliseconds control_silence();

// How long the processes of a job wait for each other to join: TROUPE_CONNECT_MS, default
// 60 s (troupe launch --nodes raises it, since nodes are started by hand). input_error for
// a bad value.
std::chrono::milliseconds join_deadline();

// TLS on the control connections (CAF's OpenSSL module); off by default. `--tls` encrypts
// them with an anonymous key exchange (the job's secret still decides who is admitted);
// `--tls-cert F --tls-key K --tls-ca CA` (all three) also makes both ends verify each
// other's certificate against the CA. The data links are not covered (docs/getting-started.md).
struct control_tls {
  bool on = false;
  std::string cert, key, ca;
  // The same settings as flags (troupe launch hands them to its own processes).
  std::vector<std::string> flags() const;
};

// If args[i] is a TLS flag, takes it (and its value: i moves past it) into tls and returns
// true. input_error for a flag without its value.
bool take_tls_flag(const std::vector<std::string>& args, size_t& i, control_tls& tls);
// input_error unless cert, key and CA are all given or none, each a file that can be read.
void check_tls(const control_tls& tls);

// An actor system config for the launcher's or an agent's control plane: our message
// types, the middleman, heartbeats every silence / 4 (at most 1 s) and connections closed
// after `silence` without a heartbeat; few scheduler threads (the training has the cores).
void configure_control_plane(caf::actor_system_config& cfg, std::chrono::milliseconds silence,
                             const control_tls& tls);

// Publishes the coordinator on host:port (0: any), over TLS when tls.on; the port.
caf::expected<uint16_t> publish_control(caf::actor_system& sys, const caf::actor& whom, const std::string& host,
                                        uint16_t port, const control_tls& tls);
// The coordinator's handle, over TLS when tls.on.
caf::expected<caf::actor> connect_control(caf::actor_system& sys, const std::string& host, uint16_t port,
                                          const control_tls& tls);

}  // namespace troupe
