#include "actors/remote_stage.hpp"

#include <cstring>

namespace troupe {

namespace {

// A pipe message's header: 16 little-endian int64 (the hosts of one job share a byte order).
constexpr int64_t kHeaderMagic = 0x5450495045484452;  // "TPIPEHDR"
constexpr int64_t kEnd = 2;                           // kind: the sender sends nothing more
constexpr int kMaxDims = 7;
struct header {
  int64_t magic, kind, replica, step, micro, vstage, version, type, ndim, dims[kMaxDims];
};
static_assert(sizeof(header) == 16 * sizeof(int64_t));

void send_header(communicator& pipe, int process, const header& h) {
  pipe.send(process, kPipeTag, &h, sizeof h, dtype::u8);
}

}  // namespace

caf::behavior remote_stage(caf::event_based_actor* self, std::shared_ptr<communicator> pipe, int process, int replica,
                           std::shared_ptr<std::mutex> link) {
  (void)self;
  return {
      [=](pipe_msg& msg) {
        header h{};
        h.magic = kHeaderMagic;
        h.kind = msg.kind;
        h.replica = replica;
        h.step = msg.step;
        h.micro = msg.micro;
        h.vstage = msg.vstage;
        h.version = msg.version;
        h.type = int64_t(msg.t.type());
        const shape_t& shape = msg.t.shape();
        if (shape.size() > size_t(kMaxDims))
          throw std::runtime_error("remote_stage: a tensor of " + std::to_string(shape.size()) + " dimensions (at most " +
                                   std::to_string(kMaxDims) + " cross processes)");
        h.ndim = int64_t(shape.size());
        for (size_t d = 0; d < shape.size(); ++d) h.dims[d] = shape[d];
        std::lock_guard<std::mutex> lock(*link);
        send_header(*pipe, process, h);
        pipe->send(process, kPipeTag, msg.t.raw(), msg.t.bytes(), dtype::u8);
      },
  };
}

pipe_inlets::pipe_inlets(std::shared_ptr<communicator> pipe, std::function<caf::actor(int, int)> route, int stages,
                         int replicas, std::function<void(const std::string&)> on_error)
    : pipe_(std::move(pipe)), route_(std::move(route)), stages_(stages), replicas_(replicas),
      on_error_(std::move(on_error)) {
  for (int q = 0; q < pipe_->size(); ++q)
    if (q != pipe_->rank()) threads_.emplace_back([this, q] { run(q); });
}

void pipe_inlets::run(int peer) {
  const std::string from = "the link to the process holding stages of pipe rank " + std::to_string(peer);
  try {
    for (;;) {
      header h{};
      try {
        pipe_->recv(peer, kPipeTag, &h, sizeof h, dtype::u8);
      } catch (const transport_error&) {
        // A quiet stretch (evaluation, a slow step) is not a failure: only a link that is
        // down, or an aborted group, is.
        if (pipe_->peer_failure(peer).empty() && !closing_) continue;
        throw;
      }
      if (h.magic != kHeaderMagic) throw std::runtime_error("a pipe header without its magic");
      if (h.kind == kEnd) return;
      auto bad = [&](const std::string& what) {
        return std::runtime_error("a bad pipe header (" + what + ": kind " + std::to_string(h.kind) + ", replica " +
                                  std::to_string(h.replica) + ", virtual stage " + std::to_string(h.vstage) + ")");
      };
      if (h.kind != pipe_msg::activation && h.kind != pipe_msg::gradient) throw bad("unknown kind");
      if (h.replica < 0 || h.replica >= replicas_ || h.vstage < 0) throw bad("no such stage");
      if (h.type < 0 || h.type > int64_t(dtype::u8) || h.ndim < 0 || h.ndim > kMaxDims) throw bad("dtype or rank");
      shape_t shape;
      unsigned __int128 n = 1;
      for (int d = 0; d < h.ndim; ++d) {
        if (h.dims[d] < 0) throw bad("negative dimension");
        n *= uint64_t(h.dims[d]);
        if (n > (unsigned __int128)1 << 36) throw bad("more than 2^36 elements");
        shape.push_back(h.dims[d]);
      }
      caf::actor to = route_(int(h.replica), int(h.vstage % stages_));
      if (!to) throw bad("a stage this process does not hold");
      tensor t = tensor::empty(shape, dtype(h.type));
      pipe_->recv(peer, kPipeTag, t.raw(), t.bytes(), dtype::u8);
      caf::anon_send(to, pipe_msg{uint8_t(h.kind), h.step, int32_t(h.micro), int32_t(h.vstage), h.version, std::move(t)});
    }
  } catch (const std::exception& e) {
    if (closing_ || reported_.exchange(true)) return;
    on_error_(from + " failed: " + e.what());
  }
}

void pipe_inlets::close() {
  if (closing_.exchange(true)) return;
  // Every pipe message of the run has been consumed by now: the last step's gradient sync
  // ran over this group after every stage had reported.
  header h{};
  h.magic = kHeaderMagic;
  h.kind = kEnd;
  try {
    for (int q = 0; q < pipe_->size(); ++q)
      if (q != pipe_->rank()) send_header(*pipe_, q, h);
  } catch (const std::exception&) {  // a peer already gone: its inlet ends on the error
    pipe_->abort("a process left before the end of the run");
  }
  for (auto& t : threads_) t.join();
  threads_.clear();
}

pipe_inlets::~pipe_inlets() {
  if (!threads_.empty()) {
    closing_ = true;
    pipe_->abort("the run ended");
    for (auto& t : threads_) t.join();
  }
}

}  // namespace troupe
