#include "transport/tcp/tcp.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <utility>  // before Boost 1.74's asio, which uses std::exchange without it under C++20
#include <boost/asio.hpp>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/check.hpp"
#include "transport/frame.hpp"
#include "transport/tcp/handshake.hpp"

namespace troupe {

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// The tag of a bye frame: an orderly close, or the sender's abort of the whole group.
constexpr uint64_t kByeShutdown = 0, kByeAbort = 1;

struct message {
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;
};

double ms_left(std::chrono::steady_clock::time_point until) {
  return std::chrono::duration<double, std::milli>(until - std::chrono::steady_clock::now()).count();
}

class tcp_communicator : public communicator {
 public:
  tcp_communicator(int rank, int size, rendezvous& store, const tcp_options& options)
      : rank_(rank), size_(size), opt_(options), links_(static_cast<size_t>(size)) {
    if (size < 1 || rank < 0 || rank >= size)
      throw input_error("tcp: rank " + std::to_string(rank) + " of a group of " + std::to_string(size));
    if (options.secret.empty())
      throw input_error("tcp: no job secret: every rank must know the job's secret (TROUPE_SECRET; troupe launch "
                        "makes one)");
    for (auto& l : links_) l = std::make_unique<link>();
    connect_all(store);
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    for (auto& l : links_) l->last_read = l->last_write = now;
    try {
      for (int p = 0; p < size_; ++p)
        if (p != rank_) links_[size_t(p)]->reader = std::thread([this, p] { read_loop(p); });
      if (opt_.heartbeat.count() > 0 && size_ > 1) watchdog_ = std::thread([this] { watch(); });
    } catch (...) {  // no thread to be had: undo what started, then say so
      stop();
      throw;
    }
  }

  ~tcp_communicator() override { stop(); }

  // Says bye on every link, ends the threads. Runs once.
  void stop() {
    if (stopped_) return;
    stopped_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    // A bye on every link, then the links cut. Waiting for each peer's own end of stream
    // (so that a frame arriving now cannot make the close a reset that drops our bye) would
    // hold every rank of a group for the slowest: not worth it, since a collective ends
    // only when all its messages are read, and a lost bye reads as a reset, also a close.
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      say_bye(p, kByeShutdown, "shutdown");
      boost::system::error_code ec;
      if (auto& s = links_[size_t(p)]->socket) s->shutdown(tcp::socket::shutdown_both, ec);
    }
    for (auto& l : links_)
      if (l->reader.joinable()) l->reader.join();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(int peer, uint64_t tag, const void* data, size_t count, dtype type) override {
    check_peer(peer, "send to");
    const size_t bytes = count * dtype_size(type);
    if (peer == rank_) {  // to itself: straight into its own mailbox
      message m;
      m.bytes.reset(new uint8_t[bytes ? bytes : 1]);
      if (bytes) std::memcpy(m.bytes.get(), data, bytes);
      m.size = bytes;
      deliver(peer, tag, std::move(m));
      return;
    }
    frame_header h;
    h.kind = frame_kind::data;
    h.src = uint32_t(rank_);
    h.type = type;
    h.tag = tag;
    h.count = count;
    h.payload_crc = crc32c(data, bytes);
    write_frame(peer, h, data);
  }

  void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) override {
    const size_t bytes = count * dtype_size(type);
    message m = take(peer, tag, bytes);
    if (bytes) std::memcpy(data, m.bytes.get(), bytes);
  }

  void recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) override {
    message m = take(peer, tag, count * sizeof(float));
    const float* in = reinterpret_cast<const float*>(m.bytes.get());  // new[] storage: aligned for float
    for (size_t i = 0; i < count; ++i) data[i] += in[i];
  }

  void abort(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_.empty()) aborted_ = why.empty() ? "aborted" : why;
    }
    cv_.notify_all();
    for (int p = 0; p < size_; ++p)
      if (p != rank_) say_bye(p, kByeAbort, why);
  }

  std::string peer_failure(int peer) override {
    check_peer(peer, "ask about");
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_.empty()) return aborted_;
    return links_[size_t(peer)]->closed;
  }

  bool has_message(int peer, uint64_t tag) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queued_.find({peer, tag});
    return it != queued_.end() && !it->second.empty();
  }

 private:
  struct link {
    std::unique_ptr<tcp::socket> socket;
    std::mutex write_mu;
    std::thread reader;
    std::string closed;  // guarded by the communicator's mu_: why the link is down
    // steady_clock ticks of the last frame read from / written to the link.
    std::atomic<int64_t> last_read{0}, last_write{0};
  };

  static int64_t ticks() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

  // The socket takes a small frame now, without blocking (waiting up to `ms`).
  static bool writable(tcp::socket& s, int ms = 0) {
    pollfd pfd{s.native_handle(), POLLOUT, 0};
    return ::poll(&pfd, 1, ms) == 1 && (pfd.revents & POLLOUT);
  }

  // Pings idle links, and closes the ones that have been silent too long.
  void watch() {
    const int64_t beat = std::chrono::duration_cast<std::chrono::steady_clock::duration>(opt_.heartbeat).count();
    const int64_t limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(opt_.silence).count();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, opt_.heartbeat / 4, [&] { return stopping_; });
      if (stopping_) return;
      lock.unlock();
      const int64_t now = ticks();
      for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        link& l = *links_[size_t(p)];
        bool open;
        {
          std::lock_guard<std::mutex> g(mu_);
          open = l.closed.empty();
        }
        if (!open) continue;
        if (limit > 0 && now - l.last_read.load() > limit) {
          const std::string why = "rank " + std::to_string(p) + " was silent for " +
                                  std::to_string(opt_.silence.count()) +
                                  " ms (no data, no heartbeat): hung, stopped or cut off";
          log("closing the link to rank " + std::to_string(p) + ": " + why);
          close_link(p, why);
          boost::system::error_code ec;
          l.socket->shutdown(tcp::socket::shutdown_both, ec);  // ends its reader
          continue;
        }
        if (now - l.last_write.load() >= beat) {
          std::unique_lock<std::mutex> w(l.write_mu, std::try_to_lock);  // a frame going out is a sign of life too
          if (!w.owns_lock() || !writable(*l.socket)) continue;  // never block here: a full buffer is a stopped peer
          try {
            handshake::write_frame(*l.socket, frame_kind::ping, rank_, 0, nullptr, 0);
          } catch (const std::exception&) {  // a broken link: its reader says so
          }
          l.last_write = ticks();
        }
      }
      lock.lock();
    }
  }

  std::string key_of(int r) const { return "tcp/" + std::to_string(opt_.group) + "/" + std::to_string(r); }

  void check_peer(int peer, const char* what) const {
    TROUPE_CHECK(peer >= 0 && peer < size_, what, " rank ", peer, " of ", size_);
  }

  void log(const std::string& what) const { std::fprintf(stderr, "tcp: rank %d: %s\n", rank_, what.c_str()); }

  // Publishes this rank's address, dials every lower rank (sending its hello), accepts
  // every higher one (reading and checking its hello).
  void connect_all(rendezvous& store) {
    const auto until = std::chrono::steady_clock::now() + opt_.connect_deadline;
    boost::system::error_code ec;
    tcp::acceptor acceptor(io_);
    const auto address = asio::ip::make_address(opt_.host, ec);
    if (ec) throw input_error("tcp: host '" + opt_.host + "' is not an IP address: " + ec.message());
    try {
      acceptor.open(address.is_v6() ? tcp::v6() : tcp::v4());
      acceptor.bind(tcp::endpoint(address, 0));
      acceptor.listen();
    } catch (const boost::system::system_error& e) {
      throw transport_error("tcp: rank " + std::to_string(rank_) + " cannot listen on " + opt_.host + ": " + e.what());
    }
    store.set(key_of(rank_), opt_.host + " " + std::to_string(acceptor.local_endpoint().port()));
    for (int p = 0; p < rank_; ++p) dial(p, store, until);
    int missing = size_ - 1 - rank_;
    while (missing > 0) {
      const double left = ms_left(until);
      pollfd pfd{acceptor.native_handle(), POLLIN, 0};
      if (left <= 0 || ::poll(&pfd, 1, int(left) + 1) <= 0) {
        std::string who;
        for (int p = rank_ + 1; p < size_; ++p)
          if (!links_[size_t(p)]->socket) {
            if (!who.empty()) who += ", ";
            who += std::to_string(p);
          }
        throw transport_error("tcp: rank " + std::to_string(rank_) + " waited " +
                              std::to_string(opt_.connect_deadline.count()) + " ms for rank(s) " + who + " to connect");
      }
      auto s = std::make_unique<tcp::socket>(io_);
      acceptor.accept(*s, ec);
      if (ec) continue;
      std::string peer_name = "?";
      if (auto ep = s->remote_endpoint(ec); !ec) peer_name = ep.address().to_string() + ":" + std::to_string(ep.port());
      try {
        // A connection gets a few seconds to greet and prove itself: one that says nothing
        // must not hold up the peers behind it.
        const auto hello_until = std::min(until, std::chrono::steady_clock::now() + std::chrono::seconds(5));
        uint8_t hdr[kFrameHeaderBytes];
        handshake::read_exact(*s, hdr, sizeof hdr, hello_until);
        frame_header h = decode_header(hdr, sizeof hdr, {uint32_t(size_), opt_.max_message_bytes});
        if (h.kind != frame_kind::hello) throw frame_error("frame: the first frame is not a hello");
        if (h.tag != opt_.group)
          throw frame_error("hello for group " + std::to_string(h.tag) + " (this is group " +
                            std::to_string(opt_.group) + ")");
        const int p = int(h.src);
        if (p <= rank_) throw frame_error("hello from rank " + std::to_string(p) + ", which this rank dials itself");
        if (links_[size_t(p)]->socket) throw frame_error("a second hello from rank " + std::to_string(p));
        // Challenge-response: prove the secret to the dialer, then have it prove it.
        handshake::accept_side(*s, opt_.secret, opt_.group, rank_, p, uint32_t(size_), hello_until);
        s->set_option(tcp::no_delay(true));
        links_[size_t(p)]->socket = std::move(s);
        --missing;
      } catch (const std::exception& e) {  // frame_error, or the read failed or timed out
        log("refused a connection from " + peer_name + ": " + e.what());
      }
    }
  }

  void dial(int p, rendezvous& store, std::chrono::steady_clock::time_point until) {
    const std::string where = store.get(key_of(p), std::chrono::milliseconds(std::max<int64_t>(1, int64_t(ms_left(until)))));
    const size_t space = where.find(' ');
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(where.substr(0, space), ec);
    if (space == std::string::npos || ec)
      throw transport_error("tcp: rank " + std::to_string(p) + " published '" + where + "', not 'ADDRESS PORT'");
    const tcp::endpoint ep(address, uint16_t(std::stoi(where.substr(space + 1))));
    auto s = std::make_unique<tcp::socket>(io_);
    for (auto pause = std::chrono::milliseconds(1);; pause = std::min(pause * 2, std::chrono::milliseconds(100))) {
      s->connect(ep, ec);
      if (!ec) break;
      s = std::make_unique<tcp::socket>(io_);
      if (ms_left(until) <= 0)
        throw transport_error("tcp: rank " + std::to_string(rank_) + " cannot connect to rank " + std::to_string(p) +
                              " at " + where + ": " + ec.message());
      std::this_thread::sleep_for(pause);
    }
    s->set_option(tcp::no_delay(true));
    frame_header h;
    h.kind = frame_kind::hello;
    h.src = uint32_t(rank_);
    h.tag = opt_.group;
    h.count = uint64_t(size_);
    h.payload_crc = crc32c(nullptr, 0);
    uint8_t hdr[kFrameHeaderBytes];
    encode_header(h, hdr);
    asio::write(*s, asio::buffer(hdr), ec);
    if (ec) throw transport_error("tcp: rank " + std::to_string(rank_) + " cannot greet rank " + std::to_string(p) + ": " + ec.message());
    // Challenge-response (the acceptor proves the secret first, then this rank).
    try {
      handshake::dial_side(*s, opt_.secret, opt_.group, rank_, p, uint32_t(size_), until);
    } catch (const handshake::wrong_secret& e) {
      log("refused rank " + std::to_string(p) + " at " + where + ": " + e.what());
      throw transport_error("tcp: rank " + std::to_string(rank_) + ": rank " + std::to_string(p) + " at " + where +
                            ": " + e.what());
    } catch (const transport_error& e) {
      throw transport_error("tcp: rank " + std::to_string(rank_) + ": " + e.what());
    } catch (const std::exception& e) {  // frame_error, or the link broke or timed out
      throw transport_error("tcp: rank " + std::to_string(rank_) + ": the handshake with rank " + std::to_string(p) +
                            " at " + where + " failed: " + e.what());
    }
    links_[size_t(p)]->socket = std::move(s);
  }

  void write_frame(int peer, const frame_header& h, const void* payload) {
    link& l = *links_[size_t(peer)];
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!l.closed.empty())
        throw transport_error("tcp: rank " + std::to_string(rank_) + " cannot send to rank " + std::to_string(peer) +
                              ": " + l.closed);
    }
    uint8_t hdr[kFrameHeaderBytes];
    encode_header(h, hdr);
    boost::system::error_code ec;
    {
      std::lock_guard<std::mutex> lock(l.write_mu);
      const std::array<asio::const_buffer, 2> parts{asio::buffer(hdr), asio::buffer(payload, h.payload_bytes())};
      asio::write(*l.socket, parts, ec);
      l.last_write = ticks();
    }
    if (ec) {
      const std::string why = "the link to rank " + std::to_string(peer) + " broke: " + ec.message();
      close_link(peer, why);
      throw transport_error("tcp: rank " + std::to_string(rank_) + ": " + why);
    }
  }

  void say_bye(int peer, uint64_t kind, const std::string& why) {
    link& l = *links_[size_t(peer)];
    if (!l.socket) return;
    // Best effort, and never a hang: the link may be gone, or its peer stopped with our
    // send buffer full (then the bye is skipped).
    std::unique_lock<std::mutex> lock(l.write_mu, std::defer_lock);
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (!lock.try_lock()) {
      if (std::chrono::steady_clock::now() >= until) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!writable(*l.socket, 100)) return;
    try {
      handshake::write_frame(*l.socket, frame_kind::bye, rank_, kind, why.data(), why.size());
    } catch (const std::exception&) {  // the link is gone already: nothing to say goodbye to
    }
  }

  void read_loop(int peer) {
    tcp::socket& s = *links_[size_t(peer)]->socket;
    const frame_limits limits{uint32_t(size_), opt_.max_message_bytes};
    try {
      for (;;) {
        uint8_t hdr[kFrameHeaderBytes];
        asio::read(s, asio::buffer(hdr));
        links_[size_t(peer)]->last_read = ticks();
        frame_header h = decode_header(hdr, sizeof hdr, limits);
        if (int(h.src) != peer)
          throw frame_error("frame: src rank " + std::to_string(h.src) + " on the link of rank " + std::to_string(peer));
        if (h.kind == frame_kind::hello) throw frame_error("frame: a second hello");
        if (h.kind == frame_kind::auth) throw frame_error("frame: an auth frame after the handshake");
        if (h.kind == frame_kind::ping) continue;
        if (h.kind == frame_kind::bye && h.payload_bytes() > 4096)
          throw frame_error("frame: a bye reason of " + std::to_string(h.payload_bytes()) + " bytes (at most 4096)");
        message m;
        m.size = h.payload_bytes();
        m.bytes.reset(new uint8_t[m.size ? m.size : 1]);
        // In pieces, each a sign of life: a long payload is not silence.
        for (size_t at = 0; at < m.size; at += size_t(1) << 20) {
          asio::read(s, asio::buffer(m.bytes.get() + at, std::min(m.size - at, size_t(1) << 20)));
          links_[size_t(peer)]->last_read = ticks();
        }
        check_payload(h, m.bytes.get());
        if (h.kind == frame_kind::bye) {
          const std::string why(reinterpret_cast<const char*>(m.bytes.get()), m.size);
          if (h.tag == kByeAbort) {
            std::lock_guard<std::mutex> lock(mu_);
            if (aborted_.empty()) aborted_ = "rank " + std::to_string(peer) + " aborted: " + why;
          }
          close_link(peer, "rank " + std::to_string(peer) + " closed the link (" + why + ")");
          return;
        }
        deliver(peer, h.tag, std::move(m));
      }
    } catch (const frame_error& e) {
      log("closing the link to rank " + std::to_string(peer) + ": " + e.what());
      close_link(peer, std::string("it sent a bad frame: ") + e.what());
      boost::system::error_code ec;
      s.shutdown(tcp::socket::shutdown_both, ec);
    } catch (const boost::system::system_error& e) {
      bool stopping;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stopping_;
      }
      close_link(peer, stopping ? "this rank shut down"
                                : "the link to rank " + std::to_string(peer) + " broke: " + e.code().message());
    } catch (const std::exception& e) {  // out of memory for a frame, and the like: this link ends, not the process
      log("closing the link to rank " + std::to_string(peer) + ": " + e.what());
      close_link(peer, std::string("reading from it failed: ") + e.what());
      boost::system::error_code ec;
      s.shutdown(tcp::socket::shutdown_both, ec);
    }
  }

  void deliver(int peer, uint64_t tag, message m) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued_[{peer, tag}].push_back(std::move(m));
    }
    cv_.notify_all();
  }

  void close_link(int peer, const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& closed = links_[size_t(peer)]->closed;
      if (closed.empty()) closed = why;
    }
    cv_.notify_all();
  }

  // The next message from `peer` with `tag`; what arrived before a link closed is still
  // delivered.
  message take(int peer, uint64_t tag, size_t bytes) {
    check_peer(peer, "recv from");
    std::unique_lock<std::mutex> lock(mu_);
    const auto key = std::make_pair(peer, tag);
    auto ready = [&] {
      auto it = queued_.find(key);
      return it != queued_.end() && !it->second.empty();
    };
    const std::string& closed = links_[size_t(peer)]->closed;
    cv_.wait_for(lock, deadline, [&] { return ready() || !aborted_.empty() || !closed.empty(); });
    if (!ready()) {
      const std::string me = "tcp: rank " + std::to_string(rank_);
      if (!aborted_.empty())
        throw transport_error(me + " stopped waiting for rank " + std::to_string(peer) + ": " + aborted_);
      if (!closed.empty()) throw transport_error(me + " cannot receive from rank " + std::to_string(peer) + ": " + closed);
      throw transport_error(me + " waited " + std::to_string(deadline.count()) + " ms for tag " + std::to_string(tag) +
                            " from rank " + std::to_string(peer));
    }
    auto it = queued_.find(key);
    message m = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) queued_.erase(it);
    if (m.size != bytes)
      throw transport_error("tcp: rank " + std::to_string(rank_) + " expected " + std::to_string(bytes) +
                            " bytes from rank " + std::to_string(peer) + ", got " + std::to_string(m.size));
    return m;
  }

  int rank_, size_;
  tcp_options opt_;
  asio::io_context io_;
  std::vector<std::unique_ptr<link>> links_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<int, uint64_t>, std::deque<message>> queued_;
  std::string aborted_;
  bool stopping_ = false;
  bool stopped_ = false;  // stop() ran
  std::thread watchdog_;
};

}  // namespace

std::string make_job_secret() { return handshake::random_hex(32); }

std::shared_ptr<communicator> make_tcp_communicator(int rank, int size, rendezvous& store, const tcp_options& options) {
  return std::make_shared<tcp_communicator>(rank, size, store, options);
}

}  // namespace troupe
