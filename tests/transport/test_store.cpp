// The tcp rendezvous store: set and get between clients, a get that waits for a later set,
// one that times out naming the key, a client with the wrong secret refused, bad addresses
// named; and the file rendezvous for comparison of the same contract.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "runtime/check.hpp"
#include <utility>  // before Boost 1.74's asio (std::exchange under C++20)
#include <boost/asio.hpp>

#include "transport/communicator.hpp"
#include "transport/tcp/store.hpp"

using namespace troupe;
using namespace std::chrono_literals;

TEST_CASE("tcp store: set, get, a get that waits for a later set, a get that times out") {
  tcp_store_server server("127.0.0.1", 0, "s3cret");
  tcp_rendezvous a("127.0.0.1", server.port(), "s3cret"), b("127.0.0.1", server.port(), "s3cret");
  a.set("tcp/1/0", "127.0.0.1 4000");
  CHECK(b.get("tcp/1/0", 1000ms) == "127.0.0.1 4000");
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    a.set("late", "value with spaces\nand a newline");
  });
  CHECK(b.get("late", 5000ms) == "value with spaces\nand a newline");
  later.join();
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(b.get("never", 200ms), doctest::Contains("nobody set 'never' within 200 ms"), transport_error);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

TEST_CASE("tcp store: add is an atomic counter across clients") {
  tcp_store_server server("127.0.0.1", 0, "s3cret");
  std::vector<int64_t> got(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      tcp_rendezvous c("127.0.0.1", server.port(), "s3cret");
      got[size_t(i)] = c.add("nodes", 1);
    });
  for (auto& t : clients) t.join();
  std::sort(got.begin(), got.end());
  for (int i = 0; i < 8; ++i) CHECK(got[size_t(i)] == i + 1);  // each took its own number
  tcp_rendezvous c("127.0.0.1", server.port(), "s3cret");
  CHECK(c.get("nodes", 100ms) == "8");
}

TEST_CASE("tcp store: a client with the wrong secret is refused") {
  tcp_store_server server("127.0.0.1", 0, "s3cret");
  tcp_rendezvous intruder("127.0.0.1", server.port(), "guess", 2000ms);
  CHECK_THROWS_WITH_AS(intruder.set("k", "v"), doctest::Contains("secret"), transport_error);
  tcp_rendezvous member("127.0.0.1", server.port(), "s3cret");
  CHECK_THROWS_AS(member.get("k", 100ms), transport_error);  // the intruder's set never landed
}

TEST_CASE("tcp store: a client started before the server waits for it, one with no server fails at its deadline") {
  uint16_t port = 0;
  {
    tcp_store_server probe("127.0.0.1", 0, "x");
    port = probe.port();  // a port that was free a moment ago
  }
  std::unique_ptr<tcp_store_server> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(200ms);
    server = std::make_unique<tcp_store_server>("127.0.0.1", port, "x");
  });
  tcp_rendezvous early("127.0.0.1", port, "x", 5000ms);
  early.set("k", "v");
  CHECK(early.get("k", 100ms) == "v");
  starter.join();
  server.reset();
  tcp_rendezvous orphan("127.0.0.1", port, "x", 300ms);
  CHECK_THROWS_WITH_AS(orphan.set("k", "v"), doctest::Contains("cannot reach the store"), transport_error);
}

TEST_CASE("tcp store: addresses that are not tcp://IP:PORT are named") {
  CHECK_THROWS_WITH_AS(parse_store_address("10.0.0.1:80"), doctest::Contains("is not tcp://HOST:PORT"), input_error);
  CHECK_THROWS_WITH_AS(parse_store_address("tcp://10.0.0.1:99999"), doctest::Contains("is not 1..65535"),
                       input_error);
  CHECK_THROWS_WITH_AS(parse_store_address("tcp://example.org:80"), doctest::Contains("is not an IP address"),
                       input_error);
  CHECK(parse_store_address("tcp://10.77.0.1:29500") == std::make_pair(std::string("10.77.0.1"), uint16_t(29500)));
  CHECK_THROWS_AS(tcp_store_server("127.0.0.1", 0, ""), input_error);
}

TEST_CASE("tcp store: connections that say nothing hold up neither other clients nor the server's end") {
  auto t0 = std::chrono::steady_clock::now();
  {
    tcp_store_server server("127.0.0.1", 0, "s3cret");
    boost::asio::io_context io;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::socket>> silent;
    for (int i = 0; i < 5; ++i) {
      silent.push_back(std::make_unique<boost::asio::ip::tcp::socket>(io));
      silent.back()->connect({boost::asio::ip::make_address("127.0.0.1"), server.port()});
    }
    tcp_rendezvous c("127.0.0.1", server.port(), "s3cret");
    c.set("k", "v");
    CHECK(c.get("k", 100ms) == "v");
  }  // the server goes while the silent ones are still connected
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}
