#include "transport/ucx/ucx.hpp"

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/check.hpp"
#include "transport/cpu_relax.hpp"

namespace troupe {

namespace {

using clock = std::chrono::steady_clock;

constexpr uint64_t kSetupTag = uint64_t(1) << 62;  // on the tcp group, before any caller's message
constexpr int kTagBits = 48;

class ucx_communicator : public communicator, public std::enable_shared_from_this<ucx_communicator> {
 public:
  explicit ucx_communicator(std::shared_ptr<communicator> inner)
      : inner_(std::move(inner)), rank_(inner_->rank()), size_(inner_->size()), eps_(size_t(size_), nullptr) {
    if (size_ > (1 << (64 - kTagBits)))
      throw input_error("ucx: at most " + std::to_string(1 << (64 - kTagBits)) + " ranks, got " + std::to_string(size_));
    ucp_config_t* config = nullptr;
    check(ucp_config_read(nullptr, nullptr, &config), "read its configuration");
    // Without UCX's peer error handling, a CMA read from a peer that died aborts this
    // process inside UCX (process_vm_readv: No such process): leave CMA out unless the
    // user chose the transports (UCX_TLS).
    if (!std::getenv("UCX_TLS")) ucp_config_modify(config, "TLS", "posix,sysv,self,tcp");
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    const ucs_status_t inited = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    check(inited, "initialise");
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // mu_ serializes every call
    if (ucp_worker_create(context_, &wp, &worker_) != UCS_OK) {
      ucp_cleanup(context_);
      throw error("cannot create a worker");
    }
    try {
      connect();
    } catch (...) {
      close();
      throw;
    }
  }

  ~ucx_communicator() override { close(); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(int peer, uint64_t tag, const void* data, size_t count, dtype type) override {
    send_async(peer, tag, data, count, type).wait();
  }

  send_handle send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type) override {
    check_peer(peer, "send to");
    ucp_request_param_t prm{};
    void* req;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!aborted_.empty()) throw error("cannot send to rank " + std::to_string(peer) + ": " + aborted_);
      req = ucp_tag_send_nbx(eps_[size_t(peer)], data, count * dtype_size(type), wire_tag(rank_, tag), &prm);
    }
    if (req == nullptr) return {};  // sent (copied out) already
    if (UCS_PTR_IS_ERR(req))
      throw error("cannot send to rank " + std::to_string(peer) + ": " + ucs_status_string(UCS_PTR_STATUS(req)));
    return send_handle([self = shared_from_this(), req, peer] { self->finish_send(req, peer); });
  }

  void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) override {
    check_peer(peer, "recv from");
    const size_t bytes = count * dtype_size(type);
    // The callback fills `info` and the status.
    struct arrival {
      ucp_tag_recv_info_t info{};
      ucs_status_t status = UCS_INPROGRESS;
    } got;
    ucp_tag_recv_info_t& info = got.info;
    ucp_request_param_t prm{};
    // UCX 1.13 leaves recv_info unfilled when it completes a receive at once from an
    // unexpected message, so no immediate completion: the callback always reports.
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_RECV_INFO | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    prm.recv_info.tag_info = &info;
    prm.user_data = &got;
    prm.cb.recv = [](void*, ucs_status_t status, const ucp_tag_recv_info_t* i, void* user) {
      auto* a = static_cast<arrival*>(user);
      a->info = *i;
      a->status = status;
    };
    void* req;
    {
      std::lock_guard<std::mutex> lock(mu_);
      req = ucp_tag_recv_nbx(worker_, data, bytes, wire_tag(peer, tag), ~uint64_t(0), &prm);
    }
    if (UCS_PTR_IS_ERR(req))
      throw error("cannot receive from rank " + std::to_string(peer) + ": " + ucs_status_string(UCS_PTR_STATUS(req)));
    ucs_status_t status = UCS_OK;
    if (req) {
      try {
        wait_for(peer, "receive from", tag, [&] {
          status = got.status;
          return status != UCS_INPROGRESS;
        });
      } catch (...) {
        // Given up: the receive must not write into the caller's buffer later.
        std::lock_guard<std::mutex> lock(mu_);
        ucp_request_cancel(worker_, req);
        if (progress_until_done(req)) ucp_request_free(req);
        throw;
      }
      std::lock_guard<std::mutex> lock(mu_);
      ucp_request_free(req);
    }
    if (status != UCS_OK)
      throw error("receive from rank " + std::to_string(peer) + " failed: " + ucs_status_string(status) +
                  (status == UCS_ERR_MESSAGE_TRUNCATED ? " (expected " + std::to_string(bytes) + " bytes)" : ""));
    if (info.length != bytes)
      throw error("expected " + std::to_string(bytes) + " bytes from rank " + std::to_string(peer) + ", got " +
                  std::to_string(info.length));
  }

  void abort(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_.empty()) aborted_ = why.empty() ? "aborted" : why;
    }
    inner_->abort(why);
  }

  std::string peer_failure(int peer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!aborted_.empty()) return aborted_;
    }
    return inner_->peer_failure(peer);
  }

 private:
  transport_error error(const std::string& what) const {
    return transport_error("ucx: rank " + std::to_string(rank_) + " " + what);
  }

  void check(ucs_status_t s, const char* what) const {
    if (s != UCS_OK) throw error(std::string("cannot ") + what + ": " + ucs_status_string(s));
  }

  void check_peer(int peer, const char* what) const {
    TROUPE_CHECK(peer >= 0 && peer < size_, what, " rank ", peer, " of ", size_);
  }

  uint64_t wire_tag(int from, uint64_t tag) const {
    if (tag >> kTagBits)
      throw error("tag " + std::to_string(tag) + " is too large (ucx carries tags below 2^" +
                  std::to_string(kTagBits) + ")");
    return (uint64_t(from) << kTagBits) | tag;
  }

  // Every rank's worker address, over the tcp group; an endpoint to each (itself too: UCX's
  // self transport).
  void connect() {
    ucp_address_t* address = nullptr;
    size_t length = 0;
    check(ucp_worker_get_address(worker_, &address, &length), "get its worker's address");
    std::vector<uint8_t> mine(reinterpret_cast<uint8_t*>(address), reinterpret_cast<uint8_t*>(address) + length);
    ucp_worker_release_address(worker_, address);
    const int64_t n = int64_t(length);
    for (int q = 0; q < size_; ++q)
      if (q != rank_) {
        inner_->send(q, kSetupTag, &n, sizeof n, dtype::u8);
        inner_->send(q, kSetupTag, mine.data(), mine.size(), dtype::u8);
      }
    for (int q = 0; q < size_; ++q) {
      std::vector<uint8_t> theirs = mine;
      if (q != rank_) {
        int64_t m = 0;
        inner_->recv(q, kSetupTag, &m, sizeof m, dtype::u8);
        if (m <= 0 || m > (int64_t(1) << 20))
          throw error("rank " + std::to_string(q) + " sent a worker address of " + std::to_string(m) + " bytes");
        theirs.resize(size_t(m));
        inner_->recv(q, kSetupTag, theirs.data(), theirs.size(), dtype::u8);
      }
      ucp_ep_params_t ep{};
      ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
      ep.address = reinterpret_cast<const ucp_address_t*>(theirs.data());
      ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;  // failures are the tcp group's to find
      check(ucp_ep_create(worker_, &ep, &eps_[size_t(q)]), "connect");
    }
  }

  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    for (ucp_ep_h& ep : eps_) {
      if (!ep) continue;
      ucp_request_param_t prm{};
      prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      prm.flags = UCP_EP_CLOSE_FLAG_FORCE;  // no goodbye round: peers may be gone already
      void* req = ucp_ep_close_nbx(ep, &prm);
      if (req && !UCS_PTR_IS_ERR(req) && progress_until_done(req)) ucp_request_free(req);
      ep = nullptr;
    }
    if (worker_) ucp_worker_destroy(worker_);
    if (context_) ucp_cleanup(context_);
    worker_ = nullptr;
    context_ = nullptr;
  }

  // Progresses the worker until `req` completes, for at most a second (a peer that died
  // may never answer): false if it did not (the request is then left to UCX).
  bool progress_until_done(void* req) {
    const auto until = clock::now() + std::chrono::seconds(1);
    while (ucp_request_check_status(req) == UCS_INPROGRESS) {
      if (clock::now() >= until) return false;
      ucp_worker_progress(worker_);
    }
    return true;
  }

  void finish_send(void* req, int peer) {
    ucs_status_t status = UCS_OK;
    try {
      wait_for(peer, "send to", 0, [&] {
        status = ucp_request_check_status(req);
        return status != UCS_INPROGRESS;
      });
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      ucp_request_free(req);  // released when UCX is done with it
      throw;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ucp_request_free(req);
    }
    if (status != UCS_OK)
      throw error("send to rank " + std::to_string(peer) + " failed: " + ucs_status_string(status));
  }

  // Progresses the worker until done() (called under mu_); throws on the group's abort, the
  // peer's failure as the tcp link sees it, or the deadline.
  template <class Done>
  void wait_for(int peer, const char* what, uint64_t tag, Done done) {
    const auto start = clock::now(), until = start + deadline;
    auto checked = start;
    for (int i = 0;; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (int k = 0; k < 64 && ucp_worker_progress(worker_) != 0; ++k) {
        }
        if (done()) return;
        if (!aborted_.empty()) throw error("stopped waiting for rank " + std::to_string(peer) + ": " + aborted_);
      }
      const auto now = clock::now();
      if (now - checked > std::chrono::milliseconds(1)) {
        checked = now;
        const std::string f = inner_->peer_failure(peer);
        if (!f.empty()) throw error("cannot " + std::string(what) + " rank " + std::to_string(peer) + ": " + f);
        if (now >= until)
          throw error("waited " + std::to_string(deadline.count()) + " ms to " + what + " rank " +
                      std::to_string(peer) + (tag ? " (tag " + std::to_string(tag) + ")" : ""));
      }
      if (now - start < spin) {
        cpu_relax();
      } else if (now - start < spin + std::chrono::milliseconds(1)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  }

  std::shared_ptr<communicator> inner_;
  int rank_, size_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<ucp_ep_h> eps_;
  std::mutex mu_;  // every UCX call (the worker is SERIALIZED), and aborted_
  std::string aborted_;
};

}  // namespace

std::shared_ptr<communicator> make_ucx_communicator(int rank, int size, rendezvous& store, const tcp_options& tcp) {
  auto inner = make_tcp_communicator(rank, size, store, tcp);
  return std::make_shared<ucx_communicator>(std::move(inner));
}

}  // namespace troupe
