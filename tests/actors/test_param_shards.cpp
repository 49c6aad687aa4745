// Training through parameter-shard actors (actors/ps_job.hpp): synchronous SGD over n
// workers and S shards is the single-process run of the same job, a worker that fails
// leaves the quorum instead of hanging it, backup workers drop what they should, and the
// time limit stops a run.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <thread>

#include "actors/ps_job.hpp"
#include "policies/update_rule.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"
#include "transport/communicator.hpp"

using namespace troupe;

namespace {

proto::JobSpec mlp_job(const std::string& policy, const std::string& train = R"("batch_size": 24, "steps": 20)") {
  return parse_job_spec(R"({"name": "ps_test",
    "model": {"mlp": {"widths": [784, 48, 32, 10]}},
    "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0.05}},
    "train": {)" + train + R"(, "threads": 1},
    "policy": )" + policy + "}",
                        "ps_test.json");
}

double rel(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::abs(b)); }

// The single-process run of `spec` for 20 steps on `ref`; its per-step losses.
std::vector<double> train_reference(trainer& ref, const proto::JobSpec& spec, std::shared_ptr<const training_data> data) {
  batch_source src(spec, data);
  std::vector<double> loss;
  for (int k = 0; k < 20; ++k) {
    batch b = src.next();
    loss.push_back(ref.train_step(b.x, b.y).loss);
  }
  return loss;
}

}  // namespace

TEST_CASE("param shards: synchronous SGD over n workers and S shards matches the single-process run") {
  set_compute_threads(1);
  const proto::JobSpec base = mlp_job(R"({"name": "sync"})");
  auto data = load_training_data(base);
  // The reference: the same job on one trainer.
  trainer ref(base, 20);
  const std::vector<double> ref_loss = train_reference(ref, base, data);
  for (int workers : {1, 2, 4}) {
    for (int shards : {1, 3}) {
      CAPTURE(workers);
      CAPTURE(shards);
      const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": )" + std::to_string(workers) +
                                          R"(, "shards": )" + std::to_string(shards) + "}");
      ps_outcome out = run_ps_training(spec, data, {});
      REQUIRE(out.step_loss.size() == 20);
      for (int k = 0; k < 20; ++k) {
        CHECK(out.step_workers[size_t(k)] == workers);
        CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
      }
      REQUIRE(out.shards.size() == size_t(shards));
      for (const shard_stats& st : out.shards) {
        CHECK(st.version == 20);
        CHECK(st.applied == 20 * workers);
        CHECK(st.dropped == 0);
        CHECK(st.staleness[0] == 20 * workers);  // synchronous: every gradient fresh
      }
      arena whole(ref.net().table);
      out.assemble(out.snapshots.back(), whole);
      double worst = 0;
      for (size_t i = 0; i < ref.net().table.entries().size(); ++i)
        for (int64_t j = 0; j < ref.net().table.entries()[i].numel(); ++j)
          worst = std::max(worst, double(std::abs(whole.ptr(int(i))[j] - ref.params().ptr(int(i))[j])));
      CHECK(worst < 1e-4);
    }
  }
}

// The job as `world` processes (threads here, each with its own actor system, linked by a
// transport group): process 0's outcome.
ps_outcome run_as_processes(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, int world,
                            const std::string& transport, const ps_options& opts = {}) {
  auto group = make_group(transport, world);
  std::vector<ps_outcome> outs(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> procs;
  for (int r = 0; r < world; ++r)
    procs.emplace_back([&, r] {
      try {
        ps_processes p{ps_placement::of(spec, r, world), group[size_t(r)]};
        outs[size_t(r)] = run_ps_training(spec, data, opts, &p);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : procs) t.join();
  for (int r = 0; r < world; ++r) CHECK_MESSAGE(errors[size_t(r)].empty(), "process ", r, ": ", errors[size_t(r)]);
  return std::move(outs[0]);
}

TEST_CASE("param shards: the job split over processes is the single-process run, for every split") {
  set_compute_threads(1);
  // Sync and DiLoCo sum the pushes in worker order, so the split changes no bit; with
  // work stealing, which worker trains which micro-batch (and so the order of the sums)
  // depends on timing, in one process too.
  struct job {
    std::string policy;
    bool exact;
  };
  for (const job& j : {job{R"({"name": "sync", "workers": 4, "shards": 3})", true},
                       job{R"({"name": "diloco", "workers": 3, "shards": 2, "sync_every": 4})", true},
                       job{R"({"name": "sync", "workers": 4, "shards": 2, "steal_micro_batches": 8})", false}}) {
    CAPTURE(j.policy);
    const proto::JobSpec spec = mlp_job(j.policy);
    auto data = load_training_data(spec);
    ps_outcome one = run_ps_training(spec, data, {});
    auto net = build_model(spec.model());
    arena want(net->table);
    one.assemble(one.snapshots.back(), want);
    for (const auto& [world, transport] : std::vector<std::pair<int, std::string>>{{2, "inproc"}, {3, "tcp"}}) {
      CAPTURE(world);
      CAPTURE(transport);
      ps_outcome many = run_as_processes(spec, data, world, transport);
      REQUIRE(many.step_loss.size() == one.step_loss.size());
      for (size_t k = 0; k < one.step_loss.size(); ++k)
        CHECK(rel(many.step_loss[k], one.step_loss[k]) <= (j.exact ? 0 : 1e-4));
      REQUIRE(many.shards.size() == one.shards.size());
      for (size_t k = 0; k < one.shards.size(); ++k) {
        CHECK(many.shards[k].version == one.shards[k].version);
        CHECK(many.shards[k].applied == one.shards[k].applied);
      }
      arena got(want.table());
      many.assemble(many.snapshots.back(), got);
      double worst = 0;
      for (int64_t i = 0; i < want.flat().numel(); ++i)
        worst = std::max(worst, double(std::abs(got.flat().f32()[i] - want.flat().f32()[i])));
      CHECK(worst <= (j.exact ? 0 : 1e-4));
    }
  }
}

TEST_CASE("param shards: a sync job checkpoints every shard, and resumed it ends bit for bit as the uninterrupted run") {
  set_compute_threads(1);
  auto job = [](const std::string& dir) {
    std::filesystem::remove_all(dir);
    return mlp_job(R"({"name": "sync", "workers": 3, "shards": 2})",
                   R"("batch_size": 24, "steps": 20, "checkpoint_every": 4, "checkpoint_keep": 0, "checkpoint_dir": ")" +
                       dir + "\"");
  };
  const proto::JobSpec spec = job("/tmp/troupe_ps_ckpt_one");
  auto data = load_training_data(spec);
  ps_outcome full = run_ps_training(spec, data, {});
  auto net = build_model(spec.model());
  arena want(net->table);
  full.assemble(full.snapshots.back(), want);
  // Phase 2 is done when the run returns: versions 4, 8, .., 20, a file per shard.
  auto v8 = std::make_shared<checkpoint_version>(load_checkpoint_version("/tmp/troupe_ps_ckpt_one/step-000000000008"));
  REQUIRE(v8->step == 8);
  REQUIRE(v8->shards.size() == 2);
  CHECK(checkpoint_count(v8->shards.at("shard-1"), "version") == 8);
  CHECK(checkpoint_count(v8->shards.at("shard-0"), "applied_samples") == 8 * 24);
  CHECK(load_latest_checkpoint("/tmp/troupe_ps_ckpt_one").step == 20);
  // Taken across 3 processes, the same checkpoint to the byte.
  const proto::JobSpec spread = job("/tmp/troupe_ps_ckpt_three");
  run_as_processes(spread, data, 3, "tcp");
  const checkpoint_version t8 = load_checkpoint_version("/tmp/troupe_ps_ckpt_three/step-000000000008");
  for (const auto& [name, shard] : v8->shards)
    for (const auto& [entry, t] : shard.tensors) {
      CAPTURE(name);
      CAPTURE(entry);
      const tensor& u = t8.shards.at(name).tensors.at(entry);
      REQUIRE(u.bytes() == t.bytes());
      CHECK(std::memcmp(u.raw(), t.raw(), t.bytes()) == 0);
    }
  // Resumed from step 8, in one process and across 2: steps 9-20 and the final
  // parameters as the uninterrupted run's.
  ps_options from8;
  from8.resume_from = v8;
  const proto::JobSpec again = job("/tmp/troupe_ps_ckpt_again");
  for (int world : {1, 2}) {
    CAPTURE(world);
    ps_outcome resumed = world == 1 ? run_ps_training(again, data, from8) : run_as_processes(again, data, 2, "inproc", from8);
    REQUIRE(resumed.step_loss.size() == 20);
    for (size_t k = 8; k < 20; ++k) CHECK(resumed.step_loss[k] == full.step_loss[k]);
    for (const shard_stats& st : resumed.shards) CHECK(st.version == 20);
    arena got(net->table);
    resumed.assemble(resumed.snapshots.back(), got);
    CHECK(std::memcmp(got.flat().raw(), want.flat().raw(), want.flat().bytes()) == 0);
  }
  // What cannot resume says why, before any actor starts: another model's checkpoint,
  // another job's, and a rule without shared steps.
  proto::JobSpec wide = again;
  wide.mutable_model()->mutable_mlp()->set_widths(1, 64);
  CHECK_THROWS_WITH_AS(run_ps_training(wide, data, from8), doctest::Contains("laid out for another model"),
                       checkpoint_error);
  const proto::JobSpec three = mlp_job(R"({"name": "sync", "workers": 3, "shards": 3})");
  CHECK_THROWS_WITH_AS(run_ps_training(three, data, from8), doctest::Contains("has no \"shard-2\" for this job of 3"),
                       input_error);
  const proto::JobSpec async = mlp_job(R"({"name": "downpour", "workers": 3, "shards": 2})",
                                       R"("batch_size": 24, "steps": 20, "checkpoint_every": 4)");
  CHECK_THROWS_WITH_AS(run_ps_training(async, data, {}),
                       doctest::Contains("checkpoints of parameter-shard jobs take the synchronous rule"), input_error);
}

TEST_CASE("param shards: over processes, a worker that fails leaves the quorum and the rest finish") {
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 3, "shards": 2,
      "stragglers": [{"worker": 1, "fail_at_step": 5}]})");
  ps_outcome out = run_as_processes(spec, load_training_data(spec), 3, "tcp");
  REQUIRE(out.failures.size() == 1);
  CHECK(out.failures[0].find("injected failure at step 5") != std::string::npos);
  REQUIRE(out.step_workers.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(out.step_workers[size_t(k)] == (k < 5 ? 3 : 2));
  for (const shard_stats& st : out.shards) CHECK(st.version == 20);
}

TEST_CASE("param shards: over processes, a lost process ends the job with the reason on every side, never a hang") {
  // Process 1 goes away (its group aborted, as its links would break) while both train.
  const proto::JobSpec spec =
      mlp_job(R"({"name": "sync", "workers": 2, "shards": 2})", R"("batch_size": 24, "steps": 100000)");
  auto data = load_training_data(spec);
  auto group = make_group("tcp", 2);
  std::string errors[2];
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> procs;
  for (int r = 0; r < 2; ++r)
    procs.emplace_back([&, r] {
      try {
        ps_processes p{ps_placement::of(spec, r, 2), group[size_t(r)]};
        run_ps_training(spec, data, {}, &p);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  group[1]->abort("process 1 is gone");
  for (auto& t : procs) t.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
  CAPTURE(errors[0]);
  CAPTURE(errors[1]);
  CHECK(errors[0].find("policy job failed: actor_bridge: the link to process 1 failed") != std::string::npos);
  CHECK(errors[1].find("policy job failed: actor_bridge: the link to process 0 failed") != std::string::npos);
}

TEST_CASE("param shards: a split that leaves a process nothing to hold is refused with the reason") {
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 2, "shards": 3})");
  CHECK_THROWS_WITH_AS(ps_placement::of(spec, 0, 4),
                       doctest::Contains("expected at most 3 processes (worker w runs in process w % N, shard s in process s % N)"),
                       input_error);
}

TEST_CASE("param shards: a worker that fails leaves the synchronous quorum, and the others finish") {
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 3, "shards": 2,
      "stragglers": [{"worker": 1, "fail_at_step": 5}]})");
  auto data = load_training_data(spec);
  const auto t0 = std::chrono::steady_clock::now();
  ps_outcome out = run_ps_training(spec, data, {});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
  REQUIRE(out.failures.size() == 1);
  CHECK(out.failures[0].find("worker 1") == 0);
  CHECK(out.failures[0].find("injected failure at step 5") != std::string::npos);
  REQUIRE(out.step_workers.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(out.step_workers[size_t(k)] == (k < 5 ? 3 : 2));
  for (const shard_stats& st : out.shards) CHECK(st.version == 20);
  CHECK(out.worker_steps == 5 * 3 + 15 * 2);
}

TEST_CASE("param shards: backup workers make each update from at most n - b gradients and drop the rest") {
  // Worker 3 twice as slow (emulated compute): its pushes reach rounds the others have
  // already closed while they still run. With equal speeds, a lagging worker that pulls
  // after a round closed skips that version instead of being dropped, so how many are
  // dropped was up to the scheduler (1 of 80 in one CI run).
  const proto::JobSpec spec = mlp_job(R"({"name": "backup", "workers": 4, "shards": 2, "backup": 1,
      "sample_ms": 0.2, "stragglers": [{"worker": 3, "slowdown": 2}]})");
  ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
  for (const shard_stats& st : out.shards) {
    CHECK(st.pushes == 80);
    CHECK(st.applied + st.dropped == st.pushes);  // nothing left pending
    // A dropped worker's step is lost, so rounds can outnumber a worker's steps; once
    // workers finish, the few still running make the last rounds among themselves.
    CHECK(st.version >= 20);
    CHECK(st.applied <= 3 * st.version);
    CHECK(st.dropped >= 5);
  }
}

TEST_CASE("param shards: asynchronous rules apply every gradient and count its staleness") {
  for (const char* name : {"downpour", "ssp", "staleness-lr", "dc-asgd", "k-async"}) {
    CAPTURE(name);
    const proto::JobSpec spec = mlp_job(std::string(R"({"name": ")") + name + R"(", "workers": 3, "shards": 2})");
    ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
    CHECK(out.worker_steps == 60);
    for (const shard_stats& st : out.shards) {
      CHECK(st.pushes == 60);
      CHECK(st.applied == 60);
      // k-async (K = workers / 2 = 1 here) and the rest: one update a gradient.
      CHECK(st.version == 60);
      int64_t n = 0;
      for (int64_t c : st.staleness) n += c;
      CHECK(n == 60);
    }
    CHECK(std::isfinite(out.step_loss.back()));
    CHECK(out.step_loss.back() < out.step_loss.front());
  }
}

TEST_CASE("param shards: policy.time_limit_s stops the workers, and the parameters so far come back") {
  const proto::JobSpec spec = mlp_job(R"({"name": "downpour", "workers": 2, "sample_ms": 2, "time_limit_s": 1})",
                                      R"("batch_size": 24, "steps": 100000)");
  ps_options opts;
  opts.snapshot_every_s = 0.25;
  const auto t0 = std::chrono::steady_clock::now();
  ps_outcome out = run_ps_training(spec, load_training_data(spec), opts);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(out.time_limited);
  CHECK(s < 5);
  CHECK(out.worker_steps > 10);
  CHECK(out.worker_steps < 2 * 1000 / 24 + 10);  // 24 ms a step each: the emulated time holds
  CHECK(out.snapshots.size() >= 3);
  for (size_t i = 1; i < out.snapshots.size(); ++i) CHECK(out.snapshots[i].t >= out.snapshots[i - 1].t);
}

// ---------------------------------------------------------------- local rules

namespace {

// Largest absolute difference between two arenas of one table.
double max_diff(const arena& a, const arena& b) {
  double worst = 0;
  const tensor &x = const_cast<arena&>(a).flat(), &y = const_cast<arena&>(b).flat();
  for (int64_t i = 0; i < x.numel(); ++i) worst = std::max(worst, double(std::abs(x.f32()[i] - y.f32()[i])));
  return worst;
}

arena final_params(const proto::JobSpec& spec, const ps_outcome& out) {
  arena whole(build_model(spec.model())->table);
  out.assemble(out.snapshots.back(), whole);
  return whole;
}

}  // namespace

TEST_CASE("local rules: local-sgd with H = 1 and plain SGD is synchronous SGD") {
  set_compute_threads(1);
  const std::string sgd = R"("sgd": {"lr": 0.05, "weight_decay": 0.01})";
  auto job = [&](const std::string& policy) {
    proto::JobSpec s = mlp_job(policy);
    s.mutable_optimizer()->clear_adamw();
    s.mutable_optimizer()->mutable_sgd()->set_lr(0.05f);
    s.mutable_optimizer()->mutable_sgd()->set_weight_decay(0.01f);
    return s;
  };
  const proto::JobSpec sync = job(R"({"name": "sync", "workers": 2, "shards": 2})");
  const proto::JobSpec local = job(R"({"name": "local-sgd", "workers": 2, "shards": 2, "sync_every": 1})");
  auto data = load_training_data(sync);
  const ps_outcome a = run_ps_training(sync, data, {}), b = run_ps_training(local, data, {});
  REQUIRE(a.step_loss.size() == 20);
  REQUIRE(b.step_loss.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(rel(b.step_loss[size_t(k)], a.step_loss[size_t(k)]) < 1e-5);
  CHECK(max_diff(final_params(sync, a), final_params(local, b)) < 1e-5);
  CHECK(b.shards[0].version == 20);
}

TEST_CASE("local rules: local-sgd over one worker is the single-process run, whatever H") {
  set_compute_threads(1);
  const proto::JobSpec base = mlp_job(R"({"name": "sync"})");
  auto data = load_training_data(base);
  trainer ref(base, 20);
  const std::vector<double> ref_loss = train_reference(ref, base, data);
  for (int H : {1, 7, 20, 50}) {
    CAPTURE(H);
    const proto::JobSpec spec =
        mlp_job(R"({"name": "local-sgd", "workers": 1, "shards": 2, "sync_every": )" + std::to_string(H) + "}");
    const ps_outcome out = run_ps_training(spec, data, {});
    REQUIRE(out.step_loss.size() == 20);
    for (int k = 0; k < 20; ++k) CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
    CHECK(max_diff(final_params(spec, out), ref.params()) < 1e-5);
    const int64_t rounds = (20 + H - 1) / H;  // the last round may be shorter
    for (const shard_stats& st : out.shards) {
      CHECK(st.version == rounds);
      CHECK(st.pushes == rounds);
    }
  }
}

TEST_CASE("local rules: diloco is H inner steps per worker, then Nesterov SGD on the mean change") {
  set_compute_threads(1);
  const int W = 2, H = 5, steps = 20;
  const float outer_lr = 0.7f, mu = 0.9f;
  const proto::JobSpec spec = mlp_job(R"({"name": "diloco", "workers": 2, "shards": 3, "sync_every": 5})");
  auto data = load_training_data(spec);
  // The reference by hand: two trainers (each keeps its AdamW state across rounds) on
  // their halves of each step's batch, and the outer step written out in double.
  std::vector<std::unique_ptr<trainer>> inner;
  for (int w = 0; w < W; ++w) inner.push_back(std::make_unique<trainer>(spec, steps));
  arena anchor(inner[0]->net().table);
  anchor.flat().copy_from(inner[0]->params().flat());
  const int64_t N = anchor.flat().numel();
  std::vector<double> buf(size_t(N), 0);
  batch_source src(spec, data);
  std::vector<int64_t> idx, half;
  for (int round = 0; round < steps / H; ++round) {
    for (auto& t : inner) t->params().flat().copy_from(anchor.flat());
    for (int k = 0; k < H; ++k) {
      src.next_indices(idx);
      const size_t b = idx.size() / W;
      for (int w = 0; w < W; ++w) {
        half.assign(idx.begin() + long(w * b), idx.begin() + long((w + 1) * b));
        batch bt = src.gather(half);
        inner[size_t(w)]->train_step(bt.x, bt.y);
      }
    }
    float* p = anchor.flat().f32();
    for (int64_t i = 0; i < N; ++i) {
      double delta = 0;
      for (auto& t : inner) delta += (double(p[i]) - double(t->params().flat().f32()[i])) / W;
      buf[size_t(i)] = round == 0 ? delta : mu * buf[size_t(i)] + delta;
      p[i] = float(double(p[i]) - outer_lr * (delta + mu * buf[size_t(i)]));
    }
  }
  const ps_outcome out = run_ps_training(spec, data, {});
  CHECK(out.shards[0].version == steps / H);
  CHECK(out.step_workers.size() == size_t(steps));
  CHECK(max_diff(final_params(spec, out), anchor) < 1e-4);

  // outer_lr 1 and momentum 0 make it local-sgd, bit for bit.
  proto::JobSpec plain = spec;
  plain.mutable_policy()->set_outer_lr(1);
  plain.mutable_policy()->set_outer_momentum(0);
  proto::JobSpec local = mlp_job(R"({"name": "local-sgd", "workers": 2, "shards": 3, "sync_every": 5})");
  CHECK(max_diff(final_params(plain, run_ps_training(plain, data, {})),
                 final_params(local, run_ps_training(local, data, {}))) == 0);
}

TEST_CASE("param shards: a job given parameters to start from trains on from them, as a trainer started there does") {
  set_compute_threads(1);
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 2, "shards": 3})");
  auto data = load_training_data(spec);
  // The start: parameters of another seed, not the ones this job's seed makes.
  proto::JobSpec other = spec;
  other.mutable_train()->set_seed(spec.train().seed() + 7);
  trainer start(other, 20);
  trainer ref(spec, 20);
  REQUIRE(max_diff(ref.params(), start.params()) > 0);
  ref.params().flat().copy_from(start.params().flat());
  const std::vector<double> ref_loss = train_reference(ref, spec, data);
  ps_options opts;
  opts.start_params = start.params().flat().clone();
  const ps_outcome out = run_ps_training(spec, data, opts);
  REQUIRE(out.step_loss.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
  CHECK(max_diff(final_params(spec, out), ref.params()) < 1e-5);
  // Parameters of another model are refused, with what was wrong.
  opts.start_params = tensor::zeros({100});
  try {
    run_ps_training(spec, data, opts);
    FAIL("100 values for a model of more were taken");
  } catch (const input_error& e) {
    CHECK(std::string(e.what()).find("hold 100 values; this job's model has") != std::string::npos);
  }
}

TEST_CASE("local rules: traffic is one pull and one push per H steps, and a failed worker leaves the rounds") {
  auto traffic = [](int H) {
    const proto::JobSpec spec =
        mlp_job(R"({"name": "diloco", "workers": 2, "shards": 2, "sync_every": )" + std::to_string(H) + "}");
    return run_ps_training(spec, load_training_data(spec), {});
  };
  const ps_outcome h1 = traffic(1), h10 = traffic(10);
  CHECK(h1.bytes == 10 * h10.bytes);
  CHECK(h1.shards[0].pushes == 40);
  CHECK(h10.shards[0].pushes == 4);
  CHECK(h10.bytes == 2 * (h10.shards[0].bytes_in + h10.shards[1].bytes_in));  // each push, and its pull

  const proto::JobSpec spec = mlp_job(R"({"name": "local-sgd", "workers": 3, "shards": 2, "sync_every": 4,
      "stragglers": [{"worker": 1, "fail_at_step": 6}]})");
  const auto t0 = std::chrono::steady_clock::now();
  const ps_outcome out = run_ps_training(spec, load_training_data(spec), {});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
  REQUIRE(out.failures.size() == 1);
  for (const shard_stats& st : out.shards) {
    CHECK(st.version == 5);
    CHECK(st.pushes == 2 * 5 + 1);  // worker 1 pushed round 0 (steps 0-3), then failed at step 6
  }
  for (int k = 0; k < 20; ++k) CHECK(out.step_workers[size_t(k)] == (k < 6 ? 3 : 2));
}

TEST_CASE("speed-proportional batches: a slow worker gets a smaller share, and sync is still the single-process run") {
  set_compute_threads(1);
  const proto::JobSpec base = mlp_job(R"({"name": "sync"})");
  auto data = load_training_data(base);
  trainer ref(base, 20);
  const std::vector<double> ref_loss = train_reference(ref, base, data);
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 4, "shards": 2, "balance_every": 2,
      "sample_ms": 0.4, "stragglers": [{"worker": 3, "slowdown": 3}]})");
  const ps_outcome out = run_ps_training(spec, data, {});
  REQUIRE(out.step_loss.size() == 20);
  for (int k = 0; k < 20; ++k) CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
  CHECK(max_diff(final_params(spec, out), ref.params()) < 1e-4);
  REQUIRE(out.shards[0].shares.size() == 4);
  const std::vector<int64_t>& sh = out.shards[0].shares;
  CHECK(sh[0] + sh[1] + sh[2] + sh[3] == 24);
  CHECK(sh[3] < sh[0]);  // 3x slower: about a third of the others' share (7, 7, 7, 3)
  CHECK(sh[3] <= 4);
  CHECK(out.samples == 20 * 24);
}

TEST_CASE("policy.lr_scaling: an update of half the batch steps with half the learning rate (linear)") {
  // Worker 1 fails before its first step, so every update is worker 0's half of the batch.
  // Plain SGD: "linear" at lr 0.1 is "none" at lr 0.05, bit for bit.
  const std::string policy = R"({"name": "sync", "workers": 2, "shards": 2, "stragglers": [{"worker": 1, "fail_at_step": 0}])";
  auto job = [&](const char* lr, const char* scaling) {
    return parse_job_spec(R"({"name": "scaling", "model": {"mlp": {"widths": [784, 32, 10]}},
      "data": {"dataset": "fashion_mnist"}, "optimizer": {"sgd": {"lr": )" + std::string(lr) + R"(}},
      "train": {"batch_size": 24, "steps": 10, "threads": 1}, "policy": )" + policy + R"(, "lr_scaling": ")" +
                              scaling + R"("}})",
                          "scaling.json");
  };
  const proto::JobSpec a = job("0.1", "linear"), b = job("0.05", "none"), c = job("0.1", "none");
  auto data = load_training_data(a);
  const ps_outcome ra = run_ps_training(a, data, {}), rb = run_ps_training(b, data, {}), rc = run_ps_training(c, data, {});
  CHECK(max_diff(final_params(a, ra), final_params(b, rb)) == 0);
  CHECK(max_diff(final_params(a, ra), final_params(c, rc)) > 1e-4);
  CHECK(lr_batch_scale("sqrt", 64, 256) == doctest::Approx(0.5));
  CHECK(lr_batch_scale("linear", 64, 256) == doctest::Approx(0.25));
  CHECK(lr_batch_scale("none", 64, 256) == 1.0);
}

TEST_CASE("work stealing: idle workers take a slow worker's micro-batches, and sync is still the single-process run") {
  const proto::JobSpec base = mlp_job(R"({"name": "sync", "workers": 1})");
  auto data = load_training_data(base);
  trainer ref(base, 20);
  const std::vector<double> ref_loss = train_reference(ref, base, data);
  // Emulated: each worker owns 2 of 8 micro-batches of 3 examples; worker 3 takes 3.6 ms
  // for one where the others take 1.2 ms, so when they run dry it still holds one.
  // Real compute (sample_ms 0, four workers on the test's cores): whatever steals happen.
  for (const char* policy : {R"({"name": "sync", "workers": 4, "shards": 2, "steal_micro_batches": 8,
                                 "sample_ms": 0.4, "stragglers": [{"worker": 3, "slowdown": 3}]})",
                             R"({"name": "sync", "workers": 4, "shards": 3, "steal_micro_batches": 24})",
                             R"({"name": "sync", "workers": 1, "shards": 2, "steal_micro_batches": 6})"}) {
    CAPTURE(policy);
    const proto::JobSpec spec = mlp_job(policy);
    const ps_outcome out = run_ps_training(spec, data, {});
    REQUIRE(out.step_loss.size() == 20);
    for (int k = 0; k < 20; ++k) CHECK(rel(out.step_loss[size_t(k)], ref_loss[size_t(k)]) < 1e-4);
    CHECK(max_diff(final_params(spec, out), ref.params()) < 1e-4);
    // Every micro-batch trained once: the examples add up, and what was stolen was given.
    CHECK(out.samples == 20 * 24);
    int64_t stolen = 0, given = 0;
    for (size_t w = 0; w < out.stolen.size(); ++w) stolen += out.stolen[w], given += out.given[w];
    CHECK(stolen == given);
    if (spec.policy().stragglers_size() > 0) {
      CHECK(out.given[3] >= 10);  // about one micro-batch a step
      CHECK(out.worker_samples[3] < out.worker_samples[0]);
    }
  }
}

TEST_CASE("work stealing: a worker that fails takes only its micro-batches of that step with it") {
  const proto::JobSpec spec = mlp_job(R"({"name": "sync", "workers": 3, "shards": 2, "steal_micro_batches": 6,
      "stragglers": [{"worker": 1, "fail_at_step": 5}]})");
  auto data = load_training_data(spec);
  ps_outcome out = run_ps_training(spec, data, {});
  REQUIRE(out.failures.size() == 1);
  for (const shard_stats& st : out.shards) CHECK(st.version == 20);
  CHECK(out.step_workers.size() == 20);
  // Steps 0-4 trained all 24 examples; step 5 lost worker 1's own two micro-batches (8
  // examples); from step 6 the two survivors own the whole batch (3 micro-batches each).
  CHECK(out.samples == 5 * 24 + 16 + 14 * 24);
  for (int k = 0; k < 20; ++k) CHECK(out.step_workers[size_t(k)] == (k < 5 ? 3 : 2));
  // And it is the single-process run whose step 5 lacks examples 8-15 (worker 1's run).
  set_compute_threads(1);
  const proto::JobSpec base = mlp_job(R"({"name": "sync"})");
  trainer ref(base, 20);
  batch_source src(base, data);
  REQUIRE(out.step_loss.size() == 20);
  for (int k = 0; k < 20; ++k) {
    std::vector<int64_t> idx;
    src.next_indices(idx);
    if (k == 5) idx.erase(idx.begin() + 8, idx.begin() + 16);
    const batch b = src.gather(idx);
    CHECK(rel(out.step_loss[size_t(k)], ref.train_step(b.x, b.y).loss) < 1e-4);
  }
  CHECK(max_diff(final_params(spec, out), ref.params()) < 1e-4);
}
