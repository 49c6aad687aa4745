#include "actors/elastic_job.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "policies/elastic_membership.hpp"
#include "runtime/background_snapshot.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/progress.hpp"
#include "runtime/threads.hpp"
#include "runtime/trace.hpp"  // steady_now_s: the t_mono stamps, the same clock in every process of a host
#include "transport/collectives.hpp"
#include "transport/transports.hpp"

namespace troupe {

std::string elastic_key(uint64_t group, const std::string& what) {
  return "job/" + std::to_string(group) + "/elastic/" + what;
}

namespace {

// Each view's links are a group of their own, far from the ids the other groups of a job
// take (group + 1 + ... in run_job.cpp).
constexpr uint64_t kViewGroups = uint64_t(1) << 20;

class elastic_worker {
 public:
  elastic_worker(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, const coordinator_options& opts)
      : spec_(spec), data_(std::move(data)), opts_(opts), steps_(total_steps(spec_, *data_)), trainer_(spec_, steps_) {
    base_ = process_link_options(opts_);
    store_ = process_store(opts_, base_, server_);
    me_ = opts_.rank;
    keep_batch_ = spec_.elastic().batch() == "keep";
    const int threads = spec_.train().threads() ? int(spec_.train().threads()) : hardware_threads();
    set_compute_threads(std::max(1, threads / std::max(1, opts_.world)));
    if (opts_.resume_from) {
      if (!opts_.resume_from->shards.count("device"))
        throw input_error("resume " + opts_.resume_from->dir.string() + ": the checkpoint has no \"device\" shard");
      trainer_.restore(opts_.resume_from->shards.at("device"));
      if (!opts_.quiet && me_ == 0)
        std::printf("resume: every process from %s, after step %lld\n", opts_.resume_from->dir.string().c_str(),
                    (long long)trainer_.steps_done());
    }
    reset_source();
  }

  job_outcome run() {
    const auto t0 = std::chrono::steady_clock::now();
    if (opts_.elastic_join) {
      join_as_newcomer();
    } else {
      elastic_view first{0, {}};
      for (int r = 0; r < opts_.world; ++r) first.members.push_back(r);
      join(first);
      if (rank() == 0) record_view(-1, 0);
    }
    while (trainer_.steps_done() < steps_) {
      try {
        step();
      } catch (const transport_error& e) {
        if (spec_.elastic().mode() != "respawn") throw;  // restart_all: the launcher restarts everyone
        recover(e.what());
      }
    }
    // Every member has every byte of the last all-reduce before any closes its links.
    try {
      barrier(*comm_, next_tag());
    } catch (const transport_error&) {
    }
    job_outcome out;
    out.steps = steps_;
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.eval.loss = -1;
    if (rank() != 0) return out;
    if (snapshots_) snapshots_->settle();
    if (writer_) writer_->flush();
    ensure_progress();
    report_evaluation(spec_, data_, trainer_, *progress_, out);
    if (!opts_.quiet)
      std::printf("elastic:   %lld view%s, %d member%s at the end, %lld step%s lost to failures, %.1f MB of state "
                  "streamed to members\n",
                  (long long)view_.generation + 1, view_.generation ? "s" : "", int(view_.members.size()),
                  view_.members.size() == 1 ? "" : "s", (long long)steps_lost_, steps_lost_ == 1 ? "" : "s",
                  double(bytes_streamed_) / 1e6);
    return out;
  }

 private:
  int rank() const { return comm_ ? comm_->rank() : -1; }
  uint64_t next_tag() { return (tag_ += 4 * kTagsPerCollective); }
  std::string key(const std::string& what) const { return elastic_key(opts_.group, what); }

  void reset_source() {
    source_ = std::make_unique<batch_source>(spec_, data_);
    source_->skip(trainer_.steps_done());
    drawn_for_ = -1;
  }

  void ensure_progress() {
    if (!progress_) progress_ = std::make_unique<progress_log>(spec_, steps_, opts_.display());
    if (!writer_ && spec_.train().checkpoint_every() > 0) {
      writer_ = std::make_unique<checkpoint_writer>(spec_.train().checkpoint_dir(), int(spec_.train().checkpoint_keep()));
      snapshots_ = std::make_unique<background_snapshot>();
    }
  }

  // The state is about to change (an update, a restore): the copy of the last one ends first.
  double settle_snapshot() { return snapshots_ ? snapshots_->settle() : 0; }

  // The newest view the coordinator has published; -1 when it cannot be read now.
  int64_t latest() {
    try {
      return std::stoll(store_->get(key("latest"), std::chrono::milliseconds(1)));
    } catch (const std::exception&) {
      return -1;
    }
  }

  // after_failure: the view re-forms after a failure, so its members are all running
  // and joining now; a join that takes longer than 3 s means one of them is gone too, and
  // a newer view will come. Otherwise (a view that grows, at a step boundary) the others
  // may take a step or two to get there: the connect deadline.
  void join(const elastic_view& v, bool after_failure = false) {
    const int index = v.index_of(me_);
    if (index < 0)
      throw std::runtime_error("process " + std::to_string(me_) + " is not in view " + std::to_string(v.generation) +
                               " of the job (" + v.encode() + "): the coordinator counted it lost");
    comm_.reset();
    tcp_options o = base_;
    o.group = base_.group + kViewGroups + uint64_t(v.generation);
    if (after_failure) o.connect_deadline = std::min(o.connect_deadline, std::chrono::milliseconds(3000));
    comm_ = join_group(spec_.parallel().transport(), index, int(v.members.size()), *store_, o);
    view_ = v;
    tag_ = 0;
    confirmed_ = false;
  }

  // After a view change: the member furthest on (fewest steps lost) streams its state to
  // the others when they are not all at the same step, or when one is new (-1 steps).
  void sync_state(bool fresh) {
    settle_snapshot();
    const auto steps = all_gather_text(*comm_, std::to_string(fresh ? -1 : trainer_.steps_done()), next_tag());
    int root = 0;
    bool same = true;
    std::vector<int64_t> at;
    for (const auto& s : steps) at.push_back(std::stoll(s));
    for (size_t k = 0; k < at.size(); ++k) {
      if (at[k] > at[size_t(root)]) root = int(k);
      same = same && at[k] == at[0];
    }
    TROUPE_CHECK(at[size_t(root)] >= 0, "elastic: a view of newcomers only has no state to take");
    // Only the members behind the root get its state, each straight from it.
    int64_t streamed = 0;
    if (!same) {
      const uint64_t tag = next_tag();
      if (rank() == root) {
        checkpoint_shard state = trainer_.snapshot();
        char loss[32];
        std::snprintf(loss, sizeof loss, "%.9g", last_loss_);
        state.texts["last_loss"] = loss;  // the step the members behind missed, for the leader's line
        const std::vector<uint8_t> bytes = encode_shard(state);
        const int64_t size = int64_t(bytes.size());
        for (size_t k = 0; k < at.size(); ++k)
          if (at[k] != at[size_t(root)]) {
            comm_->send(int(k), tag, &size, 2, dtype::i32);
            comm_->send(int(k), tag + 1, bytes.data(), bytes.size(), dtype::u8);
            streamed += size;
          }
      } else if (at[size_t(rank())] != at[size_t(root)]) {
        int64_t size = 0;
        comm_->recv(root, tag, &size, 2, dtype::i32);
        if (size < 0 || size > (int64_t(1) << 40)) throw transport_error("elastic: a state of " + std::to_string(size) + " bytes");
        std::vector<uint8_t> bytes(static_cast<size_t>(size));
        comm_->recv(root, tag + 1, bytes.data(), bytes.size(), dtype::u8);
        const checkpoint_shard state = parse_shard(bytes.data(), bytes.size(), "the state streamed from a peer");
        const int64_t before = trainer_.steps_done();
        trainer_.restore(state);
        // The leader writes the metrics: the last step the others took and it did not (it
        // failed in the all-reduce's last phase) still gets its line, with the root's loss.
        auto loss = state.texts.find("last_loss");
        if (rank() == 0 && before >= 0 && trainer_.steps_done() > before && loss != state.texts.end()) {
          ensure_progress();
          char line[160];
          std::snprintf(line, sizeof line, "{\"event\":\"step\",\"step\":%lld,\"loss\":%s,\"from_peer\":true,\"t_mono\":%.6f}",
                        (long long)trainer_.steps_done(), loss->second.c_str(), steady_now_s());
          progress_->record(line);
        }
        reset_source();
      }
      // Everyone learns how much moved (for the leader's record).
      float moved = float(streamed) / 1e3f;
      allreduce_sum(*comm_, &moved, 1, next_tag());
      streamed = int64_t(double(moved) * 1e3);
      bytes_streamed_ += streamed;
    }
    if (rank() == 0) record_view(same ? -1 : root, streamed);
  }

  void record_view(int root, int64_t streamed) {
    ensure_progress();
    char line[256];
    std::snprintf(line, sizeof line,
                  "{\"event\":\"view\",\"generation\":%lld,\"members\":%zu,\"step\":%lld,\"state_from\":%d,"
                  "\"streamed_bytes\":%lld,\"t_mono\":%.6f}",
                  (long long)view_.generation, view_.members.size(), (long long)trainer_.steps_done(),
                  root < 0 ? -1 : int(view_.members[size_t(root)]), (long long)streamed, steady_now_s());
    progress_->record(line);
  }

  void step() {
    const int64_t s = trainer_.steps_done();
    if (drawn_for_ != s) {
      source_->next_indices(idx_);
      drawn_for_ = s;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const int n = int(view_.members.size());
    const row_share share = rows_for(rank(), n, int64_t(idx_.size()), opts_.world, keep_batch_);
    const float weight = float(share.end - share.begin) / float(share.total);
    float loss = 0;
    if (share.end > share.begin) {
      std::vector<int64_t> mine(idx_.begin() + share.begin, idx_.begin() + share.end);
      batch b = source_->gather(mine);
      loss = trainer_.compute_gradients(b.x, b.y);
      tensor g = trainer_.grads().flat();
      float* p = g.f32();
      for (int64_t i = 0, e = g.numel(); i < e; ++i) p[i] *= weight;
    } else {
      trainer_.grads().zero();
    }
    const double compute_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tensor g = trainer_.grads().flat();
    allreduce_sum(*comm_, g.f32(), size_t(g.numel()), next_tag());
    // The step's loss, and (from the leader) the newest view it has seen: every member
    // learns the same one from the same step's sum.
    // Only respawn grows views: under restart_all nobody publishes one, and asking the store
    // for a key that is not there waits out its 1 ms (measured: restart_all's steps 6.0 ms
    // against 4.9).
    const bool views_change = spec_.elastic().mode() == "respawn";
    const int64_t newest = rank() != 0 ? 0 : views_change ? std::max<int64_t>(latest(), view_.generation) : view_.generation;
    float control[2] = {loss * weight, float(newest)};
    allreduce_sum(*comm_, control, 2, next_tag());
    last_loss_ = control[0];
    const double settled_ms = settle_snapshot();
    const step_result r = trainer_.apply_gradients();
    if (rank() == 0) {
      ensure_progress();
      // Phase 1 of a checkpoint (the copy) runs on the snapshot thread during the next
      // step's forward and backward. On this step's path: the wait for the last copy
      // before the update, and the hand-over of this one; both timed, as the step's share.
      double snapshot_ms = -1, copy_ms = -1;
      const uint32_t every = spec_.train().checkpoint_every();
      if (every > 0 && trainer_.steps_done() % every == 0) {
        const auto c0 = std::chrono::steady_clock::now();
        copy_ms = snapshots_->last_copy_ms();
        snapshots_->start([this, step = trainer_.steps_done()] {
          auto shards = writer_->reclaim();  // buffers already on disk: copied into, not allocated
          trainer_.snapshot_into(shards["device"]);
          writer_->submit(step, std::move(shards));
        });
        snapshot_ms = settled_ms + std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c0).count();
      }
      char extra[200];
      std::snprintf(extra, sizeof extra, "\"workers\":%d,\"generation\":%lld,\"t_mono\":%.6f", n,
                    (long long)view_.generation, steady_now_s());
      std::string fields = extra;
      if (snapshot_ms >= 0) {
        std::snprintf(extra, sizeof extra, ",\"snapshot_ms\":%.4f,\"snapshot_copy_ms\":%.4f", snapshot_ms, copy_ms);
        fields += extra;
      }
      const int64_t tokens = spec_.model().has_gpt() ? share.total * int64_t(spec_.model().gpt().context()) : 0;
      progress_->step(s, control[0], r.lr, r.grad_norm, share.total, tokens, compute_s, fields);
      if (!confirmed_) {
        try {  // the coordinator grows the view only after this: a store hiccup only delays that
          store_->set(key("at/" + std::to_string(view_.generation)), std::to_string(s));
          confirmed_ = true;
        } catch (const std::exception& e) {
          std::fprintf(stderr, "troupe: process %d: cannot mark view %lld as training: %s\n", me_,
                       (long long)view_.generation, e.what());
        }
      }
    }
    if (rank() != 0) confirmed_ = true;
    const int64_t next = int64_t(control[1]);
    if (next > view_.generation && trainer_.steps_done() < steps_) {
      const elastic_view v = elastic_view::decode(store_->get(key("view/" + std::to_string(next)), base_.connect_deadline));
      join(v);
      sync_state(false);
    }
  }

  // A collective failed: a member is gone. Close this view's links, wait for the
  // coordinator's next view, join it and take the state of the member furthest on.
  void recover(const std::string& why) {
    comm_.reset();
    settle_snapshot();
    const int64_t failed_at = trainer_.steps_done(), failed_view = view_.generation;
    std::fprintf(stderr, "troupe: process %d: view %lld failed in step %lld (%s); waiting for the next view\n", me_,
                 (long long)failed_view, (long long)failed_at + 1, why.c_str());
    // Say so: a failure of the data links alone (no member lost) gets a fresh view of
    // the same members from the coordinator.
    try {
      store_->set(key("failed/" + std::to_string(failed_view)), std::to_string(me_));
    } catch (const std::exception&) {
    }
    const auto until = std::chrono::steady_clock::now() + 2 * base_.silence + std::chrono::seconds(30);
    int64_t tried = failed_view;
    while (std::chrono::steady_clock::now() < until) {
      const int64_t g = latest();
      if (g > tried) {
        tried = g;
        try {
          const elastic_view v =
              elastic_view::decode(store_->get(key("view/" + std::to_string(g)), base_.connect_deadline));
          join(v, true);
          sync_state(false);
          steps_lost_ += 1 + std::max<int64_t>(0, failed_at - trainer_.steps_done());
          return;
        } catch (const transport_error& e) {
          comm_.reset();
          std::fprintf(stderr, "troupe: process %d: view %lld failed as it formed (%s)\n", me_, (long long)g, e.what());
          try {
            store_->set(key("failed/" + std::to_string(g)), std::to_string(me_));
          } catch (const std::exception&) {
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    throw std::runtime_error("process " + std::to_string(me_) + ": no new view of the job came within " +
                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(2 * base_.silence).count() + 30) +
                             " s of a failure (is the launcher gone?)");
  }

  // A replacement (or a spare): says it is ready, then waits for the view that takes it
  // in, as long as the job runs (the coordinator stops it, status 0, when the job ends).
  void join_as_newcomer() {
    store_->set(key("ready/" + std::to_string(me_)), std::to_string(::getpid()));
    int64_t tried = -1;
    for (;;) {
      const int64_t g = latest();
      if (g > tried) {
        tried = g;
        const elastic_view v = elastic_view::decode(store_->get(key("view/" + std::to_string(g)), base_.connect_deadline));
        if (v.index_of(me_) >= 0) {
          try {
            join(v);
            sync_state(true);
            store_->set(key("joined/" + std::to_string(me_)), std::to_string(v.generation));
            return;
          } catch (const transport_error& e) {
            comm_.reset();
            std::fprintf(stderr, "troupe: process %d: view %lld failed as it formed (%s)\n", me_, (long long)g, e.what());
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // a spare may wait long: gently
    }
  }

  const proto::JobSpec& spec_;
  std::shared_ptr<const training_data> data_;
  coordinator_options opts_;
  int64_t steps_;
  trainer trainer_;
  tcp_options base_;
  std::shared_ptr<tcp_store_server> server_;
  std::shared_ptr<rendezvous> store_;
  std::shared_ptr<communicator> comm_;
  elastic_view view_;
  int32_t me_ = 0;
  bool keep_batch_ = true, confirmed_ = false;
  uint64_t tag_ = 0;
  std::unique_ptr<batch_source> source_;
  std::vector<int64_t> idx_;
  int64_t drawn_for_ = -1, steps_lost_ = 0, bytes_streamed_ = 0;
  float last_loss_ = 0;  // the newest step's loss (the sum over the members)
  std::unique_ptr<progress_log> progress_;
  std::unique_ptr<checkpoint_writer> writer_;
  // After writer_: its copies submit to the writer, so it stops first.
  std::unique_ptr<background_snapshot> snapshots_;
};

}  // namespace

job_outcome run_elastic_job(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                            const coordinator_options& opts) {
  if (opts.world < 2)
    throw input_error("elastic.mode \"" + spec.elastic().mode() +
                      "\": a job of one process has no peer to go on without; run it with troupe launch --nproc N");
  if (int(spec.parallel().replicas()) != opts.world && !opts.elastic_join)
    throw input_error("elastic.mode \"" + spec.elastic().mode() + "\": each process holds one replica: expected " +
                      "parallel.replicas " + std::to_string(opts.world) + " (the processes launched), got " +
                      std::to_string(spec.parallel().replicas()));
  if (int64_t(spec.train().batch_size()) < opts.world)
    throw input_error("elastic: train.batch_size " + std::to_string(spec.train().batch_size()) +
                      " is smaller than the " + std::to_string(opts.world) + " processes");
  elastic_worker w(spec, std::move(data), opts);
  return w.run();
}

}  // namespace troupe
