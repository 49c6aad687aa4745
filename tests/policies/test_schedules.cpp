// Pipeline schedules: every order is complete and deadlock-free, and replayed on ideal
// stages it shows exactly the bubble and stash its formula claims.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "policies/pipeline_schedule.hpp"
#include "policies/pipeline_sim.hpp"
#include "runtime/check.hpp"

using namespace troupe;

TEST_CASE("schedules: bubble and peak stash of every schedule match their formulas exactly") {
  for (const std::string& name : pipeline_schedule_names()) {
    auto sched = make_pipeline_schedule(name);
    for (int p = 1; p <= 4; ++p)
      for (int m : {p, 2 * p, 4 * p, 8 * p})
        // (forward, input gradient, weight gradient); ZB-H1's formula holds for t_B <= t_F.
        for (pipeline_timing t : {pipeline_timing{1, 1, 1}, pipeline_timing{1, 0.5, 0.5}, pipeline_timing{1, 1, 2},
                                  pipeline_timing{2, 1, 0.5}}) {
          CAPTURE(name);
          CAPTURE(p);
          CAPTURE(m);
          CAPTURE(t.t_fwd);
          CAPTURE(t.t_bwd);
          CAPTURE(t.t_wgt);
          pipeline_sim_result r = simulate_pipeline(*sched, p, m, t);
          CHECK(std::abs(r.bubble - sched->bubble_formula(p, m, t)) < 1e-9);
          for (int s = 0; s < p; ++s) CHECK(r.peak_stash[size_t(s)] == sched->peak_stash_formula(s, p, m));
        }
  }
}

TEST_CASE("schedules: fewer micro-batches than stages still run to the end") {
  for (const char* name : {"gpipe", "1f1b"}) {
    auto sched = make_pipeline_schedule(name);
    for (int p = 2; p <= 4; ++p)
      for (int m = 1; m < p; ++m) {
        pipeline_sim_result r = simulate_pipeline(*sched, p, m);
        CHECK(std::abs(r.bubble - sched->bubble_formula(p, m, {})) < 1e-9);
        for (int s = 0; s < p; ++s) CHECK(r.peak_stash[size_t(s)] == sched->peak_stash_formula(s, p, m));
      }
  }
}

TEST_CASE("schedules: 1F1B holds at most p-s micro-batches where GPipe holds all m") {
  auto gpipe = make_pipeline_schedule("gpipe"), ofob = make_pipeline_schedule("1f1b");
  auto r1 = simulate_pipeline(*gpipe, 4, 16), r2 = simulate_pipeline(*ofob, 4, 16);
  CHECK(r1.peak_stash == std::vector<int>{16, 16, 16, 16});
  CHECK(r2.peak_stash == std::vector<int>{4, 3, 2, 1});
  CHECK(r1.makespan == doctest::Approx(r2.makespan));  // the same bubble
  auto inter = make_pipeline_schedule("interleaved", 2);
  auto r3 = simulate_pipeline(*inter, 4, 16);
  CHECK(r3.makespan < r2.makespan);  // smaller bubble for more stash on early stages
  CHECK(r3.bubble == doctest::Approx(3.0 / 35.0));
}

TEST_CASE("schedules: ZB-H1 idles a third of 1F1B's bubble time for 1F1B's peak stash") {
  auto ofob = make_pipeline_schedule("1f1b"), zb = make_pipeline_schedule("zb-h1");
  CHECK(zb->splits_backward());
  CHECK_FALSE(ofob->splits_backward());
  for (int p = 2; p <= 4; ++p)
    for (int m : {2 * p, 4 * p, 8 * p}) {
      CAPTURE(p);
      CAPTURE(m);
      // Equal pass times: 1F1B idles (p-1) * 3 units per stage, ZB-H1 (p-1) * 1.
      auto r1 = simulate_pipeline(*ofob, p, m), rz = simulate_pipeline(*zb, p, m);
      double idle1 = r1.makespan - 3.0 * m, idlez = rz.makespan - 3.0 * m;
      CHECK(idle1 == doctest::Approx(3.0 * (p - 1)));
      CHECK(idlez == doctest::Approx(double(p - 1)));
      CHECK(rz.bubble == doctest::Approx(double(p - 1) / (3.0 * m + p - 1)));
      int peak1 = *std::max_element(r1.peak_stash.begin(), r1.peak_stash.end());
      CHECK(rz.peak_stash == std::vector<int>(size_t(p), peak1));
    }
  // Stage 1 of 3, 4 micro-batches: 2 warm-up forwards, then B, F pairs with W one behind.
  auto F = pass_kind::forward, B = pass_kind::backward, W = pass_kind::weight;
  std::vector<pipeline_op> want{{F, 0, 0}, {F, 1, 0}, {B, 0, 0}, {F, 2, 0}, {B, 1, 0}, {W, 0, 0},
                                {F, 3, 0}, {B, 2, 0}, {W, 1, 0}, {B, 3, 0}, {W, 2, 0}, {W, 3, 0}};
  CHECK(zb->order(1, 3, 4) == want);
}

TEST_CASE("schedules: a weight op in a schedule that does not split backward is caught") {
  struct stray_weight : pipeline_schedule {
    std::string name() const override { return "stray_weight"; }
    std::vector<pipeline_op> order(int, int, int m) const override {
      std::vector<pipeline_op> ops;
      for (int i = 0; i < m; ++i) ops.push_back({pass_kind::forward, i, 0});
      for (int i = 0; i < m; ++i) ops.push_back({pass_kind::weight, i, 0});
      return ops;
    }
    double bubble_formula(int, int, const pipeline_timing&) const override { return 0; }
    int peak_stash_formula(int, int, int) const override { return 0; }
  } broken;
  CHECK_THROWS_AS(simulate_pipeline(broken, 1, 2), std::logic_error);
}

TEST_CASE("schedules: 1F1B's order on a stage, written out") {
  auto ofob = make_pipeline_schedule("1f1b");
  auto F = pass_kind::forward, B = pass_kind::backward;
  // Stage 1 of 3 with 4 micro-batches: one warm-up forward, then alternate, then drain.
  std::vector<pipeline_op> want{{F, 0, 0}, {F, 1, 0}, {B, 0, 0}, {F, 2, 0}, {B, 1, 0},
                                {F, 3, 0}, {B, 2, 0}, {B, 3, 0}};
  CHECK(ofob->order(1, 3, 4) == want);
}

TEST_CASE("schedules: bad names and shapes are clear errors, broken orders are caught") {
  try {
    make_pipeline_schedule("zigzag");
    FAIL("expected an error");
  } catch (const input_error& e) {
    CHECK(std::string(e.what()) == "unknown pipeline schedule 'zigzag' (known: gpipe, 1f1b, interleaved, zb-h1)");
  }
  auto inter = make_pipeline_schedule("interleaved", 2);
  CHECK_THROWS_AS(inter->order(0, 4, 6), input_error);
  CHECK_THROWS_AS(make_pipeline_schedule("interleaved", 1), input_error);

  // A schedule whose last stage runs a backward before the forward it needs.
  struct backwards_first : pipeline_schedule {
    std::string name() const override { return "backwards_first"; }
    std::vector<pipeline_op> order(int, int, int m) const override {
      std::vector<pipeline_op> ops;
      for (int i = 0; i < m; ++i) ops.push_back({pass_kind::backward, i, 0});
      for (int i = 0; i < m; ++i) ops.push_back({pass_kind::forward, i, 0});
      return ops;
    }
    double bubble_formula(int, int, const pipeline_timing&) const override { return 0; }
    int peak_stash_formula(int, int, int) const override { return 0; }
  } broken;
  CHECK_THROWS_AS(simulate_pipeline(broken, 2, 2), std::logic_error);
}
