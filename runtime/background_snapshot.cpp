#include "runtime/background_snapshot.hpp"

#include <chrono>
#include <stdexcept>

namespace troupe {

using clock_type = std::chrono::steady_clock;

background_snapshot::background_snapshot() : thread_([this] { run(); }) {}

background_snapshot::~background_snapshot() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !pending_; });
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void background_snapshot::start(std::function<void()> copy) {
  settle();
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(copy);
    pending_ = true;
  }
  cv_.notify_all();
}

double background_snapshot::settle() {
  const auto t0 = clock_type::now();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !pending_; });
  const double waited = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  if (!error_.empty()) {
    std::string e = std::move(error_);
    error_.clear();
    throw std::runtime_error(e);
  }
  return waited;
}

double background_snapshot::last_copy_ms() const {
  std::lock_guard<std::mutex> lock(mu_);
  return copy_ms_;
}

void background_snapshot::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || pending_; });
    if (!pending_) return;  // stop_
    std::function<void()> job = std::move(job_);
    lock.unlock();
    std::string failed;
    const auto t0 = clock_type::now();
    try {
      job();
    } catch (const std::exception& e) {
      failed = e.what();
    }
    const double ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
    lock.lock();
    copy_ms_ = ms;
    if (!failed.empty() && error_.empty()) error_ = failed;
    pending_ = false;
    cv_.notify_all();
  }
}

}  // namespace troupe
