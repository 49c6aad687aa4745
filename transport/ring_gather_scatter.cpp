// Ring reduce-scatter and all-gather: the two halves of the ring all-reduce, each on its
// own. Reduce-scatter: in step k (k = 0..n-2) rank r sends chunk (r-k-1) mod n to rank r+1
// and adds the chunk (r-k-2) mod n it receives from rank r-1; after n-1 steps its chunk r
// holds the full sum. All-gather: in step k rank r sends chunk (r-k) mod n, which it has,
// and receives chunk (r-k-1) mod n. Each sends (n-1)/n of the buffer in n-1 latency steps
// (the bandwidth optimum for either). A chunk is not written after it is sent, so every
// send is waited for at the end only.
#include <algorithm>
#include <string>
#include <vector>

#include "transport/collectives.hpp"

namespace troupe {

namespace {
int mod(int x, int n) { return ((x % n) + n) % n; }
}  // namespace

void reduce_scatter_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  if (n == 1 || count == 0) return;
  auto at = [&](int c) { return data + chunk_begin(count, n, c); };
  auto len = [&](int c) { return chunk_begin(count, n, c + 1) - chunk_begin(count, n, c); };
  std::vector<send_handle> sent;
  for (int k = 0; k < n - 1; ++k) {
    const int send_c = mod(r - k - 1, n), recv_c = mod(r - k - 2, n);
    sent.push_back(comm.send_async(mod(r + 1, n), tag, at(send_c), len(send_c), dtype::f32));
    comm.recv_reduce_sum(mod(r - 1, n), tag, at(recv_c), len(recv_c));
  }
  for (auto& s : sent) s.wait();
}

void all_gather(communicator& comm, void* data, size_t count, dtype type, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  if (n == 1 || count == 0) return;
  const size_t width = dtype_size(type);
  auto at = [&](int c) { return static_cast<char*>(data) + chunk_begin(count, n, c) * width; };
  auto len = [&](int c) { return chunk_begin(count, n, c + 1) - chunk_begin(count, n, c); };
  std::vector<send_handle> sent;
  for (int k = 0; k < n - 1; ++k) {
    const int send_c = mod(r - k, n), recv_c = mod(r - k - 1, n);
    sent.push_back(comm.send_async(mod(r + 1, n), tag, at(send_c), len(send_c), type));
    comm.recv(mod(r - 1, n), tag, at(recv_c), len(recv_c), type);
  }
  for (auto& s : sent) s.wait();
}

std::vector<std::string> all_gather_text(communicator& comm, const std::string& mine, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  std::vector<int32_t> lengths(static_cast<size_t>(n), 0);  // chunk r of n elements is element r
  lengths[size_t(r)] = int32_t(mine.size());
  all_gather(comm, lengths.data(), size_t(n), dtype::i32, tag);
  size_t longest = 0;
  for (int32_t l : lengths) longest = std::max(longest, size_t(l));
  std::vector<char> bytes(longest * size_t(n), '\0');  // chunk r is bytes [r * longest, (r + 1) * longest)
  std::copy(mine.begin(), mine.end(), bytes.begin() + std::ptrdiff_t(size_t(r) * longest));
  all_gather(comm, bytes.data(), bytes.size(), dtype::u8, tag + kTagsPerCollective);
  std::vector<std::string> out;
  for (int q = 0; q < n; ++q)
    out.emplace_back(bytes.data() + size_t(q) * longest, size_t(lengths[size_t(q)]));
  return out;
}

}  // namespace troupe
