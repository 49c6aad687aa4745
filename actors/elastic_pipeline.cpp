#include "actors/elastic_pipeline.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "actors/elastic_job.hpp"  // elastic_key
#include "actors/messages.hpp"
#include "policies/elastic_membership.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/progress.hpp"
#include "runtime/stage_snapshots.hpp"
#include "runtime/threads.hpp"
#include "runtime/trace.hpp"  // steady_now_s
#include "transport/collectives.hpp"
#include "transport/transports.hpp"

namespace troupe {

namespace {

constexpr uint64_t kViewGroups = uint64_t(1) << 20;
// Control-group tags of the state exchange, far above the step losses' (step * 4).
constexpr uint64_t kSyncTags = uint64_t(1) << 50;
// Control-group tags of the per-step "is there a newer view" sum (a pipeline that may grow).
constexpr uint64_t kGrowTags = uint64_t(1) << 48;
constexpr int kLocalDepth = 3, kStandbyDepth = 2;

// A stage's state between processes: a small header (a shard of its texts and of each
// tensor's type and shape, checksummed), then each tensor's bytes as they are: no copy
// into one buffer and no checksum pass over megabytes, on a link that is authenticated
// and reliable. Tags tag .. tag + 63.
void send_state(communicator& link, int peer, uint64_t tag, const checkpoint_shard& s) {
  checkpoint_shard head;
  head.texts = s.texts;
  for (const auto& [name, t] : s.tensors) {
    std::string desc = std::to_string(int(t.type()));
    for (int64_t d : t.shape()) desc += " " + std::to_string(d);
    head.texts["tensor:" + name] = desc;
  }
  if (s.tensors.size() > 60) throw std::logic_error("a stage state of " + std::to_string(s.tensors.size()) + " tensors");
  const std::vector<uint8_t> bytes = encode_shard(head);
  const int64_t size = int64_t(bytes.size());
  link.send(peer, tag, &size, 2, dtype::i32);
  link.send(peer, tag + 1, bytes.data(), bytes.size(), dtype::u8);
  uint64_t k = tag + 2;
  for (const auto& [name, t] : s.tensors) link.send(peer, k++, t.raw(), t.bytes(), dtype::u8);
}

checkpoint_shard recv_state(communicator& link, int peer, uint64_t tag) {
  int64_t size = 0;
  link.recv(peer, tag, &size, 2, dtype::i32);
  if (size < 0 || size > (int64_t(1) << 30)) throw transport_error("a stage state's header of " + std::to_string(size) + " bytes");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  link.recv(peer, tag + 1, bytes.data(), bytes.size(), dtype::u8);
  checkpoint_shard head = parse_shard(bytes.data(), bytes.size(), "a stage state's header from a peer");
  checkpoint_shard s;
  uint64_t k = tag + 2;
  for (const auto& [key, desc] : head.texts) {
    if (key.rfind("tensor:", 0) != 0) {
      s.texts[key] = desc;
      continue;
    }
    std::istringstream in(desc);
    int type = -1;
    in >> type;
    shape_t shape;
    for (int64_t d; in >> d;) shape.push_back(d);
    if (type < 0 || type > int(dtype::u8) || shape.empty() || k >= tag + 62)
      throw transport_error("a stage state's tensor " + key.substr(7) + " described as '" + desc + "'");
    tensor t = tensor::empty(shape, dtype(type));
    link.recv(peer, k++, t.raw(), t.bytes(), dtype::u8);  // in name order, as sent
    s.tensors.emplace(key.substr(7), std::move(t));
  }
  return s;
}

// The standby ring of one view, where no other process holds a place's stages (split
// world_r == 1): place k keeps a standby copy of place k-1's stages, stage_model objects
// of its own. When the view starts at a step T > 0, each process sends the next place its
// stages' state at T (at T = 0 both have the seed's). Then, every step, each local stage's
// final gradients go to the next place from its device (before the sum over the pipe,
// on_grads), the receiver acknowledges each as it arrives, and the process waits for the
// acknowledgements before its gradient sum (before_update), so no stage takes step t's
// optimizer step before every standby has step t's gradients. Each receiver replays the
// step on its copy with the totals, clip scale and lr its own coordinator decided
// (after_sum), which are every process's: the same arithmetic on the same numbers, so
// the copy holds the stage's bits after every step the others took. When the view ends
// (done or failed), the copies' states go into `held` for the next view's exchange.
class standby_ring {
 public:
  standby_ring(std::shared_ptr<communicator> ring, const proto::JobSpec& spec, const pipeline_options& popts,
               std::vector<int> mine, std::vector<int> theirs, int64_t first_step,
               const std::map<int, checkpoint_shard>& start, std::shared_ptr<stage_snapshots> held)
      : ring_(std::move(ring)), mine_(std::move(mine)), theirs_(std::move(theirs)), first_(first_step),
        held_(std::move(held)) {
    for (int s : theirs_) copies_[s] = build_stage_model(spec, popts, s);
    done_ = first_ > 0 ? -1 : 0;  // at T > 0 the copies hold nothing until the state has come
    // Liveness is the links' heartbeats: a receive waits as long as a step or a view's
    // setup takes, not the default deadline.
    ring_->deadline = std::chrono::hours(24);
    receiver_ = std::thread([this] { recv_loop(); });
    try {
      if (first_ > 0) {
        const int next = (ring_->rank() + 1) % ring_->size();
        for (size_t i = 0; i < mine_.size(); ++i) {
          auto it = start.find(mine_[i]);
          if (it == start.end())
            throw std::logic_error("standby: no state of stage " + std::to_string(mine_[i]) + " to start from");
          send_state(*ring_, next, kStateTags + 64 * i, it->second);
        }
      }
    } catch (...) {
      stop();
      throw;
    }
  }
  ~standby_ring() {
    stop();
    // The copies, as far as they got, for the next view (none that never got its state).
    try {
      if (done_ >= 0)
        for (auto& [s, copy] : copies_) {
          checkpoint_shard state;
          copy->save_state(state);
          held_->put(0, s, done_, std::move(state));
        }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe: standby copies lost: %s\n", e.what());
    }
  }
  // For each local stage's device: sends its final gradients of a step. It holds the
  // link, not the ring, since a device may still be in a send as a failed view's ring goes.
  std::function<void(int, int64_t, const tensor&)> grad_sender() const {
    return [ring = ring_, mine = mine_, first = first_](int stage, int64_t step, const tensor& g) {
      const int next = (ring->rank() + 1) % ring->size();
      ring->send(next, kGradTags + tag_of(step, first, index_of(mine, stage)), g.raw(), g.bytes(), dtype::u8);
    };
  }
  // For the coordinator, before the sum over the pipe: waits until the next place has every
  // local stage's gradients of the step.
  std::function<void(int64_t)> ack_waiter() const {
    return [ring = ring_, n = mine_.size(), first = first_](int64_t step) {
      const int next = (ring->rank() + 1) % ring->size();
      for (size_t i = 0; i < n; ++i) {
        int64_t ack = -1;
        ring->recv(next, kAckTags + tag_of(step, first, int(i)), &ack, 2, dtype::i32);
      }
    };
  }
  // On the coordinator: what every stage's optimizer step of `step` takes.
  void decided(int64_t step, const std::vector<std::string>& shared, const std::vector<tensor>& totals, float scale,
               float lr) {
    // The totals by reference: the coordinator makes fresh ones every step and never
    // writes these again once it has decided.
    update u{shared, totals, scale, lr};
    {
      std::lock_guard<std::mutex> lock(mu_);
      updates_[step] = std::move(u);
    }
    cv_.notify_all();
  }

 private:
  static constexpr uint64_t kStateTags = 0, kGradTags = uint64_t(1) << 40, kAckTags = uint64_t(1) << 41;
  struct update {
    std::vector<std::string> shared;
    std::vector<tensor> totals;
    float scale = 1, lr = 0;
  };
  static uint64_t tag_of(int64_t step, int64_t first, int index) { return uint64_t(step - first) * 64 + uint64_t(index); }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    ring_->abort("the view is over");
    if (receiver_.joinable()) receiver_.join();
  }
  static int index_of(const std::vector<int>& v, int x) {
    const auto it = std::find(v.begin(), v.end(), x);
    if (it == v.end()) throw std::logic_error("standby: stage " + std::to_string(x) + " is not this ring's");
    return int(it - v.begin());
  }

  void recv_loop() {
    // The copies' optimizer steps on this thread alone: an OpenMP team of its own (all
    // cores, by default) would spin against the stages' compute threads (measured: the
    // 2-stage GPT's step 123 ms with it, against 101 ms without a standby).
    set_compute_threads(1);
    const int prev = (ring_->rank() + ring_->size() - 1) % ring_->size();
    try {
      if (first_ > 0) {
        for (size_t i = 0; i < theirs_.size(); ++i)
          copies_.at(theirs_[i])->load_state(recv_state(*ring_, prev, kStateTags + 64 * i),
                                             "the standby state of stage " + std::to_string(theirs_[i]));
        std::lock_guard<std::mutex> lock(mu_);
        done_ = first_;
      }
      for (int64_t t = first_;; ++t) {
        for (size_t i = 0; i < theirs_.size(); ++i) {
          tensor g = copies_.at(theirs_[i])->flat_grads();
          ring_->recv(prev, kGradTags + tag_of(t, first_, int(i)), g.raw(), g.bytes(), dtype::u8);
          ring_->send(prev, kAckTags + tag_of(t, first_, int(i)), &t, 2, dtype::i32);
        }
        update u;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return stop_ || updates_.count(t); });
          if (!updates_.count(t)) return;  // the view ended before anyone took step t
          u = std::move(updates_.at(t));
          updates_.erase(t);
        }
        for (int s : theirs_) copies_.at(s)->apply_update(u.shared, u.totals, u.scale, u.lr);
        std::lock_guard<std::mutex> lock(mu_);
        done_ = t + 1;
      }
    } catch (const std::exception& e) {
      // The view is failing or over; the copies stay where the last whole step left them.
      // Anything else fails the view at once (the previous place waits for acknowledgements).
      bool stopping = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stop_;
      }
      if (!stopping) ring_->abort(std::string("the standby failed: ") + e.what());
    }
  }

  std::shared_ptr<communicator> ring_;
  std::vector<int> mine_, theirs_;  // this place's stages, and the previous place's
  int64_t first_;
  std::shared_ptr<stage_snapshots> held_;
  std::map<int, std::unique_ptr<stage_model>> copies_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::map<int64_t, update> updates_;
  int64_t done_ = 0;  // the copies hold the state after this many steps
  std::thread receiver_;
};

// Checkpoints on disk (train.checkpoint_every): after each due step every place copies its
// stages' snapshot (phase 1, on its coordinator) and a thread of its own sends them to
// place 0, whose thread adds its own and hands the version to its checkpoint_writer
// (phase 2) once it has every stage. No host needs the checkpoint directory but place 0's.
class checkpoint_collector {
 public:
  checkpoint_collector(std::shared_ptr<communicator> link, std::shared_ptr<stage_snapshots> mine,
                       std::function<std::vector<int>(int place)> stages_of, checkpoint_writer* writer)
      : link_(std::move(link)), mine_(std::move(mine)), stages_of_(std::move(stages_of)), writer_(writer) {
    thread_ = std::thread([this] { run(); });
  }
  ~checkpoint_collector() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    link_->abort("the view is over");
    thread_.join();
  }
  // On the coordinator, after step `steps_done` (a due one): the copies.
  void take(int64_t steps_done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (failed_) return;  // the link is gone: nothing would carry it
    }
    std::map<int, checkpoint_shard> copies;
    for (int s : stages_of_(link_->rank()))
      if (!mine_->copy_of_stage(s, steps_done, copies[s]))
        throw std::logic_error("checkpoint: stage " + std::to_string(s) + " has no snapshot of step " +
                               std::to_string(steps_done));
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.emplace_back(steps_done, std::move(copies));
    }
    cv_.notify_all();
  }
  // At the end of the view's run: waits until every version taken is sent (or, at place 0,
  // handed to the writer); false when the link failed first.
  bool drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return failed_ || (pending_.empty() && !busy_); });
    return !failed_;
  }

 private:
  static uint64_t tag_of(int64_t step, size_t index) { return (uint64_t(step) * 16 + index) * 64; }

  void run() {
    for (;;) {
      std::pair<int64_t, std::map<int, checkpoint_shard>> next;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
        if (pending_.empty()) return;
        next = std::move(pending_.front());
        pending_.pop_front();
        busy_ = true;
      }
      try {
        const int64_t step = next.first;
        if (link_->rank() != 0) {
          size_t i = 0;
          for (auto& [s, state] : next.second) send_state(*link_, 0, tag_of(step, i++), state);
        } else {
          std::map<std::string, checkpoint_shard> shards;
          for (auto& [s, state] : next.second) shards["stage-" + std::to_string(s)] = std::move(state);
          for (int k = 1; k < link_->size(); ++k) {
            size_t i = 0;
            for (int s : stages_of_(k)) shards["stage-" + std::to_string(s)] = recv_state(*link_, k, tag_of(step, i++));
          }
          for (auto& [name, shard] : shards) shard.texts.erase("stage");
          writer_->submit(step, std::move(shards));
        }
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!stop_) std::fprintf(stderr, "troupe: a checkpoint was not collected: %s\n", e.what());
        failed_ = true;
        busy_ = false;
        cv_.notify_all();
        return;
      }
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      cv_.notify_all();
    }
  }

  std::shared_ptr<communicator> link_;
  std::shared_ptr<stage_snapshots> mine_;
  std::function<std::vector<int>(int place)> stages_of_;
  checkpoint_writer* writer_;  // place 0's
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, failed_ = false, busy_ = false;
  std::deque<std::pair<int64_t, std::map<int, checkpoint_shard>>> pending_;
  std::thread thread_;
};

struct member_system_config : caf::actor_system_config {
  member_system_config() { register_message_types(*this); }
};

class pipeline_member {
 public:
  pipeline_member(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, const coordinator_options& opts)
      : spec_(spec),
        data_(std::move(data)),
        opts_(opts),
        steps_(total_steps(spec_, *data_)),
        P_(int(spec_.parallel().stages())),
        R_(int(spec_.parallel().replicas())),
        sp_(split_processes(opts_.world, R_, P_)),
        world_(opts_.world),
        mine_(std::make_shared<stage_snapshots>(1, kLocalDepth)),
        held_(std::make_shared<stage_snapshots>(1, kStandbyDepth)) {
    base_ = process_link_options(opts_);
    store_ = process_store(opts_, base_, server_);
    me_ = opts_.rank;
  }

  job_outcome run() {
    const auto t0 = std::chrono::steady_clock::now();
    member_system_config cfg;
    caf::actor_system sys{cfg};
    elastic_view view;
    bool fresh = opts_.elastic_join;
    if (fresh) {
      view = wait_for_place();
    } else {
      for (int k = 0; k < opts_.world; ++k) view.members.push_back(k);
    }
    int64_t tried_from = -1;
    int tries = 0;
    for (;;) {
      place_ = view.index_of(me_);
      if (place_ < 0)
        throw std::runtime_error("process " + std::to_string(me_) + " is not in view " +
                                 std::to_string(view.generation) + " (" + view.encode() + ")");
      bool training = false;  // past the links and the state exchange
      // A view of fewer processes (elastic.respawn false: nobody replaces the lost) cuts the
      // pipeline anew over those left: each place may hold other stages now.
      world_ = int(view.members.size());
      confirmed_ = false;
      try {
        sp_ = split_processes(world_, R_, P_);
      } catch (const input_error& e) {
        throw std::runtime_error("the pipeline cannot be cut over the " + std::to_string(world_) + " processes left: " +
                                 e.what());
      }
      try {
        pipeline_options popts = pipeline_options::from(spec_);
        coordinator_options o = opts_;
        o.rank = place_;
        o.world = world_;
        o.group = opts_.group + uint64_t(view.generation + 1) * kViewGroups;
        // A view after a failure forms among processes that are all up and ready: one
        // that takes long has lost another member, and a newer view will come.
        joined links = join_processes(spec_, o, popts, view.generation > 0,
                                      view.generation > 0 ? std::chrono::milliseconds(5000) : std::chrono::milliseconds(0));
        sync_state(*links.control, view, fresh);
        if (fresh) {
          store_->set(elastic_key(opts_.group, "joined/" + std::to_string(me_)), std::to_string(view.generation));
          fresh = false;
        }
        if (tried_from != first_step_) tried_from = first_step_, tries = 0;
        popts.first_step = first_step_;
        popts.initial = initial_;
        popts.snapshots = mine_;
        std::unique_ptr<checkpoint_collector> collector;
        const int every = int(spec_.train().checkpoint_every());
        if (every > 0) {
          if (place_ == 0 && !writer_)
            writer_ = std::make_unique<checkpoint_writer>(spec_.train().checkpoint_dir(),
                                                          int(spec_.train().checkpoint_keep()));
          tcp_options c = base_;
          c.group = o.group + 3 + uint64_t(P_) + uint64_t(R_);
          collector = std::make_unique<checkpoint_collector>(
              join_group(spec_.parallel().transport(), place_, world_, *store_, c), mine_,
              [this](int k) { return stages_of(k); }, writer_.get());
        }
        // A pipeline cut over fewer processes grows again when a node joins: place 0 looks
        // for a newer view after every step and says so in a small all-reduce, so every
        // process leaves the view after the same step (all hold its snapshots: nothing lost).
        const bool may_grow = !spec_.elastic().respawn() && spec_.elastic().mode() == "respawn";
        popts.on_step = [this, col = collector.get(), every, may_grow, control = links.control,
                         g = view.generation](int64_t done) {
          done_ = done;
          if (col && done % every == 0) col->take(done);
          if (!may_grow) return;
          if (place_ == 0 && !confirmed_) {
            try {  // the coordinator grows a view only once it has trained a step
              store_->set(elastic_key(opts_.group, "at/" + std::to_string(g)), std::to_string(done));
              confirmed_ = true;
            } catch (const std::exception&) {
            }
          }
          float newest = place_ == 0 ? float(std::max<int64_t>(latest(), g)) : 0.f;
          allreduce_sum(*control, &newest, 1, kGrowTags + uint64_t(done) * kTagsPerCollective);
          if (int64_t(newest) > g && done < steps_) {
            switch_to_ = int64_t(newest);
            throw std::runtime_error("view " + std::to_string(switch_to_) + " takes over after step " + std::to_string(done));
          }
        };
        std::unique_ptr<standby_ring> standby;
        if (sp_.world_r == 1 && world_ > 1) {
          // No other process holds these stages: the next place keeps a standby copy.
          tcp_options ring = base_;
          ring.group = o.group + 2 + uint64_t(P_) + uint64_t(R_);
          const int prev = (place_ + world_ - 1) % world_;
          standby = std::make_unique<standby_ring>(
              join_group(spec_.parallel().transport(), place_, world_, *store_, ring), spec_, popts,
              stages_of(place_), stages_of(prev), first_step_, initial_, held_);
          standby_ring* sb = standby.get();  // the coordinator has stopped once the run returns
          popts.on_grads = standby->grad_sender();
          popts.before_update = standby->ack_waiter();
          popts.after_sum = [sb](int64_t step, const std::vector<std::string>& shared, const std::vector<tensor>& totals,
                                 float scale, float lr) { sb->decided(step, shared, totals, scale, lr); };
        }
        if (place_ == 0) ensure_progress();
        training = true;
        pipeline_outcome po = run_pipeline_training(sys, spec_, popts, steps_, place_ == 0 ? progress_.get() : nullptr);
        if (collector && !collector->drain())
          std::fprintf(stderr, "troupe: process %d: the last checkpoints did not all reach place 0\n", me_);
        collector.reset();
        standby.reset();
        return finish(po, t0, view);
      } catch (const input_error&) {
        throw;  // the job itself is wrong: no view cures it
      } catch (const std::exception& e) {
        if (switch_to_ > view.generation) {  // a planned change, at a step boundary
          view = view_at(switch_to_);
          planned_ = true;
          continue;
        }
        if (spec_.elastic().mode() == "restart_all") throw;  // the launcher restarts every process
        // A view that fails as it forms (another member is gone too) is no fault of the job.
        if (training && ++tries >= 3)
          throw std::runtime_error("the pipeline failed 3 times running from step " + std::to_string(first_step_) +
                                   ", the last time with: " + e.what());
        view = recover(view, e.what());
      }
    }
  }

 private:
  // The places' stages and replicas (split_processes).
  std::vector<int> stages_of(int place) const {
    const int LS = P_ / sp_.world_s, ks = place % sp_.world_s;
    std::vector<int> out;
    for (int s = ks * LS; s < (ks + 1) * LS; ++s) out.push_back(s);
    return out;
  }
  int first_replica_of(int place) const { return place / sp_.world_s * (R_ / sp_.world_r); }

  void ensure_progress() {
    if (!progress_) progress_ = std::make_unique<progress_log>(spec_, steps_, opts_.display());
  }

  int64_t latest() {
    try {
      return std::stoll(store_->get(elastic_key(opts_.group, "latest"), std::chrono::milliseconds(1)));
    } catch (const std::exception&) {
      return -1;
    }
  }

  elastic_view view_at(int64_t g) {
    return elastic_view::decode(store_->get(elastic_key(opts_.group, "view/" + std::to_string(g)), base_.connect_deadline));
  }

  // A replacement or a spare: ready now; it waits for the view that gives it a place, as
  // long as the job runs (the coordinator stops it, status 0, when the job ends).
  elastic_view wait_for_place() {
    store_->set(elastic_key(opts_.group, "ready/" + std::to_string(me_)), std::to_string(::getpid()));
    int64_t tried = -1;
    for (;;) {
      const int64_t g = latest();
      if (g > tried) {
        tried = g;
        elastic_view v = view_at(g);
        if (v.index_of(me_) >= 0) return v;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  // The pipeline failed: say so, wait for the coordinator's next view.
  elastic_view recover(const elastic_view& failed, const std::string& why) {
    std::fprintf(stderr, "troupe: process %d (place %d): view %lld failed after step %lld (%s); waiting for the next view\n",
                 me_, place_, (long long)failed.generation, (long long)done_.load(), why.c_str());
    try {
      store_->set(elastic_key(opts_.group, "failed/" + std::to_string(failed.generation)), std::to_string(me_));
    } catch (const std::exception&) {
    }
    const auto wait = 2 * base_.silence + std::chrono::seconds(30);
    const auto until = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < until) {
      const int64_t g = latest();
      if (g > failed.generation) return view_at(g);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    throw std::runtime_error("process " + std::to_string(me_) + ": no new view of the job came within " +
                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(wait).count()) +
                             " s of a failure (is the launcher gone, or out of replacements?)");
  }

  // Which step the view starts from, and every local stage's state there (see the header).
  void sync_state(communicator& control, const elastic_view& view, bool fresh) {
    // "done D; s:a,b; s:c ..." : steps done, then per stage the steps this place can give.
    std::map<int, std::set<int64_t>> have;
    // A checkpoint on disk (one this run wrote, or the one it was started from) holds
    // every stage too: the last resort before step 0.
    disk_ = opts_.resume_from;
    std::error_code ec;
    if (!disk_ && spec_.train().checkpoint_every() > 0 &&
        std::filesystem::is_directory(spec_.train().checkpoint_dir(), ec)) {
      auto v = std::make_shared<checkpoint_version>(load_latest_checkpoint(spec_.train().checkpoint_dir()));
      if (v->step > 0) disk_ = v;
    }
    if (disk_)
      for (int s = 0; s < P_; ++s)
        if (disk_->shards.count("stage-" + std::to_string(s))) have[s].insert(disk_->step);
    if (!fresh) {
      for (int s = 0; s < P_; ++s)  // its stages in the view before, which may differ from this one's
        for (int64_t t : mine_->steps_of_stage(s)) have[s].insert(t);
      for (int s = 0; s < P_; ++s)
        for (int64_t t : held_->steps(0, s)) have[s].insert(t);
    }
    std::ostringstream mine;
    mine << (fresh ? -1 : done_.load());
    for (const auto& [s, steps] : have) {
      mine << ' ' << s << ':';
      for (int64_t t : steps) mine << t << ',';
    }
    const std::vector<std::string> texts = all_gather_text(control, mine.str(), kSyncTags);
    std::vector<std::map<int, std::set<int64_t>>> holds(texts.size());
    int64_t most_done = -1;
    for (size_t k = 0; k < texts.size(); ++k) {
      std::istringstream in(texts[k]);
      int64_t done = -1;
      in >> done;
      most_done = std::max(most_done, done);
      for (std::string item; in >> item;) {
        const size_t colon = item.find(':');
        if (colon == std::string::npos) throw transport_error("elastic pipeline: a peer's holdings read '" + item + "'");
        const int s = std::stoi(item.substr(0, colon));
        std::istringstream steps(item.substr(colon + 1));
        for (std::string t; std::getline(steps, t, ',');)
          if (!t.empty()) holds[k][s].insert(std::stoll(t));
      }
    }
    // The newest step every stage has somewhere (0: the seed's initial state, everywhere).
    int64_t T = 0;
    std::set<int64_t> candidates;
    for (const auto& h : holds)
      for (const auto& [s, steps] : h) candidates.insert(steps.begin(), steps.end());
    for (auto it = candidates.rbegin(); it != candidates.rend(); ++it) {
      bool everywhere = true;
      for (int s = 0; s < P_ && everywhere; ++s)
        everywhere = std::any_of(holds.begin(), holds.end(), [&](const auto& h) {
          auto f = h.find(s);
          return f != h.end() && f->second.count(*it);
        });
      if (everywhere) {
        T = *it;
        break;
      }
    }
    auto holder = [&](int s) {
      for (size_t k = 0; k < holds.size(); ++k)
        if (auto f = holds[k].find(s); f != holds[k].end() && f->second.count(T)) return int(k);
      return -1;
    };
    initial_.clear();
    int64_t streamed = 0;
    if (T > 0) {
      // Every place's stages, in one order everywhere: each transfer's two ends reach it
      // together, so no two processes wait on each other.
      uint64_t tag = kSyncTags;
      for (int k = 0; k < int(holds.size()); ++k)
        for (int s : stages_of(k)) {
          const bool own = holds[size_t(k)].count(s) && holds[size_t(k)].at(s).count(T);
          const int from = own ? k : holder(s);
          tag += 64;  // send_state's span
          if (k == place_ && own) {
            initial_[s] = local_state(s, T);
          } else if (!own && from == place_) {
            const checkpoint_shard state = local_state(s, T);
            send_state(control, k, tag, state);
            for (const auto& [name, t] : state.tensors) streamed += int64_t(t.bytes());
          } else if (!own && k == place_) {
            initial_[s] = recv_state(control, from, tag);
          }
        }
    }
    float moved = float(streamed) / 1e3f;
    allreduce_sum(control, &moved, 1, kSyncTags - 64);
    streamed = int64_t(double(moved) * 1e3);
    // What comes after T never happened: forget it; T's states are the newest held.
    mine_->drop_after(T);
    held_->drop_after(T);
    for (const auto& [s, state] : initial_) {
      const std::vector<int64_t> held = mine_->steps(first_replica_of(place_), s);
      if (held.empty() || held.back() != T) mine_->put(first_replica_of(place_), s, T, state);
    }
    first_step_ = T;
    done_ = T;
    if (view.generation > 0) {
      // Unknown (-1) when no process of the last view is left to say how far it got; none
      // when the view changed at a step boundary.
      const int64_t lost = planned_ && T == most_done ? 0 : most_done < 0 ? -1 : std::max<int64_t>(0, most_done + 1 - T);
      planned_ = false;
      steps_lost_ += std::max<int64_t>(0, lost);
      streamed_ += streamed;
      if (place_ == 0) {
        ensure_progress();
        char line[256];
        std::snprintf(line, sizeof line,
                      "{\"event\":\"view\",\"generation\":%lld,\"members\":%zu,\"step\":%lld,\"steps_lost\":%lld,"
                      "\"streamed_bytes\":%lld,\"t_mono\":%.6f}",
                      (long long)view.generation, view.members.size(), (long long)T, (long long)lost,
                      (long long)streamed, steady_now_s());
        progress_->record(line);
        if (!opts_.quiet) {
          const std::string what = lost < 0 ? std::string("every process was lost")
                                             : std::to_string(lost) + (lost == 1 ? " step lost" : " steps lost");
          std::printf("elastic:   view %lld goes on from step %lld (%s, %.1f MB of state streamed)\n",
                      (long long)view.generation, (long long)T, what.c_str(), double(streamed) / 1e6);
          std::fflush(stdout);
        }
      }
      if (most_done < 0 && place_ == 0)
        std::fprintf(stderr, "troupe: every process of the job was lost: it goes back to %s, step %lld\n",
                     disk_ && disk_->step == T && T > 0 ? "its newest checkpoint" : "the start", (long long)T);
      if (T < most_done && place_ == 0)
        std::fprintf(stderr, "troupe: no process holds every stage's state after step %lld (a stage's process and the "
                             "one keeping its standby were both lost): the job goes back to %s, step %lld\n",
                     (long long)most_done, disk_ && disk_->step == T ? "its newest checkpoint" : "the start",
                     (long long)T);
    }
  }

  // Stage s's state after step t from this process's memory: its own snapshot, or the
  // standby copy it holds of the previous place's.
  checkpoint_shard local_state(int s, int64_t t) {
    checkpoint_shard out;
    if (mine_->copy_of_stage(s, t, out) || held_->copy(0, s, t, out)) return out;
    if (disk_ && disk_->step == t && disk_->shards.count("stage-" + std::to_string(s)))
      return disk_->shards.at("stage-" + std::to_string(s));
    throw std::logic_error("elastic pipeline: stage " + std::to_string(s) + " after step " + std::to_string(t) +
                           " is not held here after all");
  }

  job_outcome finish(const pipeline_outcome& po, std::chrono::steady_clock::time_point t0, const elastic_view& view) {
    job_outcome out;
    out.steps = steps_;
    out.eval.loss = -1;
    if (place_ == 0) {
      if (writer_) writer_->flush();  // every checkpoint taken is on disk before the job reports its end
      evaluate_assembled(spec_, data_, po, *progress_, out);
      if (!opts_.quiet)
        std::printf("elastic:   %lld view%s, %zu processes at the end, %lld step%s lost to failures, %.1f MB of state "
                    "streamed to members\n",
                    (long long)view.generation + 1, view.generation == 0 ? "" : "s", view.members.size(), (long long)steps_lost_,
                    steps_lost_ == 1 ? "" : "s", double(streamed_) / 1e6);
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }

  const proto::JobSpec& spec_;
  std::shared_ptr<const training_data> data_;
  coordinator_options opts_;
  int64_t steps_;
  int P_, R_;
  split sp_;    // how the current view's processes split the job
  int world_;   // the current view's processes
  std::shared_ptr<stage_snapshots> mine_, held_;
  tcp_options base_;
  std::shared_ptr<tcp_store_server> server_;
  std::shared_ptr<rendezvous> store_;
  int32_t me_ = 0;
  int place_ = 0;
  int64_t first_step_ = 0;
  std::map<int, checkpoint_shard> initial_;
  std::atomic<int64_t> done_{0};
  int64_t steps_lost_ = 0, streamed_ = 0;
  std::unique_ptr<progress_log> progress_;
  std::unique_ptr<checkpoint_writer> writer_;  // place 0, with train.checkpoint_every
  std::shared_ptr<const checkpoint_version> disk_;  // the newest checkpoint this process can read
  bool confirmed_ = false;     // place 0 said the view has trained a step (at/<g>)
  int64_t switch_to_ = -1;     // the newer view this one leaves for, at a step boundary
  bool planned_ = false;       // the view now forming came at a step boundary
};

}  // namespace

job_outcome run_elastic_pipeline(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                                 const coordinator_options& opts) {
  if (opts.world < 2)
    throw input_error("elastic.mode \"respawn\": a pipeline in one process has no process to lose; run it with "
                      "troupe launch --nproc N");
  pipeline_member m(spec, std::move(data), opts);
  return m.run();
}

}  // namespace troupe
