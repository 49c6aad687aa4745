#pragma once
// The nccl transport: collectives and point-to-point exchanges on device memory (CUDA),
// through NCCL. Unlike the host transports (inproc, tcp, shm, ucx) it is not a
// `communicator`: those take host pointers, and our collectives over them are written
// once over tagged sends and receives; NCCL works on device buffers, brings its own ring
// and tree algorithms (NVLink, InfiniBand, PCIe), and its sends block until the peer
// receives, so the host algorithms' send-then-receive steps would deadlock on it for
// large messages. Here each operation is one NCCL call (or one NCCL group for the
// exchange) on the group's own stream.
//
// Failure: every operation waits at most `deadline` for its stream (polling the
// communicator's asynchronous error as it waits); past it, or on an NCCL error, the
// communicator is aborted (ncclCommAbort) and transport_error says which operation of
// which rank gave up and why: a dead or hung peer is an error, never a hang.
//
// Built where CUDA and NCCL are found at configure time (TROUPE_HAVE_NCCL); elsewhere every
// entry point throws input_error saying so. Tested where a GPU is: rank r of a group of
// threads runs on device r, so a group needs as many devices as ranks.
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"
#include "transport/communicator.hpp"
#include "transport/rendezvous.hpp"

namespace troupe {

// True when this build has the nccl transport and a CUDA device is visible; otherwise
// false, with why not in *why.
bool nccl_available(std::string* why);
// Visible CUDA devices: 0 without the build, a driver or a GPU.
int cuda_device_count();

// Device memory on one device, for the callers of nccl_group that have no CUDA headers
// (tests, benchmarks).
class device_buffer {
 public:
  device_buffer(size_t bytes, int device);
  ~device_buffer();
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

class nccl_group {
 public:
  struct impl;
  explicit nccl_group(std::unique_ptr<impl> p);
  ~nccl_group();
  nccl_group(const nccl_group&) = delete;
  nccl_group& operator=(const nccl_group&) = delete;
  int rank() const;
  int size() const;
  int device() const;
  // All pointers are device memory on device(). Reductions are over f32.
  void all_reduce_sum(float* data, size_t count);                             // in place
  void reduce_scatter_sum(const float* in, float* out, size_t count_per_rank);  // in: size() * count_per_rank
  void all_gather(const void* in, void* out, size_t count_per_rank, dtype type);  // out: size() * count_per_rank
  void broadcast(void* data, size_t count, dtype type, int root);
  void barrier();
  // Sends `count` elements to `peer` and receives as many from it, as one NCCL group (so
  // neither end's send can wait on the other's).
  void exchange(int peer, const void* send, void* recv, size_t count, dtype type);
  // Asks for the communicator to be aborted, from any thread: the operation in flight (on
  // the group's own thread) and every later one fail with `why`.
  void abort(const std::string& why);
  std::chrono::milliseconds deadline{30000};

 private:
  std::unique_ptr<impl> impl_;
};

// A group of `size` ranks as threads of this process, rank r on device r
// (ncclCommInitAll); each rank's operations must come from its own thread.
// transport_error when there are fewer devices than ranks.
std::vector<std::unique_ptr<nccl_group>> make_nccl_threads(int size);
// Ends such a group: every rank's communicator at once, each on a thread of its own
// (ending one may wait for its peers). Leaves `group` empty.
void destroy_nccl_threads(std::vector<std::unique_ptr<nccl_group>>& group);

// This process's member `rank` of a group of `size` processes, on `device`: rank 0 makes
// the NCCL unique id and puts it in the store under `key`, the others take it from there.
std::unique_ptr<nccl_group> join_nccl_group(int rank, int size, rendezvous& store, const std::string& key, int device,
                                            std::chrono::milliseconds deadline);

}  // namespace troupe
