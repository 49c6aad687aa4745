#include "transport/tcp/store.hpp"

#include <atomic>
#include <cstdio>
#include <list>
#include <system_error>

#include "runtime/check.hpp"
#include "transport/tcp/handshake.hpp"

namespace troupe {

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// What the handshake's proofs are bound to: this is the store, not a link of a group.
constexpr uint64_t kStoreContext = 0x53544f5245ull;  // "STORE"
constexpr int kServer = 0, kClient = 1;
constexpr uint64_t kRequest = 1, kAnswer = 2;

std::string payload_text(const std::vector<uint8_t>& p) { return std::string(p.begin(), p.end()); }

}  // namespace

std::pair<std::string, uint16_t> parse_store_address(const std::string& address) {
  const std::string scheme = "tcp://";
  const size_t colon = address.rfind(':');
  if (address.rfind(scheme, 0) != 0 || colon == std::string::npos || colon < scheme.size() + 1)
    throw input_error("rendezvous: '" + address + "' is not tcp://HOST:PORT");
  const std::string host = address.substr(scheme.size(), colon - scheme.size());
  const std::string port = address.substr(colon + 1);
  char* end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end || p < 1 || p > 65535)
    throw input_error("rendezvous: port '" + port + "' of '" + address + "' is not 1..65535");
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  if (ec) throw input_error("rendezvous: host '" + host + "' of '" + address + "' is not an IP address");
  return {host, uint16_t(p)};
}

struct tcp_store_server::impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::string secret;
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::string> values;
  bool stopping = false;
  // A thread per request, at most kMaxHandlers at once; finished ones are joined by the
  // accepting thread as it goes (their flag set last thing), the rest at destruction.
  static constexpr size_t kMaxHandlers = 64;
  struct handler {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
    std::shared_ptr<tcp::socket> socket;
  };
  std::list<handler> handlers;
  std::thread accepting;

  void reap() {  // under mu
    for (auto it = handlers.begin(); it != handlers.end();)
      if (it->done->load()) {
        it->thread.join();
        it = handlers.erase(it);
      } else {
        ++it;
      }
  }

  void serve(tcp::socket& s) {
    try {
      // A client that stalls is dropped after a few seconds.
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      handshake::accept_side(s, secret, kStoreContext, kServer, kClient, 2, until);
      std::vector<uint8_t> payload;
      frame_header h = handshake::read_frame(s, {2, 1 << 20}, payload, until);
      if (h.kind != frame_kind::data || h.tag != kRequest) throw frame_error("frame: expected a store request");
      const std::string req = payload_text(payload);
      const size_t a = req.find('\n'), b = a == std::string::npos ? a : req.find('\n', a + 1);
      if (b == std::string::npos) throw frame_error("frame: a store request is 'set|get\\nKEY\\nVALUE|MS'");
      const std::string op = req.substr(0, a), key = req.substr(a + 1, b - a - 1), arg = req.substr(b + 1);
      std::string answer;
      if (op == "set") {
        {
          std::lock_guard<std::mutex> lock(mu);
          values[key] = arg;
        }
        cv.notify_all();
        answer = "ok\n";
      } else if (op == "get") {
        const auto wait = std::chrono::milliseconds(std::strtoll(arg.c_str(), nullptr, 10));
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, wait, [&] { return stopping || values.count(key) > 0; });
        auto it = values.find(key);
        answer = it == values.end() ? std::string("none\n") : "ok\n" + it->second;
      } else if (op == "add") {
        char* end = nullptr;
        const long long delta = std::strtoll(arg.c_str(), &end, 10);
        if (arg.empty() || *end) throw frame_error("frame: store add of '" + arg + "' (expected an integer)");
        long long sum = 0;
        {
          std::lock_guard<std::mutex> lock(mu);
          auto it = values.find(key);
          sum = (it == values.end() ? 0 : std::strtoll(it->second.c_str(), nullptr, 10)) + delta;
          values[key] = std::to_string(sum);
        }
        cv.notify_all();
        answer = "ok\n" + std::to_string(sum);
      } else {
        throw frame_error("frame: store request '" + op + "' (expected set, get or add)");
      }
      handshake::write_frame(s, frame_kind::data, kServer, kAnswer, answer.data(), answer.size());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rendezvous store: refused a request: %s\n", e.what());
    }
  }
};

tcp_store_server::tcp_store_server(const std::string& host, uint16_t port, std::string secret)
    : impl_(std::make_unique<impl>()) {
  if (secret.empty()) throw input_error("rendezvous store: no job secret (TROUPE_SECRET)");
  impl_->secret = std::move(secret);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) throw input_error("rendezvous store: host '" + host + "' is not an IP address");
  try {
    impl_->acceptor.open(address.is_v6() ? tcp::v6() : tcp::v4());
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
    impl_->acceptor.bind(tcp::endpoint(address, port));
    impl_->acceptor.listen();
  } catch (const boost::system::system_error& e) {
    throw transport_error("rendezvous store: cannot listen on " + host + ":" + std::to_string(port) + ": " + e.what());
  }
  port_ = impl_->acceptor.local_endpoint().port();
  impl* self = impl_.get();
  impl_->accepting = std::thread([self] {
    for (;;) {
      auto s = std::make_shared<tcp::socket>(self->io);
      boost::system::error_code ec;
      self->acceptor.accept(*s, ec);
      std::unique_lock<std::mutex> lock(self->mu);
      if (self->stopping) return;
      self->reap();
      if (ec) {  // out of descriptors, say: not a busy loop
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (self->handlers.size() >= impl::kMaxHandlers) {
        std::fprintf(stderr, "rendezvous store: %zu requests in progress: refused a connection\n",
                     self->handlers.size());
        continue;  // s closes
      }
      auto done = std::make_shared<std::atomic<bool>>(false);
      try {
        self->handlers.push_back({std::thread([self, s, done] {
                                    self->serve(*s);
                                    *done = true;
                                  }),
                                  done, s});
      } catch (const std::system_error& e) {  // no thread to be had: refuse this one
        std::fprintf(stderr, "rendezvous store: refused a connection: %s\n", e.what());
      }
    }
  });
}

tcp_store_server::~tcp_store_server() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  boost::system::error_code ec;
  // Wake the blocked accept: a connection to ourselves (closing the acceptor from another
  // thread is not safe with asio).
  {
    tcp::socket poke(impl_->io);
    poke.connect(impl_->acceptor.local_endpoint(), ec);
  }
  impl_->accepting.join();
  for (auto& h : impl_->handlers) {  // a handler still reading gives up when its socket does
    boost::system::error_code ignore;
    h.socket->shutdown(tcp::socket::shutdown_both, ignore);
    h.thread.join();
  }
}

tcp_rendezvous::tcp_rendezvous(std::string host, uint16_t port, std::string secret,
                               std::chrono::milliseconds connect_deadline)
    : host_(std::move(host)), port_(port), secret_(std::move(secret)), connect_deadline_(connect_deadline) {
  if (secret_.empty()) throw input_error("rendezvous: no job secret (TROUPE_SECRET)");
}

std::string tcp_rendezvous::ask(const std::string& request, std::chrono::milliseconds wait) {
  asio::io_context io;
  tcp::socket s(io);
  const tcp::endpoint ep(asio::ip::make_address(host_), port_);
  const auto until = std::chrono::steady_clock::now() + connect_deadline_;
  boost::system::error_code ec;
  for (auto pause = std::chrono::milliseconds(5);; pause = std::min(pause * 2, std::chrono::milliseconds(200))) {
    s.connect(ep, ec);
    if (!ec) break;
    s = tcp::socket(io);
    if (std::chrono::steady_clock::now() >= until)
      throw transport_error("rendezvous: cannot reach the store at tcp://" + host_ + ":" + std::to_string(port_) +
                            " within " + std::to_string(connect_deadline_.count()) + " ms: " + ec.message());
    std::this_thread::sleep_for(pause);
  }
  try {
    const auto until = std::chrono::steady_clock::now() + connect_deadline_ + wait;
    handshake::dial_side(s, secret_, kStoreContext, kClient, kServer, 2, until);
    handshake::write_frame(s, frame_kind::data, kClient, kRequest, request.data(), request.size());
    std::vector<uint8_t> payload;
    frame_header h = handshake::read_frame(s, {2, 1 << 20}, payload, until);
    if (h.kind != frame_kind::data || h.tag != kAnswer) throw frame_error("frame: expected the store's answer");
    return payload_text(payload);
  } catch (const transport_error& e) {
    throw transport_error("rendezvous: the store at tcp://" + host_ + ":" + std::to_string(port_) + ": " + e.what());
  } catch (const std::exception& e) {
    throw transport_error("rendezvous: the store at tcp://" + host_ + ":" + std::to_string(port_) +
                          " did not answer: " + e.what());
  }
}

void tcp_rendezvous::set(const std::string& key, const std::string& value) {
  if (ask("set\n" + key + "\n" + value, std::chrono::milliseconds(0)) != "ok\n")
    throw transport_error("rendezvous: the store did not take '" + key + "'");
}

int64_t tcp_rendezvous::add(const std::string& key, int64_t delta) {
  const std::string answer = ask("add\n" + key + "\n" + std::to_string(delta), std::chrono::milliseconds(0));
  if (answer.rfind("ok\n", 0) != 0) throw transport_error("rendezvous: the store did not add to '" + key + "'");
  return std::strtoll(answer.c_str() + 3, nullptr, 10);
}

std::string tcp_rendezvous::get(const std::string& key, std::chrono::milliseconds deadline) {
  const std::string answer = ask("get\n" + key + "\n" + std::to_string(deadline.count()), deadline);
  if (answer.rfind("ok\n", 0) != 0)
    throw transport_error("rendezvous: nobody set '" + key + "' within " + std::to_string(deadline.count()) + " ms");
  return answer.substr(3);
}

}  // namespace troupe
