#pragma once
// tcp: ranks reach each other over TCP (Boost.Asio), as processes on one or many hosts or
// as threads of one process. Every pair of ranks shares one connection, dialled by the
// higher rank, whose first frame (hello) names its rank, the group's id and the world size.
// Then both ends prove they know the job's secret without sending it (challenge-response:
// each sends a random nonce, the other answers with HMAC-SHA256(secret, role, group, ranks,
// nonce)); the link is up only when both proofs check. A connection whose hello or proof is
// wrong is refused (a bye saying why) and logged on both sides, and the rank waits on for
// the right one. Each link has a reader thread that decodes frames (transport/frame.hpp) into
// a mailbox keyed by (sender, tag), as inproc's; a send writes one frame on the caller's
// thread. A bad frame closes that link with a logged error; a receive from a rank whose
// link is closed (bad frame, reset, the peer's bye or abort, or its silence: see
// tcp_options::silence) fails at once with the reason, not at its deadline.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transport/communicator.hpp"
#include "transport/rendezvous.hpp"

namespace troupe {

struct tcp_options {
  std::string host = "127.0.0.1";  // the address this rank listens on and publishes
  std::string secret;               // the job's secret (required; never sent)
  uint64_t group = 0;               // keeps links of different groups (jobs) apart
  std::chrono::milliseconds connect_deadline{30000};
  uint64_t max_message_bytes = uint64_t(1) << 32;  // larger frames are refused
  // Failure detection that does not wait for TCP to notice: every link that sent nothing
  // for `heartbeat` gets a ping; a link that brought nothing (data or ping) for `silence`
  // is closed as dead: its process hangs, is stopped, or is cut off. Receives from it fail
  // then, with that reason. 0: off.
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds silence{10000};
};

// Joins the group as `rank` of `size`: publishes this rank's address in `store`, dials the
// lower ranks, accepts the higher ones. Returns once every link is up; transport_error if
// that takes longer than the connect deadline (naming the ranks still missing), or if a
// lower rank refuses this one or fails to prove the secret itself; input_error without a
// secret.
std::shared_ptr<communicator> make_tcp_communicator(int rank, int size, rendezvous& store, const tcp_options& options);


// A fresh random secret (hex), for a job whose processes this process starts.
std::string make_job_secret();

}  // namespace troupe
