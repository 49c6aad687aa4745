// The nccl transport where CUDA or NCCL was not found at configure time: every entry
// point says so (CMake builds this file instead of nccl.cpp).
#include "runtime/check.hpp"
#include "transport/nccl/nccl.hpp"

namespace troupe {

namespace {

[[noreturn]] void not_built() {
  throw input_error(
      "the nccl transport is not built: CUDA (/usr/local/cuda) and NCCL were not found when this build was configured "
      "(or TROUPE_NCCL was OFF)");
}

}  // namespace

struct nccl_group::impl {};

bool nccl_available(std::string* why) {
  if (why) *why = "this build has no nccl transport (CUDA and NCCL were not found at configure time)";
  return false;
}
int cuda_device_count() { return 0; }

device_buffer::device_buffer(size_t, int) { not_built(); }
device_buffer::~device_buffer() = default;
void device_buffer::upload(const void*, size_t) { not_built(); }
void device_buffer::download(void*, size_t) const { not_built(); }

nccl_group::nccl_group(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
nccl_group::~nccl_group() = default;
int nccl_group::rank() const { not_built(); }
int nccl_group::size() const { not_built(); }
int nccl_group::device() const { not_built(); }
void nccl_group::all_reduce_sum(float*, size_t) { not_built(); }
void nccl_group::reduce_scatter_sum(const float*, float*, size_t) { not_built(); }
void nccl_group::all_gather(const void*, void*, size_t, dtype) { not_built(); }
void nccl_group::broadcast(void*, size_t, dtype, int) { not_built(); }
void nccl_group::barrier() { not_built(); }
void nccl_group::exchange(int, const void*, void*, size_t, dtype) { not_built(); }
void nccl_group::abort(const std::string&) {}

std::vector<std::unique_ptr<nccl_group>> make_nccl_threads(int) { not_built(); }
void destroy_nccl_threads(std::vector<std::unique_ptr<nccl_group>>& group) { group.clear(); }
std::unique_ptr<nccl_group> join_nccl_group(int, int, rendezvous&, const std::string&, int, std::chrono::milliseconds) {
  not_built();
}

}  // namespace troupe
