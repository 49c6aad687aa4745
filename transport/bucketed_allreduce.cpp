#include "transport/bucketed_allreduce.hpp"

#include <chrono>

#include "transport/collectives.hpp"

namespace troupe {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

bucketed_allreduce::bucketed_allreduce(std::shared_ptr<communicator> group, float* data, size_t count,
                                       size_t bucket_elems, span_fn on_span)
    : group_(std::move(group)), data_(data), count_(count), bucket_elems_(bucket_elems ? bucket_elems : 1),
      on_span_(std::move(on_span)), thread_([this] { run(); }) {}

bucketed_allreduce::~bucketed_allreduce() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void bucketed_allreduce::begin_step(int64_t step, uint64_t tag) {
  step_ = step;
  next_tag_ = tag;
  open_.clear();
  open_elems_ = covered_ = 0;
  next_bucket_ = 0;
  flushed_ = false;
  std::unique_lock<std::mutex> lock(mu_);
  // Whatever a failed step left queued must not count for this one.
  queue_.clear();
  cv_.wait(lock, [&] { return !running_; });
  done_ = 0;
  error_ = nullptr;
}

void bucketed_allreduce::ready(size_t begin, size_t end) {
  if (end > count_) end = count_;
  if (begin >= end) return;
  covered_ += end - begin;
  // Backward reports from the end of the buffer towards its start: join touching ranges.
  if (!open_.empty() && open_.back().first == end)
    open_.back().first = begin;
  else if (!open_.empty() && open_.back().second == begin)
    open_.back().second = end;
  else
    open_.push_back({begin, end});
  open_elems_ += end - begin;
  if (open_elems_ >= bucket_elems_ || covered_ >= count_) {
    enqueue(std::move(open_));
    open_.clear();
    open_elems_ = 0;
  }
}

void bucketed_allreduce::enqueue(ranges r) {
  job j{next_bucket_++, step_, next_tag_, std::move(r)};
  next_tag_ += 2 * j.parts.size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(j));
  }
  cv_.notify_all();
}

void bucketed_allreduce::flush() {
  if (flushed_) return;
  flushed_ = true;
  if (covered_ == 0) enqueue({{0, count_}});  // the compute reported nothing: the whole buffer at once
}

void bucketed_allreduce::finish() {
  flush();
  if (covered_ != 0 && covered_ != count_) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.clear();  // what was sent would pair with nothing sensible
    throw std::logic_error("bucketed all-reduce: the compute reported " + std::to_string(covered_) + " of " +
                           std::to_string(count_) + " gradient elements as final");
  }
  std::unique_lock<std::mutex> lock(mu_);
  // Buckets still queued are run on this thread, which would only wait otherwise: the
  // last bucket then costs no hand-over to the communication thread and back.
  for (;;) {
    cv_.wait(lock, [&] { return done_ == next_bucket_ || error_ || (!queue_.empty() && !running_); });
    if (done_ == next_bucket_ || error_) break;
    job j = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    lock.unlock();
    run_job(j);
    lock.lock();
  }
  buckets_last_step_ = size_t(next_bucket_);
  if (error_) {
    // Buckets behind the failed one are dropped: the step is lost anyway.
    queue_.clear();
    std::exception_ptr e = error_;
    lock.unlock();
    std::rethrow_exception(e);
  }
}

void bucketed_allreduce::run_job(const job& j) {
  double t0 = now_s();
  size_t elems = 0;
  try {
    for (size_t k = 0; k < j.parts.size(); ++k) {
      auto [b, e] = j.parts[k];
      ring_allreduce_mean(*group_, data_ + b, e - b, j.tag + 2 * k);
      elems += e - b;
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    running_ = false;
    cv_.notify_all();
    return;
  }
  if (on_span_) on_span_(j.bucket, j.step, elems, t0, now_s());
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++done_;
    running_ = false;
  }
  cv_.notify_all();
}

void bucketed_allreduce::run() {
  for (;;) {
    job j;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || (!queue_.empty() && !running_); });
      if (stop_) return;  // queued buckets are dropped: nobody waits for them any more
      j = std::move(queue_.front());
      queue_.pop_front();
      if (error_) continue;  // a failed step: nothing more to pair up with
      running_ = true;
    }
    run_job(j);
  }
}

}  // namespace troupe
