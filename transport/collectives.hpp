#pragma once
// Collectives written once over a communicator's point-to-point sends, so every transport
// gets all of them. Each algorithm's file opens with its steps and cost; docs/algorithms.md
// collects them. Every rank of the group must make the same calls in the same order with
// the same counts. `tag` keeps concurrent collectives apart: a collective uses the tags
// tag .. tag + kTagsPerCollective - 1. Reductions are sums of f32; every rank ends with
// the same bits (each element's sum is formed once, on one rank, in a fixed order, and
// copied to the others).
//
// Buffers are cut into `size` chunks: chunk c is [chunk_begin(count, n, c),
// chunk_begin(count, n, c + 1)), so rank r's chunk is the r-th n-th of the buffer.
#include <string>
#include <vector>

#include "transport/communicator.hpp"

namespace troupe {

constexpr uint64_t kTagsPerCollective = 4;

inline size_t chunk_begin(size_t count, int n, int c) { return count * size_t(c) / size_t(n); }

// In-place sum all-reduce, the algorithm chosen by size: recursive doubling up to
// kRecursiveDoublingMaxBytes (log2 n latency steps of the whole buffer: the tiny case),
// halving-doubling up to kHalvingDoublingMaxBytes (2 log2 n steps of shrinking pieces),
// the ring above (bandwidth-optimal).
constexpr size_t kRecursiveDoublingMaxBytes = size_t(8) << 10;
constexpr size_t kHalvingDoublingMaxBytes = size_t(64) << 10;
void allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag);

// Ring all-reduce (ring_allreduce.cpp). The mean is the sum times 1/size, with the same
// bits as the sum's times 1/size.
void ring_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag);
void ring_allreduce_mean(communicator& comm, float* data, size_t count, uint64_t tag);

// Halving-doubling all-reduce (halving_doubling.cpp): recursive-halving reduce-scatter,
// then recursive-doubling all-gather; sizes that are not powers of two fold the extra
// ranks in first and hand them the result last.
void halving_doubling_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag);

// Recursive-doubling all-reduce (recursive_doubling.cpp): log2 n rounds of swapping the
// whole buffer with a partner; extra ranks of a size that is not a power of two fold in.
void recursive_doubling_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag);

// Ring reduce-scatter, in place: afterwards rank r's chunk r holds the sum of every rank's
// chunk r (the other chunks hold partial sums: scratch).
void reduce_scatter_sum(communicator& comm, float* data, size_t count, uint64_t tag);

// Ring all-gather, in place: rank r's chunk r goes to every rank's chunk r. `count`
// elements of `type` in all.
void all_gather(communicator& comm, void* data, size_t count, dtype type, uint64_t tag);

// Every rank's string, in rank order, on every rank: the lengths, then the bytes padded to
// the longest, by two all-gathers (tags tag .. tag + 2 kTagsPerCollective - 1). For
// small control data (names, layouts), not tensors.
std::vector<std::string> all_gather_text(communicator& comm, const std::string& mine, uint64_t tag);

// Binomial-tree broadcast of `count` elements of `type` from `root` to every rank.
void broadcast(communicator& comm, void* data, size_t count, dtype type, int root, uint64_t tag);

// Dissemination barrier: returns on every rank only once every rank has entered it.
void barrier(communicator& comm, uint64_t tag);

}  // namespace troupe
