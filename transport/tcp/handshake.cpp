#include "transport/tcp/handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace troupe::handshake {

namespace {

namespace asio = boost::asio;

// The auth frames, by tag: the dialer's nonce; the acceptor's nonce and proof; the
// dialer's proof; the acceptor's welcome.
constexpr uint64_t kAuthNonce = 1, kAuthChallenge = 2, kAuthProof = 3, kAuthWelcome = 4;
constexpr size_t kNonce = 32, kMac = 32;
using nonce_t = std::array<uint8_t, kNonce>;
using mac_t = std::array<uint8_t, kMac>;

nonce_t random_nonce() {
  nonce_t n;
  if (RAND_bytes(n.data(), int(n.size())) != 1) throw transport_error("no random bytes for a nonce (OpenSSL RAND_bytes)");
  return n;
}

// HMAC-SHA256(secret, role | group | from | to | nonce): `from` proves to `to` that it
// knows the secret, for this group and this nonce only.
mac_t proof(const std::string& secret, const char* role, uint64_t group, int from, int to, const uint8_t* nonce) {
  std::vector<uint8_t> msg(role, role + std::strlen(role));
  for (int i = 0; i < 8; ++i) msg.push_back(uint8_t(group >> (8 * i)));
  for (int v : {from, to})
    for (int i = 0; i < 4; ++i) msg.push_back(uint8_t(uint32_t(v) >> (8 * i)));
  msg.insert(msg.end(), nonce, nonce + kNonce);
  mac_t out;
  unsigned len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), int(secret.size()), msg.data(), msg.size(), out.data(), &len) || len != kMac)
    throw transport_error("HMAC-SHA256 failed (OpenSSL)");
  return out;
}

// The next frame must be auth `step` with `bytes` of payload; a bye instead is the other
// end's refusal, with its reason.
std::vector<uint8_t> expect_auth(socket& s, uint32_t world, uint64_t step, size_t bytes, int peer, clock::time_point until) {
  std::vector<uint8_t> payload;
  frame_header h = read_frame(s, {world, 1024}, payload, until);
  if (h.kind == frame_kind::bye)
    throw transport_error("rank " + std::to_string(peer) + " refused this rank: " +
                          std::string(payload.begin(), payload.end()));
  if (h.kind != frame_kind::auth || h.tag != step || payload.size() != bytes)
    throw frame_error("frame: expected the handshake's step " + std::to_string(step) + " (" + std::to_string(bytes) +
                      " bytes), got kind " + std::to_string(int(h.kind)) + " tag " + std::to_string(h.tag) + " of " +
                      std::to_string(payload.size()) + " bytes");
  return payload;
}

void refuse(socket& s, int me) {
  const std::string why = "wrong secret";
  write_frame(s, frame_kind::bye, me, 0, why.data(), why.size());
}

}  // namespace

void read_exact(socket& s, void* data, size_t n, clock::time_point until) {
  auto* p = static_cast<uint8_t*>(data);
  const int fd = s.native_handle();
  for (size_t got = 0; got < n;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
    pollfd pfd{fd, POLLIN, 0};
    const int ready = left > 0 ? ::poll(&pfd, 1, int(std::min<int64_t>(left, 1 << 30))) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) throw transport_error("the peer sent nothing in time (" + std::to_string(got) + " of " +
                                          std::to_string(n) + " bytes)");
    const ssize_t r = ::recv(fd, p + got, n - got, MSG_DONTWAIT);
    if (r == 0) throw transport_error("the peer closed the connection");
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      throw transport_error(std::string("reading from the peer failed: ") + std::strerror(errno));
    }
    got += size_t(r);
  }
}

frame_header read_frame(socket& s, const frame_limits& limits, std::vector<uint8_t>& payload, clock::time_point until) {
  uint8_t hdr[kFrameHeaderBytes];
  read_exact(s, hdr, sizeof hdr, until);
  frame_header h = decode_header(hdr, sizeof hdr, limits);
  payload.resize(h.payload_bytes());
  read_exact(s, payload.data(), payload.size(), until);
  check_payload(h, payload.data());
  return h;
}

void write_frame(socket& s, frame_kind kind, int src, uint64_t tag, const void* data, size_t bytes) {
  frame_header h;
  h.kind = kind;
  h.src = uint32_t(src);
  h.type = dtype::u8;
  h.tag = tag;
  h.count = bytes;
  h.payload_crc = crc32c(data, bytes);
  uint8_t hdr[kFrameHeaderBytes];
  encode_header(h, hdr);
  const std::array<asio::const_buffer, 2> parts{asio::buffer(hdr), asio::buffer(data, bytes)};
  asio::write(s, parts);
}

void accept_side(socket& s, const std::string& secret, uint64_t group, int me, int peer, uint32_t world,
                 clock::time_point until) {
  const auto theirs = expect_auth(s, world, kAuthNonce, kNonce, peer, until);
  const nonce_t mine = random_nonce();
  const mac_t mac = proof(secret, "troupe acceptor", group, me, peer, theirs.data());
  std::vector<uint8_t> challenge(mine.begin(), mine.end());
  challenge.insert(challenge.end(), mac.begin(), mac.end());
  write_frame(s, frame_kind::auth, me, kAuthChallenge, challenge.data(), challenge.size());
  const auto answer = expect_auth(s, world, kAuthProof, kMac, peer, until);
  const mac_t want = proof(secret, "troupe dialer", group, peer, me, mine.data());
  if (CRYPTO_memcmp(answer.data(), want.data(), kMac) != 0) {
    refuse(s, me);
    throw wrong_secret("it claimed rank " + std::to_string(peer) + " but does not know the job's secret");
  }
  write_frame(s, frame_kind::auth, me, kAuthWelcome, nullptr, 0);
}

void dial_side(socket& s, const std::string& secret, uint64_t group, int me, int peer, uint32_t world,
               clock::time_point until) {
  const nonce_t mine = random_nonce();
  write_frame(s, frame_kind::auth, me, kAuthNonce, mine.data(), mine.size());
  const auto challenge = expect_auth(s, world, kAuthChallenge, kNonce + kMac, peer, until);
  const mac_t want = proof(secret, "troupe acceptor", group, peer, me, mine.data());
  if (CRYPTO_memcmp(challenge.data() + kNonce, want.data(), kMac) != 0) {
    refuse(s, me);
    throw wrong_secret("it does not know the job's secret");
  }
  const mac_t mac = proof(secret, "troupe dialer", group, me, peer, challenge.data());
  write_frame(s, frame_kind::auth, me, kAuthProof, mac.data(), mac.size());
  expect_auth(s, world, kAuthWelcome, 0, peer, until);
}

std::string to_hex(const void* data, size_t n) {
  std::string hex;
  hex.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t x = static_cast<const uint8_t*>(data)[i];
    hex += "0123456789abcdef"[x >> 4];
    hex += "0123456789abcdef"[x & 15];
  }
  return hex;
}

std::string random_hex(size_t bytes) {
  std::vector<uint8_t> b(bytes);
  if (bytes && RAND_bytes(b.data(), int(bytes)) != 1) throw transport_error("no random bytes (OpenSSL RAND_bytes)");
  return to_hex(b.data(), b.size());
}

std::string proof_hex(const std::string& secret, const std::string& message) {
  std::array<uint8_t, kMac> mac;
  unsigned len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), int(secret.size()), reinterpret_cast<const uint8_t*>(message.data()),
            message.size(), mac.data(), &len) ||
      len != kMac)
    throw transport_error("HMAC-SHA256 failed (OpenSSL)");
  return to_hex(mac.data(), mac.size());
}

bool same_proof(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace troupe::handshake
