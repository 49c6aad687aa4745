#pragma once
// Gradient averaging that overlaps backward: the compute reports ranges of a flat buffer
// as their values become final (last layers first, as backward runs); ranges are grouped
// into buckets of about `bucket_elems` elements in the order they are reported, and a
// communication thread averages each full bucket over the group (ring all-reduce, then
// 1/size) while the compute thread goes on with earlier layers. finish() sends the last
// partial bucket and waits for all of them, running what is still queued itself (buckets
// run one at a time, in order, on whichever of the two threads takes them).
//
// Every rank must report the same ranges in the same order (they run the same model and
// schedule), so every rank forms the same buckets and their all-reduces pair up. A step
// whose compute reports nothing is averaged whole in finish(), as without buckets.
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "transport/communicator.hpp"

namespace troupe {

class bucketed_allreduce {
 public:
  // A finished bucket: its ranges and when its all-reduce ran (steady clock seconds).
  using span_fn = std::function<void(int bucket, int64_t step, size_t elements, double start_s, double end_s)>;

  bucketed_allreduce(std::shared_ptr<communicator> group, float* data, size_t count, size_t bucket_elems,
                     span_fn on_span = {});
  ~bucketed_allreduce();
  bucketed_allreduce(const bucketed_allreduce&) = delete;
  bucketed_allreduce& operator=(const bucketed_allreduce&) = delete;

  // Starts a step; `tag` keeps its all-reduces apart from other steps' (the step uses
  // tags tag .. tag + 2 * ranges it all-reduces).
  void begin_step(int64_t step, uint64_t tag);
  // [begin, end) of the buffer holds its final values for this step. The call that
  // completes the buffer also sends the last, partial bucket.
  void ready(size_t begin, size_t end);
  // The step's compute is done: if it reported nothing, sends the whole buffer as one
  // bucket. Never waits, so a thread shared by several members can call it for each of
  // them before any of them waits (finish() calls it if nobody did).
  void flush();
  // Waits until every bucket is averaged. Throws transport_error (or what the all-reduce
  // threw) if any failed, and logic_error if the compute reported only part of the buffer.
  void finish();
  size_t buckets_last_step() const { return buckets_last_step_; }

 private:
  using ranges = std::vector<std::pair<size_t, size_t>>;
  struct job;
  void enqueue(ranges r);
  void run();
  void run_job(const job& j);

  std::shared_ptr<communicator> group_;
  float* data_;
  size_t count_, bucket_elems_;
  span_fn on_span_;
  // Owned by the calling (compute) thread.
  ranges open_;
  size_t open_elems_ = 0, covered_ = 0, buckets_last_step_ = 0;
  bool flushed_ = false;
  int next_bucket_ = 0;
  uint64_t next_tag_ = 0;
  int64_t step_ = 0;
  // Shared with the communication thread.
  struct job {
    int bucket = 0;
    int64_t step = 0;
    uint64_t tag = 0;  // range k uses tags tag + 2k and tag + 2k + 1
    ranges parts;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<job> queue_;
  int done_ = 0;  // buckets finished this step
  std::exception_ptr error_;
  bool stop_ = false;
  bool running_ = false;  // a bucket's all-reduce is under way
  std::thread thread_;
};

}  // namespace troupe
