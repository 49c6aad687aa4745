#include "actors/elastic_pipeline.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
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
#include "runtime/trace.hpp"  // steady_now_s
#include "transport/collectives.hpp"
#include "transport/transports.hpp"

namespace troupe {

namespace {

constexpr uint64_t kViewGroups = uint64_t(1) << 20;
// Control-group tags of the state exchange, far above the step losses' (step * 4).
constexpr uint64_t kSyncTags = uint64_t(1) << 50;
constexpr int kLocalDepth = 3, kBuddyDepth = 2;

// The buddy ring of one view: this process's newest stage snapshots go to the next place's
// memory, the previous place's come in, each way on a thread of its own; the receiver
// acknowledges each once it is parsed and held. Training waits for a send only at the
// next step's gradient sum (wait_held), so a snapshot normally travels while the next
// step's passes run; a step offered while one is in flight is sent after it, the ones
// between are skipped.
class buddy_ring {
 public:
  buddy_ring(std::shared_ptr<communicator> ring, std::shared_ptr<stage_snapshots> mine,
             std::vector<std::pair<int, int>> local, std::shared_ptr<stage_snapshots> held)
      : ring_(std::move(ring)), mine_(std::move(mine)), local_(std::move(local)), held_(std::move(held)) {
    sender_ = std::thread([this] { send_loop(); });
    receiver_ = std::thread([this] { recv_loop(); });
  }
  ~buddy_ring() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    ring_->abort("the view is over");
    sender_.join();
    receiver_.join();
  }
  void offer(int64_t steps_done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      offered_ = std::max(offered_, steps_done);
    }
    cv_.notify_all();
  }
  // Returns once the buddy holds this process's snapshots of `steps_done` or a later step,
  // or the ring has failed (the view is failing: the pipeline will hear it too).
  void wait_held(int64_t steps_done) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stop_ || failed_ || held_at_ >= steps_done || offered_ < steps_done; });
  }
  int64_t bytes_sent() const { return bytes_.load(); }

 private:
  static constexpr uint64_t kAcks = uint64_t(1) << 40;  // the receiver's acknowledgements' tags

  // A snapshot as a small header (a shard of its texts and of each tensor's type and
  // shape, checksummed) and then each tensor's bytes as they are: no copy into one buffer
  // and no checksum pass over megabytes, on a link that is authenticated and reliable.
  void send_state(int peer, uint64_t tag, const checkpoint_shard& s) {
    checkpoint_shard head;
    head.texts = s.texts;
    for (const auto& [name, t] : s.tensors) {
      std::string desc = std::to_string(int(t.type()));
      for (int64_t d : t.shape()) desc += " " + std::to_string(d);
      head.texts["tensor:" + name] = desc;
    }
    if (s.tensors.size() > 60) throw std::logic_error("buddy: a snapshot of " + std::to_string(s.tensors.size()) + " tensors");
    const std::vector<uint8_t> bytes = encode_shard(head);
    const int64_t size = int64_t(bytes.size());
    ring_->send(peer, tag, &size, 2, dtype::i32);
    ring_->send(peer, tag + 1, bytes.data(), bytes.size(), dtype::u8);
    uint64_t k = tag + 2;
    for (const auto& [name, t] : s.tensors) ring_->send(peer, k++, t.raw(), t.bytes(), dtype::u8);
    bytes_ += size;
    for (const auto& [name, t] : s.tensors) bytes_ += int64_t(t.bytes());
  }
  checkpoint_shard recv_state(int peer, uint64_t tag) {
    int64_t size = 0;
    ring_->recv(peer, tag, &size, 2, dtype::i32);
    if (size < 0 || size > (int64_t(1) << 30)) throw transport_error("buddy: a header of " + std::to_string(size) + " bytes");
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    ring_->recv(peer, tag + 1, bytes.data(), bytes.size(), dtype::u8);
    checkpoint_shard head = parse_shard(bytes.data(), bytes.size(), "a buddy's snapshot header");
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
        throw transport_error("buddy: tensor " + key.substr(7) + " described as '" + desc + "'");
      tensor t = tensor::empty(shape, dtype(type));
      ring_->recv(peer, k++, t.raw(), t.bytes(), dtype::u8);  // in name order, as sent
      s.tensors.emplace(key.substr(7), std::move(t));
    }
    return s;
  }

  void send_loop() {
    const int next = (ring_->rank() + 1) % ring_->size();
    checkpoint_shard shard;
    uint64_t n = 0;
    int64_t sent = -1;
    for (;;) {
      int64_t step = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || offered_ > sent; });
        if (stop_) return;
        step = offered_;
      }
      try {
        for (const auto& [replica, stage] : local_) {
          if (!mine_->copy(replica, stage, step, shard)) continue;  // gone by now: a newer one follows
          shard.texts["stage"] = std::to_string(stage);
          send_state(next, 64 * n, shard);
          int64_t ack = -1;
          ring_->recv(next, kAcks + n, &ack, 2, dtype::i32);
          ++n;
        }
      } catch (const std::exception&) {
        std::lock_guard<std::mutex> lock(mu_);
        failed_ = true;  // the view is failing or over
        cv_.notify_all();
        return;
      }
      sent = step;
      std::lock_guard<std::mutex> lock(mu_);
      held_at_ = step;
      cv_.notify_all();
    }
  }
  void recv_loop() {
    const int prev = (ring_->rank() + ring_->size() - 1) % ring_->size();
    for (uint64_t n = 0;; ++n) {
      try {
        checkpoint_shard s = recv_state(prev, 64 * n);
        const int stage = int(checkpoint_count(s, "stage"));
        const int64_t step = checkpoint_count(s, "step");
        held_->put(0, stage, step, std::move(s));
        ring_->send(prev, kAcks + n, &step, 2, dtype::i32);
      } catch (const std::exception&) {
        return;
      }
    }
  }

  std::shared_ptr<communicator> ring_;
  std::shared_ptr<stage_snapshots> mine_;
  std::vector<std::pair<int, int>> local_;  // (replica, stage) of each local stage's snapshot
  std::shared_ptr<stage_snapshots> held_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, failed_ = false;
  int64_t offered_ = -1, held_at_ = -1;
  std::atomic<int64_t> bytes_{0};
  std::thread sender_, receiver_;
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
        mine_(std::make_shared<stage_snapshots>(1, kLocalDepth)),
        held_(std::make_shared<stage_snapshots>(1, kBuddyDepth)) {
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
      try {
        pipeline_options popts = pipeline_options::from(spec_);
        coordinator_options o = opts_;
        o.rank = place_;
        o.group = opts_.group + uint64_t(view.generation + 1) * kViewGroups;
        joined links = join_processes(spec_, o, popts, view.generation > 0);
        sync_state(*links.control, view, fresh);
        if (fresh) {
          store_->set(elastic_key(opts_.group, "joined/" + std::to_string(me_)), std::to_string(view.generation));
          fresh = false;
        }
        std::unique_ptr<buddy_ring> buddy;
        if (sp_.world_r == 1) {
          // No other process holds these stages: the next place keeps a copy.
          tcp_options ring = base_;
          ring.group = o.group + 2 + uint64_t(P_) + uint64_t(R_);
          std::vector<std::pair<int, int>> local;
          for (int s : stages_of(place_)) local.push_back({first_replica_of(place_), s});
          buddy = std::make_unique<buddy_ring>(join_group(spec_.parallel().transport(), place_, opts_.world, *store_, ring),
                                               mine_, local, held_);
        }
        if (tried_from != first_step_) tried_from = first_step_, tries = 0;
        popts.first_step = first_step_;
        popts.initial = initial_;
        popts.snapshots = mine_;
        buddy_ring* b = buddy.get();
        popts.on_step = [this, b](int64_t done) {
          done_ = done;
          if (b) b->offer(done);
        };
        // No step's optimizer step before the buddies hold the step before it: a stage
        // lost at any time is then at most one step behind the others somewhere.
        if (b) popts.before_update = [b](int64_t step) { b->wait_held(step); };
        if (b && first_step_ > 0) b->offer(first_step_);  // the state this view starts from
        if (place_ == 0) ensure_progress();
        pipeline_outcome po = run_pipeline_training(sys, spec_, popts, steps_, place_ == 0 ? progress_.get() : nullptr);
        if (b) buddy_bytes_ += b->bytes_sent();
        buddy.reset();
        return finish(po, t0, view);
      } catch (const input_error&) {
        throw;  // the job itself is wrong: no view cures it
      } catch (const std::exception& e) {
        if (++tries >= 3)
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
    if (!fresh) {
      for (int s : stages_of(place_))
        for (int64_t t : mine_->steps(first_replica_of(place_), s)) have[s].insert(t);
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
      uint64_t tag = kSyncTags + 64;
      for (int k = 0; k < int(holds.size()); ++k)
        for (int s : stages_of(k)) {
          const bool own = holds[size_t(k)].count(s) && holds[size_t(k)].at(s).count(T);
          const int from = own ? k : holder(s);
          tag += 2;
          if (k == place_ && own) {
            initial_[s] = local_state(s, T);
          } else if (!own && from == place_) {
            checkpoint_shard state = local_state(s, T);
            const std::vector<uint8_t> bytes = encode_shard(state);
            const int64_t size = int64_t(bytes.size());
            control.send(k, tag, &size, 2, dtype::i32);
            control.send(k, tag + 1, bytes.data(), bytes.size(), dtype::u8);
            streamed += size;
          } else if (!own && k == place_) {
            int64_t size = 0;
            control.recv(from, tag, &size, 2, dtype::i32);
            if (size < 0 || size > (int64_t(1) << 40))
              throw transport_error("elastic pipeline: a state of " + std::to_string(size) + " bytes");
            std::vector<uint8_t> bytes(static_cast<size_t>(size));
            control.recv(from, tag + 1, bytes.data(), bytes.size(), dtype::u8);
            initial_[s] = parse_shard(bytes.data(), bytes.size(),
                                      "stage " + std::to_string(s) + "'s state from place " + std::to_string(from));
          }
        }
    }
    float moved = float(streamed) / 1e3f;
    allreduce_sum(control, &moved, 1, kSyncTags + 32);
    streamed = int64_t(double(moved) * 1e3);
    // What comes after T never happened: forget it; T's states are the newest held.
    mine_->drop_after(T);
    held_->drop_after(T);
    for (const auto& [s, state] : initial_)
      if (mine_->steps(first_replica_of(place_), s).empty() || mine_->steps(first_replica_of(place_), s).back() != T)
        mine_->put(first_replica_of(place_), s, T, state);
    first_step_ = T;
    done_ = T;
    if (view.generation > 0) {
      const int64_t lost = std::max<int64_t>(0, most_done + 1 - T);
      steps_lost_ += lost;
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
          std::printf("elastic:   view %lld goes on from step %lld (%lld step%s lost, %.1f MB of state streamed)\n",
                      (long long)view.generation, (long long)T, (long long)lost, lost == 1 ? "" : "s",
                      double(streamed) / 1e6);
          std::fflush(stdout);
        }
      }
      if (T == 0 && most_done > 0)
        std::fprintf(stderr, "troupe: process %d: no process holds every stage's state after step %lld (a stage's "
                             "process and its buddy were both lost): the job goes back to step 0\n",
                     me_, (long long)most_done);
    }
    views_ = view.generation + 1;
  }

  // Stage s's state after step t from this process's memory: its own snapshot, or the
  // copy it holds for its buddy.
  checkpoint_shard local_state(int s, int64_t t) {
    checkpoint_shard out;
    if (mine_->copy(first_replica_of(place_), s, t, out) || held_->copy(0, s, t, out)) return out;
    throw std::logic_error("elastic pipeline: stage " + std::to_string(s) + " after step " + std::to_string(t) +
                           " is not held here after all");
  }

  job_outcome finish(const pipeline_outcome& po, std::chrono::steady_clock::time_point t0, const elastic_view& view) {
    job_outcome out;
    out.steps = steps_;
    out.eval.loss = -1;
    if (place_ == 0) {
      evaluate_assembled(spec_, data_, po, *progress_, out);
      if (!opts_.quiet)
        std::printf("elastic:   %lld view%s, %zu processes at the end, %lld step%s lost to failures, %.1f MB of state "
                    "streamed to members, %.1f MB sent to buddies\n",
                    (long long)views_, views_ == 1 ? "" : "s", view.members.size(), (long long)steps_lost_,
                    steps_lost_ == 1 ? "" : "s", double(streamed_) / 1e6, double(buddy_bytes_) / 1e6);
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }

  const proto::JobSpec& spec_;
  std::shared_ptr<const training_data> data_;
  coordinator_options opts_;
  int64_t steps_;
  int P_, R_;
  split sp_;
  std::shared_ptr<stage_snapshots> mine_, held_;
  tcp_options base_;
  std::shared_ptr<tcp_store_server> server_;
  std::shared_ptr<rendezvous> store_;
  int32_t me_ = 0;
  int place_ = 0;
  int64_t first_step_ = 0;
  std::map<int, checkpoint_shard> initial_;
  std::atomic<int64_t> done_{0};
  int64_t steps_lost_ = 0, streamed_ = 0, buddy_bytes_ = 0, views_ = 1;
  std::unique_ptr<progress_log> progress_;
};

}  // namespace

job_outcome run_elastic_pipeline(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                                 const coordinator_options& opts) {
  if (opts.world < 2)
    throw input_error("elastic.mode \"respawn\": a pipeline in one process has no process to lose; run it with "
                      "troupe launch --nproc N");
  if (spec.train().checkpoint_every() > 0)
    throw input_error("train.checkpoint_every: an elastic pipeline job keeps its stages' state in memory (its own and a "
                      "buddy's); checkpoints on disk of a pipeline across processes are not written yet");
  pipeline_member m(spec, std::move(data), opts);
  return m.run();
}

}  // namespace troupe
