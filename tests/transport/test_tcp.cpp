// The tcp transport against peers that misbehave: a connection with a wrong hello is
// refused and the rank keeps waiting for the right one; a bad frame closes its link with
// a logged error, and a receive from that rank fails at once with the reason (not at its
// deadline); a peer's abort reaches every rank it is linked to.
#include <doctest/doctest.h>

#include <utility>  // before Boost 1.74's asio (std::exchange under C++20)
#include <boost/asio.hpp>
#include <chrono>
#include <thread>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "runtime/check.hpp"
#include "transport/collectives.hpp"
#include "transport/frame.hpp"
#include "transport/tcp/tcp.hpp"

using namespace troupe;
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

const char* kSecret = "correct horse battery staple";

// The proof of the handshake (tcp.cpp): HMAC-SHA256(secret, role | group | from | to | nonce).
std::vector<uint8_t> proof(const std::string& secret, const std::string& role, uint64_t group, int from, int to,
                           const uint8_t* nonce) {
  std::vector<uint8_t> msg(role.begin(), role.end());
  for (int i = 0; i < 8; ++i) msg.push_back(uint8_t(group >> (8 * i)));
  for (int v : {from, to})
    for (int i = 0; i < 4; ++i) msg.push_back(uint8_t(uint32_t(v) >> (8 * i)));
  msg.insert(msg.end(), nonce, nonce + 32);
  std::vector<uint8_t> out(32);
  unsigned len = 0;
  HMAC(EVP_sha256(), secret.data(), int(secret.size()), msg.data(), msg.size(), out.data(), &len);
  return out;
}

// A raw client that speaks frames by hand, dialling the rank published under `key`.
struct fake_peer {
  asio::io_context io;
  tcp::socket socket{io};
  explicit fake_peer(memory_rendezvous& store, const std::string& key) {
    const std::string where = store.get(key, std::chrono::milliseconds(5000));
    const size_t space = where.find(' ');
    socket.connect(tcp::endpoint(asio::ip::make_address(where.substr(0, space)),
                                 uint16_t(std::stoi(where.substr(space + 1)))));
  }
  void send_header(frame_header h) {
    uint8_t hdr[kFrameHeaderBytes];
    encode_header(h, hdr);
    asio::write(socket, asio::buffer(hdr));
  }
  void hello(int rank, uint64_t group, int world) {
    frame_header h;
    h.kind = frame_kind::hello;
    h.src = uint32_t(rank);
    h.tag = group;
    h.count = uint64_t(world);
    h.payload_crc = crc32c(nullptr, 0);
    send_header(h);
  }
  void auth(int rank, uint64_t step, const std::vector<uint8_t>& bytes) {
    frame_header h;
    h.kind = frame_kind::auth;
    h.src = uint32_t(rank);
    h.type = dtype::u8;
    h.tag = step;
    h.count = bytes.size();
    h.payload_crc = crc32c(bytes.data(), bytes.size());
    send_header(h);
    asio::write(socket, asio::buffer(bytes));
  }
  // Reads one frame: its header and payload.
  frame_header read(std::vector<uint8_t>& payload, int world) {
    uint8_t hdr[kFrameHeaderBytes];
    asio::read(socket, asio::buffer(hdr));
    frame_header h = decode_header(hdr, sizeof hdr, {uint32_t(world), 1 << 20});
    payload.resize(h.payload_bytes());
    asio::read(socket, asio::buffer(payload));
    return h;
  }
  // Dials as `rank` of `world` and runs the handshake knowing `secret`; true once welcomed.
  bool join(int rank, int acceptor, uint64_t group, int world, const std::string& secret) {
    hello(rank, group, world);
    std::vector<uint8_t> nonce(32, 7), got;
    auth(rank, 1, nonce);
    frame_header h = read(got, world);
    if (h.kind != frame_kind::auth || got.size() != 64) return false;
    auth(rank, 3, proof(secret, "troupe dialer", group, rank, acceptor, got.data()));
    h = read(got, world);
    return h.kind == frame_kind::auth && h.tag == 4;
  }
};

// Rank 0 of a group of 2 in this thread's care, and a fake rank 1 that has joined it.
struct rank0_and_fake {
  memory_rendezvous store;
  std::shared_ptr<communicator> rank0;
  std::unique_ptr<fake_peer> peer;
  explicit rank0_and_fake(uint64_t group) {
    tcp_options opt;
    opt.group = group;
    opt.secret = kSecret;
    std::thread joiner([&] { rank0 = make_tcp_communicator(0, 2, store, opt); });
    peer = std::make_unique<fake_peer>(store, "tcp/" + std::to_string(group) + "/0");
    const bool joined = peer->join(1, 0, group, 2, kSecret);
    joiner.join();
    REQUIRE(joined);
    REQUIRE(rank0);
  }
};

}  // namespace

TEST_CASE("tcp: a hello for another group is refused, and the rank still admits the right peer") {
  memory_rendezvous store;
  tcp_options opt;
  opt.group = 77;
  opt.secret = kSecret;
  opt.connect_deadline = std::chrono::milliseconds(5000);
  std::shared_ptr<communicator> rank0;
  std::thread joiner([&] { rank0 = make_tcp_communicator(0, 2, store, opt); });
  {
    fake_peer stranger(store, "tcp/77/0");
    stranger.hello(1, 78, 2);  // wrong group: refused, logged
    fake_peer peer(store, "tcp/77/0");
    REQUIRE(peer.join(1, 0, 77, 2, kSecret));
    joiner.join();
    REQUIRE(rank0);
    // The admitted peer's data frame arrives.
    float x = 2.5f;
    frame_header h;
    h.src = 1;
    h.tag = 5;
    h.count = 1;
    h.payload_crc = crc32c(&x, sizeof x);
    uint8_t hdr[kFrameHeaderBytes];
    encode_header(h, hdr);
    asio::write(peer.socket, asio::buffer(hdr));
    asio::write(peer.socket, asio::buffer(&x, sizeof x));
    float got = 0;
    rank0->recv(1, 5, &got, 1, dtype::f32);
    CHECK(got == 2.5f);
  }
}

TEST_CASE("tcp: a frame with a bad checksum closes the link, and receiving from that rank fails at once") {
  rank0_and_fake link(91);
  auto& rank0 = link.rank0;
  auto& peer = *link.peer;
  rank0->deadline = std::chrono::milliseconds(20000);
  float x[4] = {1, 2, 3, 4};
  frame_header h;
  h.src = 1;
  h.tag = 3;
  h.count = 4;
  h.payload_crc = crc32c(x, sizeof x) ^ 1u;  // corrupted
  uint8_t hdr[kFrameHeaderBytes];
  encode_header(h, hdr);
  asio::write(peer.socket, asio::buffer(hdr));
  asio::write(peer.socket, asio::buffer(x, sizeof x));
  auto t0 = std::chrono::steady_clock::now();
  float got[4];
  std::string error;
  try {
    rank0->recv(1, 3, got, 4, dtype::f32);
  } catch (const transport_error& e) {
    error = e.what();
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(error.find("bad frame") != std::string::npos);
  CHECK(error.find("payload checksum") != std::string::npos);
  // Sending to it fails too, with the same reason.
  CHECK_THROWS_AS(rank0->send(1, 4, x, 4, dtype::f32), transport_error);
}

TEST_CASE("tcp: garbage instead of a frame closes the link with a clear reason") {
  rank0_and_fake link(92);
  auto& rank0 = link.rank0;
  auto& peer = *link.peer;
  const char junk[] = "GET / HTTP/1.1\r\nHost: troupe\r\n\r\n........";
  asio::write(peer.socket, asio::buffer(junk, kFrameHeaderBytes));
  float got = 0;
  std::string error;
  try {
    rank0->recv(1, 0, &got, 1, dtype::f32);
  } catch (const transport_error& e) {
    error = e.what();
  }
  CHECK(error.find("bad magic") != std::string::npos);
}

TEST_CASE("tcp: a rank's abort fails the waits of the others at once, with its reason") {
  auto group = make_group("tcp", 3);
  for (auto& c : group) c->deadline = std::chrono::milliseconds(20000);
  std::vector<std::string> errors(2);
  std::vector<std::thread> waiters;
  for (int r = 0; r < 2; ++r)
    waiters.emplace_back([&, r] {
      float x = 0;
      try {
        group[size_t(r)]->recv(2, 1, &x, 1, dtype::f32);
      } catch (const transport_error& e) {
        errors[size_t(r)] = e.what();
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t0 = std::chrono::steady_clock::now();
  group[2]->abort("replica 2 died");
  for (auto& t : waiters) t.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  for (const auto& e : errors) CHECK(e.find("replica 2 died") != std::string::npos);
}

TEST_CASE("tcp: a rank that is not there at the connect deadline is named in the error") {
  memory_rendezvous store;
  tcp_options opt;
  opt.group = 93;
  opt.secret = kSecret;
  opt.connect_deadline = std::chrono::milliseconds(300);
  std::string error;
  try {
    make_tcp_communicator(0, 3, store, opt);
  } catch (const transport_error& e) {
    error = e.what();
  }
  CHECK(error.find("waited 300 ms for rank(s) 1, 2 to connect") != std::string::npos);
}

TEST_CASE("tcp: a rank with the wrong secret is refused, and both sides say so") {
  memory_rendezvous store;
  tcp_options right, wrong;
  right.group = wrong.group = 94;
  right.secret = kSecret;
  wrong.secret = "not the secret";
  right.connect_deadline = wrong.connect_deadline = std::chrono::milliseconds(1500);
  std::string acceptor_error, dialer_error;
  std::thread acceptor([&] {
    try {
      make_tcp_communicator(0, 2, store, right);
    } catch (const transport_error& e) {
      acceptor_error = e.what();
    }
  });
  try {
    make_tcp_communicator(1, 2, store, wrong);
  } catch (const transport_error& e) {
    dialer_error = e.what();
  }
  acceptor.join();
  // The dialer finds that the acceptor's proof does not check (so it never proves its own).
  CHECK(dialer_error.find("does not know the job's secret") != std::string::npos);
  // The acceptor admitted nobody: it waited out its deadline for rank 1.
  CHECK(acceptor_error.find("waited 1500 ms for rank(s) 1 to connect") != std::string::npos);
}

TEST_CASE("tcp: a dialer that cannot prove the secret is refused with a bye saying why") {
  memory_rendezvous store;
  tcp_options opt;
  opt.group = 95;
  opt.secret = kSecret;
  opt.connect_deadline = std::chrono::milliseconds(1500);
  std::string error;
  std::thread acceptor([&] {
    try {
      make_tcp_communicator(0, 2, store, opt);
    } catch (const transport_error& e) {
      error = e.what();
    }
  });
  fake_peer impostor(store, "tcp/95/0");
  CHECK_FALSE(impostor.join(1, 0, 95, 2, "a guess"));
  acceptor.join();
  CHECK(error.find("for rank(s) 1 to connect") != std::string::npos);
}

TEST_CASE("tcp: a rank without a secret is an input error") {
  memory_rendezvous store;
  tcp_options opt;
  CHECK_THROWS_WITH_AS(make_tcp_communicator(0, 2, store, opt), doctest::Contains("no job secret"), input_error);
}

TEST_CASE("tcp: a peer that goes silent (no data, no heartbeat) is declared dead after the silence limit") {
  memory_rendezvous store;
  tcp_options opt;
  opt.group = 96;
  opt.secret = kSecret;
  opt.heartbeat = std::chrono::milliseconds(50);
  opt.silence = std::chrono::milliseconds(400);
  std::shared_ptr<communicator> rank0;
  std::thread joiner([&] { rank0 = make_tcp_communicator(0, 2, store, opt); });
  fake_peer mute(store, "tcp/96/0");
  REQUIRE(mute.join(1, 0, 96, 2, kSecret));  // and then never says anything again
  joiner.join();
  REQUIRE(rank0);
  rank0->deadline = std::chrono::milliseconds(20000);
  float x = 0;
  std::string error;
  auto t0 = std::chrono::steady_clock::now();
  try {
    rank0->recv(1, 1, &x, 1, dtype::f32);
  } catch (const transport_error& e) {
    error = e.what();
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(error.find("was silent for 400 ms") != std::string::npos);
  CHECK(took < 3.0);
}

TEST_CASE("tcp: heartbeats keep an idle but live link up past the silence limit") {
  auto group = make_group("tcp", 2);  // default heartbeat 1 s, silence 10 s: too slow for a test
  memory_rendezvous store;
  tcp_options opt;
  opt.group = 97;
  opt.secret = kSecret;
  opt.heartbeat = std::chrono::milliseconds(50);
  opt.silence = std::chrono::milliseconds(300);
  std::vector<std::shared_ptr<communicator>> pair(2);
  std::thread a([&] { pair[0] = make_tcp_communicator(0, 2, store, opt); });
  pair[1] = make_tcp_communicator(1, 2, store, opt);
  a.join();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));  // idle for 3x the limit
  float x = 3.5f, y = 0;
  pair[1]->send(0, 8, &x, 1, dtype::f32);
  pair[0]->recv(1, 8, &y, 1, dtype::f32);
  CHECK(y == 3.5f);
}
