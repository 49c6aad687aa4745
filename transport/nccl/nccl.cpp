// The nccl transport where CUDA and NCCL were found (CMake defines TROUPE_HAVE_NCCL and
// builds this file instead of nccl_absent.cpp). Plain C++: NCCL's host API and the CUDA
// runtime need no nvcc.
//
// Every communicator is non-blocking (ncclConfig_t::blocking = 0), so that neither joining
// nor any operation can block the calling thread inside NCCL: each call returns at once
// (ncclSuccess or ncclInProgress), and `settle` then polls the communicator's
// asynchronous state and the stream's completion event until both are done, an error
// shows, or the deadline passes; then the communicator is aborted and the error thrown.
#include "transport/nccl/nccl.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "runtime/check.hpp"
#include "transport/tcp/handshake.hpp"  // to_hex

namespace troupe {

namespace {

using clock = std::chrono::steady_clock;

void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw transport_error(std::string("nccl: ") + what + " failed: " + cudaGetErrorString(e) + " (" + file + ":" +
                          std::to_string(line) + ")");
}
#define TROUPE_CUDA(call) cuda_check((call), #call, __FILE__, __LINE__)

ncclDataType_t nccl_type(dtype t) {
  switch (t) {
    case dtype::f32: return ncclFloat32;
    case dtype::i32: return ncclInt32;
    case dtype::u8: return ncclUint8;
  }
  throw input_error("nccl: no NCCL type for dtype " + std::string(dtype_name(t)));
}

void from_hex(const std::string& hex, void* p, size_t n) {
  if (hex.size() != 2 * n) throw transport_error("nccl: the unique id in the store has the wrong length");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw transport_error("nccl: the unique id in the store is not hex");
  };
  for (size_t i = 0; i < n; ++i) static_cast<uint8_t*>(p)[i] = uint8_t(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
}

}  // namespace

struct nccl_group::impl {
  int rank = 0, size = 1, device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  std::string aborted;  // why, once aborted (the owner thread's)
  // abort() from any thread only asks; the owner thread, polling, aborts the communicator.
  std::atomic<bool> abort_requested{false};
  std::mutex why_mu;
  std::string abort_why;

  ~impl() {
    if (comm) {
      cudaSetDevice(device);
      ncclCommAbort(comm);
    }
    if (done) cudaEventDestroy(done);
    if (stream) cudaStreamDestroy(stream);
  }

  std::string requested_why() {
    std::lock_guard<std::mutex> lock(why_mu);
    return abort_why;
  }

  [[noreturn]] void fail(const std::string& op, const std::string& why) {
    if (aborted.empty()) {
      aborted = why;
      if (comm) ncclCommAbort(comm);
      comm = nullptr;
    }
    throw transport_error("nccl: rank " + std::to_string(rank) + ": " + op + ": " + why);
  }

  // The communicator's asynchronous state; an abort asked for, or an error, fails `op`.
  ncclResult_t poll(const std::string& op) {
    if (abort_requested) fail(op, "aborted: " + requested_why());
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) fail(op, std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(r));
    if (state != ncclSuccess && state != ncclInProgress)
      fail(op, std::string(ncclGetErrorString(state)) + ": " + ncclGetLastError(comm));
    return state;
  }

  // Waits for the communicator to leave ncclInProgress (an enqueue or the init), then, if
  // `sync`, for the stream; at most `deadline`.
  void settle(ncclResult_t issued, const std::string& op, std::chrono::milliseconds deadline, bool sync) {
    const auto until = clock::now() + deadline;
    if (issued != ncclSuccess && issued != ncclInProgress)
      fail(op, std::string(ncclGetErrorString(issued)) + ": " + ncclGetLastError(comm));
    for (;;) {
      if (poll(op) == ncclSuccess) break;
      if (clock::now() >= until) fail(op, "not enqueued within " + std::to_string(deadline.count()) + " ms");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    if (!sync) return;
    TROUPE_CUDA(cudaEventRecord(done, stream));
    for (;;) {
      const cudaError_t e = cudaEventQuery(done);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) fail(op, std::string("CUDA: ") + cudaGetErrorString(e));
      poll(op);
      if (clock::now() >= until)
        fail(op, "did not finish within " + std::to_string(deadline.count()) +
                     " ms (a peer died, hangs or never called it): the communicator is aborted");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  void ready(const char* op) {
    if (abort_requested && aborted.empty()) fail(op, "aborted: " + requested_why());
    if (!aborted.empty()) throw transport_error("nccl: rank " + std::to_string(rank) + ": " + op + ": aborted: " + aborted);
    TROUPE_CUDA(cudaSetDevice(device));
  }
};

namespace {

// Joins rank `rank` of `size` under `id` on `device`, non-blocking, within `deadline`.
std::unique_ptr<nccl_group::impl> init_rank(int rank, int size, const ncclUniqueId& id, int device,
                                            std::chrono::milliseconds deadline) {
  auto p = std::make_unique<nccl_group::impl>();
  p->rank = rank, p->size = size, p->device = device;
  TROUPE_CUDA(cudaSetDevice(device));
  TROUPE_CUDA(cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking));
  TROUPE_CUDA(cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = ncclCommInitRankConfig(&p->comm, size, id, rank, &config);
  if (p->comm == nullptr)
    throw transport_error("nccl: rank " + std::to_string(rank) + ": ncclCommInitRankConfig: " + ncclGetErrorString(r));
  p->settle(r, "joining the group of " + std::to_string(size), deadline, false);
  return p;
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error to keep
    return 0;
  }
  return n;
}

bool nccl_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) *why = std::string("no CUDA device is visible (") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")";
    cudaGetLastError();
    return false;
  }
  return true;
}

device_buffer::device_buffer(size_t bytes, int device) : bytes_(bytes), device_(device) {
  TROUPE_CUDA(cudaSetDevice(device));
  TROUPE_CUDA(cudaMalloc(&ptr_, bytes ? bytes : 1));
}

device_buffer::~device_buffer() {
  if (ptr_) {
    cudaSetDevice(device_);
    cudaFree(ptr_);
  }
}

void device_buffer::upload(const void* host, size_t bytes) {
  TROUPE_CHECK(bytes <= bytes_, "upload of ", bytes, " bytes into a device buffer of ", bytes_);
  TROUPE_CUDA(cudaSetDevice(device_));
  if (bytes) TROUPE_CUDA(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice));
}

void device_buffer::download(void* host, size_t bytes) const {
  TROUPE_CHECK(bytes <= bytes_, "download of ", bytes, " bytes from a device buffer of ", bytes_);
  TROUPE_CUDA(cudaSetDevice(device_));
  if (bytes) TROUPE_CUDA(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost));
}

nccl_group::nccl_group(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

nccl_group::~nccl_group() {
  if (!impl_ || !impl_->comm) return;  // ~impl frees the stream and event
  cudaSetDevice(impl_->device);
  if (impl_->abort_requested || !impl_->aborted.empty()) return;  // ~impl aborts the communicator
  // A clean end: finalize (non-blocking: poll it, bounded), then destroy; ~impl aborts it
  // instead when the finalize does not finish.
  const ncclResult_t finalize = ncclCommFinalize(impl_->comm);
  if (finalize != ncclSuccess && finalize != ncclInProgress) return;
  const auto until = clock::now() + std::chrono::seconds(5);
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress && clock::now() < until) {
    if (ncclCommGetAsyncError(impl_->comm, &state) != ncclSuccess) return;
    if (state == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  if (state == ncclSuccess && ncclCommDestroy(impl_->comm) == ncclSuccess) impl_->comm = nullptr;
}

int nccl_group::rank() const { return impl_->rank; }
int nccl_group::size() const { return impl_->size; }
int nccl_group::device() const { return impl_->device; }

void nccl_group::all_reduce_sum(float* data, size_t count) {
  impl_->ready("all_reduce_sum");
  impl_->settle(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, impl_->comm, impl_->stream), "all_reduce_sum",
                deadline, true);
}

void nccl_group::reduce_scatter_sum(const float* in, float* out, size_t count_per_rank) {
  impl_->ready("reduce_scatter_sum");
  impl_->settle(ncclReduceScatter(in, out, count_per_rank, ncclFloat32, ncclSum, impl_->comm, impl_->stream),
                "reduce_scatter_sum", deadline, true);
}

void nccl_group::all_gather(const void* in, void* out, size_t count_per_rank, dtype type) {
  impl_->ready("all_gather");
  impl_->settle(ncclAllGather(in, out, count_per_rank, nccl_type(type), impl_->comm, impl_->stream), "all_gather",
                deadline, true);
}

void nccl_group::broadcast(void* data, size_t count, dtype type, int root) {
  if (root < 0 || root >= impl_->size)
    throw input_error("nccl: broadcast root " + std::to_string(root) + " is not a rank of the group of " +
                      std::to_string(impl_->size));
  impl_->ready("broadcast");
  impl_->settle(ncclBroadcast(data, data, count, nccl_type(type), root, impl_->comm, impl_->stream), "broadcast",
                deadline, true);
}

void nccl_group::barrier() {
  // One float summed over the group: NCCL has no barrier of its own.
  impl_->ready("barrier");
  device_buffer one(sizeof(float), impl_->device);
  impl_->settle(ncclAllReduce(one.data(), one.data(), 1, ncclFloat32, ncclSum, impl_->comm, impl_->stream), "barrier",
                deadline, true);
}

void nccl_group::exchange(int peer, const void* send, void* recv, size_t count, dtype type) {
  if (peer < 0 || peer >= impl_->size || peer == impl_->rank)
    throw input_error("nccl: exchange with " + std::to_string(peer) + ": expected another rank of the group of " +
                      std::to_string(impl_->size));
  impl_->ready("exchange");
  const ncclDataType_t t = nccl_type(type);
  ncclResult_t r = ncclGroupStart();
  if (r == ncclSuccess) r = ncclSend(send, count, t, peer, impl_->comm, impl_->stream);
  if (r == ncclSuccess || r == ncclInProgress) r = ncclRecv(recv, count, t, peer, impl_->comm, impl_->stream);
  const ncclResult_t end = ncclGroupEnd();
  impl_->settle(r != ncclSuccess && r != ncclInProgress ? r : end, "exchange with rank " + std::to_string(peer),
                deadline, true);
}

void nccl_group::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(impl_->why_mu);
    if (impl_->abort_requested) return;
    impl_->abort_why = why;
  }
  impl_->abort_requested = true;
}

void destroy_nccl_threads(std::vector<std::unique_ptr<nccl_group>>& group) {
  std::vector<std::thread> ending;
  for (auto& g : group)
    if (g) ending.emplace_back([&g] { g.reset(); });
  for (auto& t : ending) t.join();
  group.clear();
}

std::vector<std::unique_ptr<nccl_group>> make_nccl_threads(int size) {
  if (size < 1) throw input_error("nccl: a group needs at least 1 rank, got " + std::to_string(size));
  std::string why;
  if (!nccl_available(&why)) throw transport_error("nccl: " + why);
  const int devices = cuda_device_count();
  if (devices < size)
    throw transport_error("nccl: " + std::to_string(size) + " ranks as threads need " + std::to_string(size) +
                          " CUDA devices (one each), this machine has " + std::to_string(devices));
  ncclUniqueId id;
  if (ncclGetUniqueId(&id) != ncclSuccess) throw transport_error("nccl: ncclGetUniqueId failed");
  std::vector<std::unique_ptr<nccl_group::impl>> impls(static_cast<size_t>(size));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  std::vector<std::thread> joining;
  for (int r = 0; r < size; ++r)
    joining.emplace_back([&, r] {
      try {
        impls[size_t(r)] = init_rank(r, size, id, r, std::chrono::seconds(60));
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : joining) t.join();
  std::vector<std::unique_ptr<nccl_group>> out;
  for (auto& p : impls) out.push_back(p ? std::make_unique<nccl_group>(std::move(p)) : nullptr);
  for (auto& e : errors)
    if (e) {
      for (auto& g : out)  // the joined ones end by abort (local), never waiting for the one that failed
        if (g) g->abort("another rank failed to join");
      std::rethrow_exception(e);
    }
  return out;
}

std::unique_ptr<nccl_group> join_nccl_group(int rank, int size, rendezvous& store, const std::string& key, int device,
                                            std::chrono::milliseconds deadline) {
  if (size < 1 || rank < 0 || rank >= size)
    throw input_error("nccl: rank " + std::to_string(rank) + " is not a rank of a group of " + std::to_string(size));
  std::string why;
  if (!nccl_available(&why)) throw transport_error("nccl: " + why);
  ncclUniqueId id;
  if (rank == 0) {
    if (ncclGetUniqueId(&id) != ncclSuccess) throw transport_error("nccl: ncclGetUniqueId failed");
    store.set(key, handshake::to_hex(&id, sizeof id));
  } else {
    from_hex(store.get(key, deadline), &id, sizeof id);
  }
  return std::make_unique<nccl_group>(init_rank(rank, size, id, device, deadline));
}

}  // namespace troupe
