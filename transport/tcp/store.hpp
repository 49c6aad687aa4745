#pragma once
// A rendezvous store served over TCP, for processes on different hosts (no directory they
// all see): rank 0 of a job serves it (tcp_store_server) on the address every rank is given
// as tcp://HOST:PORT, and every rank, rank 0 included, is its client (tcp_rendezvous).
// Every connection first proves the job's secret both ways (handshake.hpp), then carries
// one request: set KEY VALUE, get KEY (the server answers once the key is set, or says it
// is not at the client's deadline), or add KEY DELTA (an atomic counter). A client that cannot reach the server retries until
// its deadline: the other ranks may start before rank 0.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "transport/rendezvous.hpp"

namespace troupe {

// "tcp://HOST:PORT" -> (HOST, PORT); input_error naming what is wrong otherwise.
std::pair<std::string, uint16_t> parse_store_address(const std::string& address);

class tcp_store_server {
 public:
  // Listens on host:port (port 0: any) and serves on its own threads until destroyed.
  tcp_store_server(const std::string& host, uint16_t port, std::string secret);
  ~tcp_store_server();
  tcp_store_server(const tcp_store_server&) = delete;
  tcp_store_server& operator=(const tcp_store_server&) = delete;
  uint16_t port() const { return port_; }

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
  uint16_t port_ = 0;
};

class tcp_rendezvous : public rendezvous {
 public:
  tcp_rendezvous(std::string host, uint16_t port, std::string secret,
                 std::chrono::milliseconds connect_deadline = std::chrono::milliseconds(30000));
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds deadline) override;
  // Adds `delta` to the integer under `key` (0 if unset) and returns the sum, atomically:
  // how nodes joining a job take their ranks one by one.
  int64_t add(const std::string& key, int64_t delta);

 private:
  // One request, its answer.
  std::string ask(const std::string& request, std::chrono::milliseconds wait);
  std::string host_;
  uint16_t port_;
  std::string secret_;
  std::chrono::milliseconds connect_deadline_;
};

}  // namespace troupe
