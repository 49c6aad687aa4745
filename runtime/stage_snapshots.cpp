#include "runtime/stage_snapshots.hpp"

#include <algorithm>
#include <chrono>

#include "runtime/check.hpp"

namespace troupe {

stage_snapshots::stage_snapshots(int every, int depth) : every_(every), depth_(depth) {
  TROUPE_CHECK(every >= 0 && depth >= 1, "stage_snapshots: every ", every, ", depth ", depth);
}

stage_snapshots::held& stage_snapshots::entry(int replica, int stage) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto& h = held_[{replica, stage}];
  if (!h) h = std::make_unique<held>();
  return *h;
}

void stage_snapshots::take(int replica, int stage, int64_t steps_done, const stage_compute& c) {
  const auto t0 = std::chrono::steady_clock::now();
  held& h = entry(replica, stage);
  {
    std::lock_guard<std::mutex> lock(h.mu);
    std::pair<int64_t, checkpoint_shard> slot;
    if (int(h.slots.size()) >= depth_) {  // the oldest's buffers
      slot = std::move(h.slots.front());
      h.slots.erase(h.slots.begin());
    }
    slot.first = steps_done;
    c.save_state(slot.second);
    slot.second.texts["step"] = std::to_string(steps_done);
    h.slots.push_back(std::move(slot));
  }
  std::lock_guard<std::mutex> lock(mu_);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++taken_;
}

void stage_snapshots::put(int replica, int stage, int64_t steps_done, checkpoint_shard s) {
  held& h = entry(replica, stage);
  std::lock_guard<std::mutex> lock(h.mu);
  for (auto it = h.slots.begin(); it != h.slots.end();)
    it = it->first == steps_done ? h.slots.erase(it) : std::next(it);
  s.texts["step"] = std::to_string(steps_done);
  h.slots.emplace_back(steps_done, std::move(s));
  std::sort(h.slots.begin(), h.slots.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  while (int(h.slots.size()) > depth_) h.slots.erase(h.slots.begin());
}

bool stage_snapshots::copy(int replica, int stage, int64_t steps_done, checkpoint_shard& out) const {
  held& h = entry(replica, stage);
  std::lock_guard<std::mutex> lock(h.mu);
  for (const auto& [step, s] : h.slots) {
    if (step != steps_done) continue;
    for (const auto& [name, t] : s.tensors) copy_entry(out, name, t);
    for (auto it = out.tensors.begin(); it != out.tensors.end();)
      it = s.tensors.count(it->first) ? std::next(it) : out.tensors.erase(it);
    out.texts = s.texts;
    return true;
  }
  return false;
}

void stage_snapshots::drop_after(int64_t steps_done) {
  std::vector<held*> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, h] : held_) all.push_back(h.get());
  }
  for (held* h : all) {
    std::lock_guard<std::mutex> lock(h->mu);
    for (auto it = h->slots.begin(); it != h->slots.end();) it = it->first > steps_done ? h->slots.erase(it) : std::next(it);
  }
}

std::vector<int64_t> stage_snapshots::steps(int replica, int stage) const {
  held& h = entry(replica, stage);
  std::lock_guard<std::mutex> lock(h.mu);
  std::vector<int64_t> out;
  for (const auto& slot : h.slots) out.push_back(slot.first);
  return out;
}

std::vector<int64_t> stage_snapshots::steps_of_stage(int stage) const {
  std::vector<int> replicas;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, h] : held_)
      if (key.second == stage) replicas.push_back(key.first);
  }
  std::vector<int64_t> out;
  for (int r : replicas)
    for (int64_t t : steps(r, stage)) out.push_back(t);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool stage_snapshots::copy_of_stage(int stage, int64_t steps_done, checkpoint_shard& out) const {
  std::vector<int> replicas;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, h] : held_)
      if (key.second == stage) replicas.push_back(key.first);
  }
  for (int r : replicas)
    if (copy(r, stage, steps_done, out)) return true;
  return false;
}

double stage_snapshots::seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seconds_;
}

int64_t stage_snapshots::taken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return taken_;
}

}  // namespace troupe
