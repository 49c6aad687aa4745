#pragma once
// The challenge-response that opens every authenticated connection (tcp links, the tcp
// rendezvous store): after the dialer's first frame, each end sends a random nonce and
// the other answers with HMAC-SHA256(secret, role | group | from | to | nonce), so both
// prove they know the job's secret without sending it, bound to this group, these two
// ends and these nonces (a proof cannot be replayed, nor turned around: the roles differ).
// Frames are transport/frame.hpp's (kind auth; a refusal is a bye with the reason).
#include <utility>  // before Boost 1.74's asio, which uses std::exchange without it under C++20
#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "transport/communicator.hpp"
#include "transport/frame.hpp"

namespace troupe::handshake {

using socket = boost::asio::ip::tcp::socket;
using clock = std::chrono::steady_clock;

// The other end does not know the secret (this end refused it, with a bye saying so).
class wrong_secret : public transport_error {
 public:
  using transport_error::transport_error;
};

// The accepting end: reads the dialer's nonce, proves the secret, checks the dialer's
// proof. Throws wrong_secret (after sending a bye "wrong secret") when the proof is wrong,
// transport_error when the dialer refused this end, frame_error on a malformed frame.
// Every read waits at most until `until` (transport_error then): a peer that connects and
// says nothing cannot hold this end.
void accept_side(socket& s, const std::string& secret, uint64_t group, int me, int peer, uint32_t world,
                 clock::time_point until);
// The dialing end: sends its nonce, checks the acceptor's proof, proves the secret, waits
// for the welcome. The same errors.
void dial_side(socket& s, const std::string& secret, uint64_t group, int me, int peer, uint32_t world,
               clock::time_point until);

// Exactly n bytes, waiting at most until `until` (poll: a socket's SO_RCVTIMEO does not
// bound asio's blocking reads); transport_error at the deadline or if the peer closed.
void read_exact(socket& s, void* data, size_t n, clock::time_point until);
// One whole frame, on a socket no reader thread reads (handshakes, the store's requests).
frame_header read_frame(socket& s, const frame_limits& limits, std::vector<uint8_t>& payload, clock::time_point until);
void write_frame(socket& s, frame_kind kind, int src, uint64_t tag, const void* data, size_t bytes);

// `n` bytes as lowercase hex.
std::string to_hex(const void* data, size_t n);
// `bytes` random bytes (OpenSSL), as hex.
std::string random_hex(size_t bytes);
// HMAC-SHA256(secret, message) as hex: how the node agents and the launcher's coordinator
// prove the secret to each other over CAF (actors/node_agent.hpp).
std::string proof_hex(const std::string& secret, const std::string& message);
// a == b in time that does not depend on where they differ.
bool same_proof(const std::string& a, const std::string& b);

}  // namespace troupe::handshake
