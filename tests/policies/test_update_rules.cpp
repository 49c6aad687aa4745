// The update rules of parameter-shard training (policies/update_rule.hpp), each on a tiny
// case with a known answer; straggler injection; the sharding of parameters; the kernels
// that combine pushes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "kernels/cpu/optim.hpp"
#include "policies/speed_batches.hpp"
#include "policies/stragglers.hpp"
#include "policies/update_rules.hpp"
#include "policies/work_stealing.hpp"
#include "runtime/check.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/model.hpp"
#include "runtime/proto/job.pb.h"
#include "runtime/rng.hpp"
#include "runtime/sharding.hpp"

using namespace troupe;

namespace {

worker_view all_live(int n) {
  worker_view w;
  w.clock.assign(size_t(n), 0);
  w.live.assign(size_t(n), true);
  return w;
}

push_info push(int worker, int64_t version, int64_t samples = 8) { return push_info{worker, version, 0, samples}; }

std::unique_ptr<update_rule> rule(const std::string& json_policy) {
  proto::JobSpec spec = parse_job_spec(R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
    "optimizer": {"sgd": {"lr": 0.1}}, "train": {"batch_size": 120, "steps": 2}, "policy": )" + json_policy + "}",
                                       "job.json");
  return make_update_rule(spec.policy());
}

}  // namespace

TEST_CASE("update rules: sync waits for every live worker, averages by samples in worker order, drops stale pushes") {
  auto r = rule(R"({"name": "sync", "workers": 3})");
  worker_view w = all_live(3);
  std::vector<push_info> pending = {push(2, 4, 8), push(0, 4, 16)};
  CHECK(r->decide(pending, 4, w).empty());  // worker 1 has not pushed
  pending.push_back(push(1, 4, 8));
  update_plan p = r->decide(pending, 4, w);
  CHECK(p.take == std::vector<size_t>{1, 2, 0});  // workers 0, 1, 2
  CHECK(p.weight == std::vector<double>{0.5, 0.25, 0.25});
  CHECK(p.lr_scale == 1);
  CHECK(p.drop.empty());
  // A push from an older version is dropped, never combined.
  p = r->decide({push(0, 3), push(1, 4)}, 4, w);
  CHECK(p.take.empty());
  CHECK(p.drop == std::vector<size_t>{0});
  // A worker that failed leaves the quorum: the other two make the step.
  w.live[1] = false;
  p = r->decide({push(2, 4), push(0, 4)}, 4, w);
  CHECK(p.take == std::vector<size_t>{1, 0});
  // Pulls wait for the update after the version a worker computed from.
  CHECK(r->may_serve(pull_info{0, -1, 0}, 0, w));
  CHECK_FALSE(r->may_serve(pull_info{0, 4, 1}, 4, w));
  CHECK(r->may_serve(pull_info{0, 4, 1}, 5, w));
}

TEST_CASE("update rules: backup workers use the first n - b of a step and drop exactly the slowest b") {
  auto r = rule(R"({"name": "backup", "workers": 4, "backup": 1})");
  worker_view w = all_live(4);
  // Arrivals at version 7: workers 2, 0, 3; worker 1 is the slowest.
  std::vector<push_info> pending = {push(2, 7), push(0, 7)};
  CHECK(r->decide(pending, 7, w).empty());
  pending.push_back(push(3, 7));
  update_plan p = r->decide(pending, 7, w);
  CHECK(p.take == std::vector<size_t>{1, 0, 2});  // workers 0, 2, 3, combined in worker order
  CHECK(p.weight.size() == 3);
  CHECK(p.drop.empty());
  // Worker 1's gradient of version 7 arrives after the update: dropped, nothing else.
  p = r->decide({push(1, 7)}, 8, w);
  CHECK(p.take.empty());
  CHECK(p.drop == std::vector<size_t>{0});
  // Over many rounds with random arrival orders, each round drops exactly b = 2 of 5.
  auto r2 = rule(R"({"name": "backup", "workers": 5, "backup": 2})");
  worker_view w5 = all_live(5);
  rng g(3);
  for (int64_t v = 0; v < 50; ++v) {
    std::vector<int> order = {0, 1, 2, 3, 4};
    for (int i = 4; i > 0; --i) std::swap(order[size_t(i)], order[size_t(g.next_u64() % uint64_t(i + 1))]);
    std::vector<push_info> pend;
    int64_t version = v, taken = 0, dropped = 0;
    std::set<int> used;
    for (int k : order) {
      pend.push_back(push(k, v));
      for (update_plan q = r2->decide(pend, version, w5); !q.empty(); q = r2->decide(pend, version, w5)) {
        for (size_t i : q.take) used.insert(pend[i].worker);
        taken += int64_t(q.take.size());
        dropped += int64_t(q.drop.size());
        if (!q.take.empty()) ++version;
        std::vector<size_t> gone = q.take;
        gone.insert(gone.end(), q.drop.begin(), q.drop.end());
        std::sort(gone.rbegin(), gone.rend());
        for (size_t i : gone) pend.erase(pend.begin() + std::ptrdiff_t(i));
      }
    }
    CHECK(taken == 3);
    CHECK(dropped == 2);
    CHECK(used == std::set<int>{order[0], order[1], order[2]});  // the first three to arrive
  }
}

TEST_CASE("update rules: k-async combines any K pushes whatever their version") {
  auto r = rule(R"({"name": "k-async", "workers": 4, "k": 2})");
  worker_view w = all_live(4);
  CHECK(r->decide({push(3, 1)}, 9, w).empty());
  update_plan p = r->decide({push(3, 1, 4), push(0, 9, 12), push(1, 8)}, 9, w);
  CHECK(p.take == std::vector<size_t>{0, 1});
  CHECK(p.weight == std::vector<double>{0.25, 0.75});
  CHECK(p.drop.empty());
  // With only one worker left alive, one push is enough.
  w.live = {true, false, false, false};
  CHECK(r->decide({push(0, 9)}, 9, w).take == std::vector<size_t>{0});
  CHECK(r->may_serve(pull_info{0, 9, 3}, 9, w));
}

TEST_CASE("update rules: downpour, staleness-lr and dc-asgd apply each push alone as it comes") {
  worker_view w = all_live(3);
  const std::vector<push_info> pending = {push(1, 6), push(2, 9)};
  for (const char* name : {"downpour", "staleness-lr", "dc-asgd"}) {
    auto r = rule(std::string(R"({"name": ")") + name + R"(", "workers": 3})");
    update_plan p = r->decide(pending, 10, w);
    CHECK(p.take == std::vector<size_t>{0});
    CHECK(p.weight == std::vector<double>{1.0});
    CHECK(r->decide({}, 10, w).empty());
    CHECK(r->may_serve(pull_info{1, 6, 100}, 10, w));
  }
  // staleness-lr: a gradient of staleness 4 moves the parameters by lr / 4; a fresh one by lr.
  auto s = rule(R"({"name": "staleness-lr", "workers": 3})");
  CHECK(s->decide(pending, 10, w).lr_scale == doctest::Approx(0.25));
  CHECK(s->decide({push(0, 10)}, 10, w).lr_scale == 1);
  CHECK(s->decide({push(0, 9)}, 10, w).lr_scale == 1);
  CHECK(rule(R"({"name": "dc-asgd", "workers": 3, "dc_lambda": 0.5})")->decide(pending, 10, w).dc_lambda == 0.5);
  CHECK(rule(R"({"name": "downpour", "workers": 3})")->decide(pending, 10, w).dc_lambda == 0);
}

TEST_CASE("update rules: SSP never lets a worker start a step more than s ahead of the slowest") {
  for (int64_t s : {0, 1, 3}) {
    auto r = rule(R"({"name": "ssp", "workers": 3, "staleness": )" + std::to_string(s) + "}");
    // An event simulation: worker k takes speed[k] time units a step; a worker asks for
    // parameters after each push and starts its next step when the rule serves it.
    worker_view w = all_live(3);
    const double speed[3] = {1.0, 1.7, 5.0};
    double busy_until[3] = {0, 0, 0};
    bool waiting[3] = {false, false, false};
    int64_t max_lead = 0, served = 0;
    for (double t = 0; t < 200; t += 0.1) {
      for (int k = 0; k < 3; ++k) {
        if (!waiting[k] && t >= busy_until[k]) {
          if (busy_until[k] > 0) ++w.clock[size_t(k)];  // the step it finished is pushed
          waiting[k] = true;
        }
        if (waiting[k] && r->may_serve(pull_info{k, 0, w.clock[size_t(k)]}, 0, w)) {
          waiting[k] = false;
          busy_until[k] = t + speed[k];
          max_lead = std::max(max_lead, w.clock[size_t(k)] - w.min_live_clock());
          ++served;
        }
      }
    }
    CHECK(max_lead == s);  // reached, never exceeded
    CHECK(w.clock[0] <= w.clock[2] + s + 1);
    CHECK(served > 40);
    // A worker that has finished no longer holds the others back.
    w.live[2] = false;
    CHECK(r->may_serve(pull_info{0, 0, w.min_live_clock() + s}, 0, w));
  }
}

TEST_CASE("update rules: local-sgd and diloco decide as sync, give workers H steps, and name the outer optimizer") {
  for (const char* json : {R"({"name": "local-sgd", "workers": 3, "sync_every": 7})",
                           R"({"name": "diloco", "workers": 3, "sync_every": 7, "outer_lr": 0.5, "outer_momentum": 0.8})"}) {
    CAPTURE(json);
    auto r = rule(json);
    CHECK(r->local_steps() == 7);
    worker_view w = all_live(3);
    std::vector<push_info> pending = {push(2, 4, 56), push(0, 4, 56)};
    CHECK(r->decide(pending, 4, w).empty());  // a round waits for every live worker's change
    pending.push_back(push(1, 4, 56));
    update_plan p = r->decide(pending, 4, w);
    CHECK(p.take == std::vector<size_t>{1, 2, 0});
    CHECK(p.weight == std::vector<double>{1.0 / 3, 1.0 / 3, 1.0 / 3});
    CHECK_FALSE(r->may_serve(pull_info{0, 4, 1}, 4, w));
    CHECK(r->may_serve(pull_info{0, 4, 1}, 5, w));
    proto::OptimizerSpec opt;
    opt.mutable_adamw()->set_lr(1e-3f);
    opt.set_lr_schedule("cosine");
    opt.set_grad_clip(1);
    r->shard_optimizer(opt);
    REQUIRE(opt.has_sgd());
    CHECK(opt.lr_schedule() == "constant");
    CHECK(opt.grad_clip() == 0);
    CHECK(opt.sgd().weight_decay() == 0);
    if (r->name() == "local-sgd") {
      CHECK(opt.sgd().lr() == 1);  // anchor - mean(anchor - local) = mean(local)
      CHECK(opt.sgd().momentum() == 0);
      CHECK_FALSE(opt.sgd().nesterov());
    } else {
      CHECK(opt.sgd().lr() == doctest::Approx(0.5));
      CHECK(opt.sgd().momentum() == doctest::Approx(0.8));
      CHECK(opt.sgd().nesterov());
    }
  }
  // The gradient rules push every step and step the job's own optimizer.
  auto s = rule(R"({"name": "sync", "workers": 3})");
  CHECK(s->local_steps() == 0);
  proto::OptimizerSpec opt;
  opt.mutable_adamw()->set_lr(1e-3f);
  s->shard_optimizer(opt);
  CHECK(opt.has_adamw());
  // Defaults: the paper's outer settings, H = 50 for diloco and 10 for local-sgd.
  auto d = rule(R"({"name": "diloco", "workers": 2})");
  CHECK(d->local_steps() == 50);
  CHECK(rule(R"({"name": "local-sgd", "workers": 2})")->local_steps() == 10);
}

TEST_CASE("speed-proportional batches: shares follow speed, sum to the batch, and a worker that leaves gets none") {
  CHECK(proportional_shares({1, 1, 1, 1.0 / 3}, 256) == std::vector<int64_t>{77, 77, 76, 26});
  CHECK(proportional_shares({1, 1, 1, 1}, 24) == std::vector<int64_t>{6, 6, 6, 6});
  CHECK(proportional_shares({2, 0, 1}, 10) == std::vector<int64_t>{6, 0, 4});  // 1 each, then 8 by 2:1
  CHECK(proportional_shares({1000, 1}, 4) == std::vector<int64_t>{3, 1});      // never below one example
  troupe::rng g(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(g.next_u64() % 8);
    std::vector<double> speed;
    for (int w = 0; w < n; ++w) speed.push_back(g.uniform() < 0.2 && w > 0 ? 0.0 : 0.1 + 10 * g.uniform());
    const int64_t B = n + int64_t(g.next_u64() % 300);
    const std::vector<int64_t> sh = proportional_shares(speed, B);
    CAPTURE(trial);
    int64_t sum = 0;
    double total = 0;
    for (double s : speed) total += s;
    for (int w = 0; w < n; ++w) {
      sum += sh[size_t(w)];
      if (speed[size_t(w)] <= 0) {
        CHECK(sh[size_t(w)] == 0);
        continue;
      }
      CHECK(sh[size_t(w)] >= 1);
      // Within one example (plus the floor of one each) of the exact proportion.
      CHECK(std::abs(double(sh[size_t(w)]) - (1 + double(B - std::count_if(speed.begin(), speed.end(),
                                                                           [](double x) { return x > 0; })) *
                                                       speed[size_t(w)] / total)) < 1.0 + 1e-9);
    }
    CHECK(sum == B);
  }
  // The balancer: equal until measured, re-divided every 3 versions from the window's
  // speeds when that shortens the predicted round by kMinGain, and at once after a
  // worker leaves.
  speed_balancer b(3, 30, 3);
  CHECK(b.shares() == std::vector<int64_t>{10, 10, 10});
  // Versions first..first+2, each worker taking busy_s[w] for samples[w] examples.
  auto window = [&](int first, std::vector<double> busy_s, std::vector<int64_t> samples) {
    for (int v = first; v < first + 3; ++v) {
      for (int w = 0; w < 3; ++w) b.observe(w, busy_s[size_t(w)], samples[size_t(w)]);
      b.at_version(v);
    }
  };
  for (int v = 1; v <= 3; ++v) {
    b.observe(0, 0.010, 10);  // 1000 examples/s
    b.observe(1, 0.010, 10);
    b.observe(2, 0.040, 10);  // 250 examples/s
    b.at_version(v);
    if (v < 3) CHECK(b.shares() == std::vector<int64_t>{10, 10, 10});
  }
  CHECK(b.shares() == std::vector<int64_t>{13, 13, 4});  // 1 each, then 27 by 4:4:1 = 12+12+3
  // Jitter: worker 1 measures 10% slower. The exact proportion moves an example from it to
  // worker 0, but the slow worker 2 still sets the round (4 / 250 either way): kept.
  CHECK(proportional_shares({1000, 900, 250}, 30) == std::vector<int64_t>{14, 12, 4});
  CHECK(predicted_round_s({14, 12, 4}, {1000, 900, 250}) == doctest::Approx(0.016));
  window(4, {0.010, 0.010, 0.040}, {10, 9, 10});
  CHECK(b.shares() == std::vector<int64_t>{13, 13, 4});
  // A real change: worker 2 is as fast as the others. Equal shares cut the predicted
  // round from 13 ms to 10 ms (more than kMinGain): adopted.
  window(7, {0.010, 0.010, 0.010}, {10, 10, 10});
  CHECK(b.shares() == std::vector<int64_t>{10, 10, 10});
  // Back to the first speeds, then a leave inside the window: re-divided at once.
  window(10, {0.010, 0.010, 0.040}, {10, 10, 10});
  CHECK(b.shares() == std::vector<int64_t>{13, 13, 4});
  b.leave(1);
  b.at_version(13);
  CHECK(b.shares() == std::vector<int64_t>{23, 0, 7});  // 1 each, then 28 by 4:1
}

TEST_CASE("work stealing: own runs, victim order, steal-half, and a simulated step trains each micro-batch once") {
  CHECK(own_micro_batches(1, 4, 8) == std::deque<int64_t>{2, 3});
  CHECK(own_micro_batches(0, 1, 3) == std::deque<int64_t>{0, 1, 2});
  // After a failure the members need not divide M: runs within one of each other, covering
  // [0, M) once, in order.
  CHECK(own_micro_batches(0, 3, 8) == std::deque<int64_t>{0, 1});
  CHECK(own_micro_batches(1, 3, 8) == std::deque<int64_t>{2, 3, 4});
  CHECK(own_micro_batches(2, 3, 8) == std::deque<int64_t>{5, 6, 7});
  CHECK(own_micro_batches(1, 3, 2) == std::deque<int64_t>{0});
  CHECK(own_micro_batches(0, 3, 2).empty());
  CHECK(victim_order(2, 4) == std::vector<int32_t>{3, 0, 1});
  CHECK(victim_order(0, 1).empty());
  CHECK(steal_count(0) == 0);
  CHECK(steal_count(1) == 1);
  CHECK(steal_count(4) == 2);
  CHECK(steal_count(5) == 3);
  std::deque<int64_t> q{4, 5, 6, 7, 8};
  CHECK(give_away(q) == std::vector<int64_t>{6, 7, 8});
  CHECK(q == std::deque<int64_t>{4, 5});
  // A step as events: worker w needs time[w] per micro-batch; an idle worker asks the
  // others in victim_order (a steal takes no time). Each micro-batch is trained exactly
  // once, and nobody idles while work is left, so the step ends within two slowest
  // micro-batches of the perfectly divided work (a partial one in progress when the last
  // is claimed, and the last).
  troupe::rng g(11);
  for (int trial = 0; trial < 100; ++trial) {
    const int W = 1 + int(g.next_u64() % 6), M = W + int(g.next_u64() % (8 * size_t(W)));
    std::vector<double> time(static_cast<size_t>(W), 0.0), busy_until(static_cast<size_t>(W), 0.0);
    for (double& t : time) t = 1 + (g.uniform() < 0.3 ? 9 * g.uniform() : 0);
    std::vector<std::deque<int64_t>> queue;
    for (int w = 0; w < W; ++w) queue.push_back(own_micro_batches(w, W, M));
    std::vector<int> trained(size_t(M), 0);
    std::vector<bool> done(size_t(W), false);
    for (;;) {
      // The worker that becomes free first takes its next micro-batch, stealing if dry.
      int w = -1;
      for (int v = 0; v < W; ++v)
        if (!done[size_t(v)] && (w < 0 || busy_until[size_t(v)] < busy_until[size_t(w)])) w = v;
      if (w < 0) break;
      auto& mine = queue[size_t(w)];
      for (int32_t victim : victim_order(w, W)) {
        if (!mine.empty()) break;
        for (int64_t j : give_away(queue[size_t(victim)])) mine.push_back(j);
      }
      if (mine.empty()) {
        done[size_t(w)] = true;
        continue;
      }
      ++trained[size_t(mine.front())];
      mine.pop_front();
      busy_until[size_t(w)] += time[size_t(w)];
    }
    CAPTURE(trial);
    CHECK(std::all_of(trained.begin(), trained.end(), [](int n) { return n == 1; }));
    double rate = 0;
    for (double t : time) rate += 1 / t;
    const double ideal = M / rate;
    CHECK(*std::max_element(busy_until.begin(), busy_until.end()) <=
          ideal + 2 * *std::max_element(time.begin(), time.end()) + 1e-9);
  }
}

TEST_CASE("update rules: the names the job spec accepts are the rules make_update_rule knows") {
  for (const std::string& n : update_rule_names()) CHECK(rule(R"({"name": ")" + n + R"(", "workers": 2})")->name() == n);
  try {
    parse_job_spec(R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
      "optimizer": {"sgd": {"lr": 0.1}}, "train": {"batch_size": 4, "steps": 2}, "policy": {"name": "hogwild"}})",
                   "job.json");
    FAIL("an unknown policy name parsed");
  } catch (const input_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("policy.name") != std::string::npos);
    size_t quoted = 0;
    for (size_t i = 0; (i = msg.find("\", \"", i)) != std::string::npos; ++i) ++quoted;
    CHECK(quoted + 1 == update_rule_names().size() + 1);  // "allreduce" and every rule
    for (const std::string& n : update_rule_names()) CHECK(msg.find('"' + n + '"') != std::string::npos);
  }
  proto::PolicySpec bogus;
  bogus.set_name("hogwild");
  CHECK_THROWS_AS(make_update_rule(bogus), input_error);
}

TEST_CASE("stragglers: draws repeat for a seed whatever the call order, and follow the profile") {
  straggler_profile slow, noisy, spiky, failing;
  slow.slowdown = 3;
  noisy.exp_mean = 0.5;
  spiky.spike_factor = 5, spiky.spike_prob = 0.2;
  failing.fail_at = 7;
  straggler_injector a({slow, noisy, spiky, failing}, 42), b({slow, noisy, spiky, failing}, 42),
      c({slow, noisy, spiky, failing}, 43);
  std::vector<double> forward, backward;
  for (int64_t s = 0; s < 100; ++s) forward.push_back(a.factor(1, s));
  for (int64_t s = 99; s >= 0; --s) backward.push_back(b.factor(1, s));
  std::reverse(backward.begin(), backward.end());
  CHECK(forward == backward);
  CHECK(a.factor(1, 5) != c.factor(1, 5));
  double exp_sum = 0;
  int spikes = 0;
  const int n = 20000;
  for (int64_t s = 0; s < n; ++s) {
    CHECK(a.factor(0, s) == 3.0);
    CHECK(a.factor(3, s) == 1.0);
    exp_sum += a.factor(1, s) - 1.0;
    const double f = a.factor(2, s);
    CHECK((f == 1.0 || f == 5.0));
    spikes += f == 5.0;
  }
  CHECK(exp_sum / n == doctest::Approx(0.5).epsilon(0.05));
  CHECK(double(spikes) / n == doctest::Approx(0.2).epsilon(0.05));
  CHECK_FALSE(a.fails_at(3, 6));
  CHECK(a.fails_at(3, 7));
  CHECK_FALSE(a.fails_at(0, 1000));
}

TEST_CASE("sharding: every parameter element lands in exactly one shard, and copies round-trip") {
  proto::ModelSpec ms;
  for (int v : {784, 33, 17, 10}) ms.mutable_mlp()->add_widths(uint32_t(v));
  ms.mutable_mlp()->set_activation("relu");
  auto m = build_model(ms);
  arena whole(m->table);
  init_params(*m, whole, 5);
  int64_t total = 0;
  for (const param_info& e : m->table.entries()) total += e.numel();
  for (int S : {1, 2, 3, 7}) {
    auto layouts = shard_by_size(m->table, S);
    REQUIRE(layouts.size() == size_t(S));
    std::vector<int> seen;
    for (const param_info& e : m->table.entries()) seen.resize(seen.size() + size_t(e.numel()), 0);
    std::vector<int64_t> start(m->table.entries().size(), 0);
    for (size_t i = 1; i < start.size(); ++i) start[i] = start[i - 1] + m->table.entries()[i - 1].numel();
    arena back(m->table);
    for (const auto& l : layouts) {
      const int64_t want = (int64_t(l->index) + 1) * total / S - int64_t(l->index) * total / S;
      CHECK(l->numel() == want);
      for (const shard_piece& p : l->pieces) {
        CHECK(l->table.at(p.shard_entry).decay == m->table.at(p.param).decay);
        for (int64_t k = 0; k < p.count; ++k) ++seen[size_t(start[size_t(p.param)] + p.begin + k)];
      }
      tensor flat = tensor::empty({l->table.total_numel()});
      copy_into_shard(whole, *l, flat.f32());
      copy_from_shard(flat.f32(), *l, back);
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
    for (size_t i = 0; i < m->table.entries().size(); ++i)
      CHECK(std::equal(whole.ptr(int(i)), whole.ptr(int(i)) + m->table.entries()[i].numel(), back.ptr(int(i))));
  }
}

TEST_CASE("kernels: combining pushes matches a double-precision reference on random inputs") {
  rng r(11);
  const int64_t N = 1031;
  std::vector<float> acc(N), g(N), now(N), then(N);
  for (int64_t i = 0; i < N; ++i)
    acc[size_t(i)] = float(r.normal()), g[size_t(i)] = float(r.normal()), now[size_t(i)] = float(r.normal()),
    then[size_t(i)] = float(r.normal());
  std::vector<float> a1 = acc, a2 = acc;
  kernels::weighted_accumulate(a1.data(), g.data(), 0.3f, N);
  kernels::delay_compensated_accumulate(a2.data(), g.data(), now.data(), then.data(), 0.3f, 0.7f, N);
  for (int64_t i = 0; i < N; ++i) {
    const double gi = g[size_t(i)];
    CHECK(a1[size_t(i)] == doctest::Approx(acc[size_t(i)] + 0.3 * gi).epsilon(1e-5));
    const double dc = gi + 0.7 * gi * gi * (double(now[size_t(i)]) - then[size_t(i)]);
    CHECK(a2[size_t(i)] == doctest::Approx(acc[size_t(i)] + 0.3 * dc).epsilon(1e-5));
  }
  // DC-ASGD-a over three gradients: the moving mean of g*g first, then lambda0 / sqrt of it.
  std::vector<float> ms(N, 0.f), a3 = acc;
  std::vector<double> ms_ref(N, 0.0), a3_ref(acc.begin(), acc.end());
  for (int round = 0; round < 3; ++round) {
    for (int64_t i = 0; i < N; ++i) g[size_t(i)] = float(r.normal()) * (round + 1) * 1e-2f;
    kernels::delay_compensated_adaptive_accumulate(a3.data(), g.data(), now.data(), then.data(), ms.data(), 0.5f,
                                                   2.f, 0.95f, N);
    for (int64_t i = 0; i < N; ++i) {
      const double gi = g[size_t(i)];
      ms_ref[size_t(i)] = 0.95 * ms_ref[size_t(i)] + 0.05 * gi * gi;
      a3_ref[size_t(i)] += 0.5 * (gi + 2 / std::sqrt(ms_ref[size_t(i)]) * gi * gi *
                                           (double(now[size_t(i)]) - then[size_t(i)]));
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    CHECK(ms[size_t(i)] == doctest::Approx(ms_ref[size_t(i)]).epsilon(1e-5));
    CHECK(a3[size_t(i)] == doctest::Approx(a3_ref[size_t(i)]).epsilon(1e-4));
  }
}
