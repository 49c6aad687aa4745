// Elastic data-parallel jobs under `troupe launch` with real processes: without a failure
// they give the one-process run's per-step losses; with elastic.mode "respawn" a SIGKILL of
// a replica or of the leader (process 0), or a SIGSTOP (a hang), costs at most the step in
// flight: the survivors go on without restarting, a replacement joins with the state of a
// live peer, and the job ends near the uninterrupted run's loss; "restart_all" restarts
// every process from the newest checkpoint; too few workers left is a clear error.
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "policies/elastic_membership.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/check.hpp"
#include "runtime/job_spec.hpp"
#include "tests/support/processes.hpp"

using namespace troupe::testing;

namespace {

namespace fs = std::filesystem;

// The MLP job as 4 replicas (or `replicas`), its files under /tmp/troupe_elastic_<name>/.
std::string elastic_job(const std::string& name, const std::string& mode, int steps, int replicas = 4,
                        const std::string& extra = "", const std::string& train_extra = "") {
  const fs::path dir = "/tmp/troupe_elastic_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "job.json").string();
  std::ofstream(path) << R"({"name": ")" << name << R"(",
  "model": {"mlp": {"widths": [784, 128, 64, 10], "activation": "relu"}},
  "data": {"dataset": "fashion_mnist"},
  "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}},
  "train": {"batch_size": )" << (replicas == 3 ? 96 : 128) << R"(, "steps": )" << steps << R"(, "threads": 4, "metrics_file": ")"
                      << (dir / "metrics.jsonl").string() << R"(", "checkpoint_dir": ")" << (dir / "ckpt").string()
                      << "\"" << train_extra << R"(},
  "parallel": {"replicas": )" << replicas << R"(, "transport": "tcp"},
  "elastic": {"mode": ")" << mode << "\"" << extra << R"(}
})";
  return path;
}

std::string dir_of(const std::string& name) { return "/tmp/troupe_elastic_" + name; }

// A fresh /tmp/troupe_elastic_<name>/ with `json` as its job.json; that file's path.
std::string write_job(const std::string& name, const std::string& json) {
  const fs::path dir = dir_of(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "job.json").string();
  std::ofstream(path) << json;
  return path;
}

// The small GPT as 2 pipeline stages x `replicas`, each process one stage of one replica.
std::string pipeline_job(const std::string& name, int steps, int replicas, const std::string& elastic_extra = "",
                         const std::string& mode = "respawn", const std::string& train_extra = "") {
  const fs::path dir = dir_of(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "job.json").string();
  std::ofstream(path) << R"({"name": ")" << name << R"(",
  "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 16}},
  "data": {"dataset": "fortunes"},
  "optimizer": {"adamw": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1}, "grad_clip": 1.0},
  "train": {"batch_size": 16, "steps": )" << steps << R"(, "threads": )" << 2 * replicas
                      << R"(, "sample_tokens": 0, "metrics_file": ")" << (dir / "metrics.jsonl").string()
                      << R"(", "checkpoint_dir": ")" << (dir / "ckpt").string() << "\"" << train_extra << R"(},
  "parallel": {"stages": 2, "replicas": )" << replicas << R"(, "micro_batches": 4, "transport": "tcp"},
  "elastic": {"mode": ")" << mode << "\"" << elastic_extra << R"(}
})";
  return path;
}

// The elastic pipeline's own line: "view G goes on from step T (N steps lost, ...".
int pipeline_steps_lost(const std::string& log) {
  const auto at = log.find("goes on from step ");
  if (at == std::string::npos) return -1;
  const auto open = log.find('(', at);
  return open == std::string::npos ? -1 : std::atoi(log.c_str() + open + 1);
}

std::vector<std::string> lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

double number(const std::string& line, const std::string& key) {
  const auto at = line.find("\"" + key + "\":");
  return at == std::string::npos ? -1 : std::atof(line.c_str() + at + key.size() + 3);
}

// Per-step losses in step order (a step done twice, after a failure, counts once: the last).
std::vector<double> step_losses(const std::string& metrics) {
  std::vector<double> out;
  for (const auto& l : lines(metrics)) {
    if (l.find("\"event\":\"step\"") == std::string::npos) continue;
    const size_t step = size_t(number(l, "step"));
    if (out.size() < step) out.resize(step, -1);
    out[step - 1] = number(l, "loss");
  }
  return out;
}

double final_loss(const std::string& metrics) {
  double loss = -1;
  for (const auto& l : lines(metrics))
    if (l.find("\"event\":\"eval\"") != std::string::npos) loss = number(l, "loss");
  return loss;
}

int count_events(const std::string& events, const std::string& name) {
  int n = 0;
  for (const auto& l : lines(events)) n += l.find("\"event\":\"" + name + "\"") != std::string::npos;
  return n;
}

// The launcher's child that runs local process `slot`.
pid_t slot_process(pid_t launcher, int slot) {
  for (pid_t p : children_of(launcher)) {
    std::ifstream cmd("/proc/" + std::to_string(p) + "/cmdline", std::ios::binary);
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (args.find(std::string("--slot") + '\0' + std::to_string(slot) + '\0') != std::string::npos) return p;
  }
  return 0;
}

// Waits up to a minute for `ready()`; fails the test if it never is.
template <class F>
void wait_until(F ready, const char* what) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!ready()) {
    if (std::chrono::steady_clock::now() > until) FAIL("waited a minute for " << what);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Steps done so far, by the metrics.
int steps_done(const std::string& metrics) {
  int most = 0;
  for (const auto& l : lines(metrics))
    if (l.find("\"event\":\"step\"") != std::string::npos) most = std::max(most, int(number(l, "step")));
  return most;
}

struct launched {
  pid_t launcher = 0;
  std::string log, events, metrics;
};

launched launch(const std::string& name, const std::string& job, const std::vector<std::string>& env = {},
                int nproc = 4) {
  launched l;
  l.log = dir_of(name) + "/launch.log";
  l.events = dir_of(name) + "/events.jsonl";
  l.metrics = dir_of(name) + "/metrics.jsonl";
  for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
  l.launcher = spawn_troupe({"launch", "--nproc", std::to_string(nproc), "--events", l.events, job}, l.log);
  for (const auto& e : env) ::unsetenv(e.substr(0, e.find('=')).c_str());
  return l;
}

// Waits for `steps` done, then signals local process `slot`; its pid.
pid_t signal_at(const launched& l, int steps, int slot, int sig) {
  wait_until([&] { return steps_done(l.metrics) >= steps; }, "the steps before the signal");
  const pid_t p = slot_process(l.launcher, slot);
  REQUIRE(p > 0);
  REQUIRE(::kill(p, sig) == 0);
  return p;
}

// restart_all after a SIGKILL of slot 1 once `kill_after` steps are done: the job of `nproc`
// processes ends well, restarted once from a checkpoint after some step (not the start);
// then the same job uninterrupted (`reference`) has the same per-step losses (the last time
// each step was trained) and final loss.
void check_restart_all(const std::string& name, const std::string& job, const std::string& reference_name,
                       const std::string& reference, int nproc, int steps, int kill_after) {
  launched l = launch(name, job, {}, nproc);
  wait_until([&] { return int(children_of(l.launcher).size()) >= nproc; }, "the processes");
  signal_at(l, kill_after, 1, SIGKILL);
  const int code = wait_for(l.launcher, std::chrono::seconds(120));
  const std::string log = read_all(l.log);
  CAPTURE(log);
  REQUIRE(code == 0);
  CHECK(log.find("restarting all " + std::to_string(nproc) + " processes from the newest checkpoint") !=
        std::string::npos);
  const auto at = log.find("resume: from ");
  REQUIRE(at != std::string::npos);
  const auto after = log.find("after step ", at);
  REQUIRE(after != std::string::npos);
  CHECK(std::atoi(log.c_str() + after + 11) >= 5);
  CHECK(count_events(l.events, "restart") == 1);
  CHECK(steps_done(l.metrics) == steps);
  launched u = launch(reference_name, reference, {}, nproc);
  REQUIRE(wait_for(u.launcher, std::chrono::seconds(120)) == 0);
  const auto resumed = step_losses(l.metrics), uninterrupted = step_losses(u.metrics);
  REQUIRE(resumed.size() == size_t(steps));
  CHECK(resumed == uninterrupted);
  CHECK(final_loss(l.metrics) == final_loss(u.metrics));
}

}  // namespace

TEST_CASE("elastic: a 4-process data-parallel job without failures gives the one-process run's per-step losses") {
  const auto single = run("train " + elastic_job("single", "off", 30, 1) + " --quiet");
  REQUIRE(single.code == 0);
  const auto one = step_losses(dir_of("single") + "/metrics.jsonl");
  for (const std::string mode : {"respawn", "restart_all"}) {
    CAPTURE(mode);
    const std::string name = "four_" + mode;
    launched l = launch(name, elastic_job(name, mode, 30, 4, "", mode == "restart_all" ? ", \"checkpoint_every\": 10" : ""));
    REQUIRE(wait_for(l.launcher, std::chrono::seconds(120)) == 0);
    const auto four = step_losses(l.metrics);
    REQUIRE(four.size() == one.size());
    for (size_t i = 0; i < one.size(); ++i) {
      CAPTURE(i);
      CHECK(std::fabs(four[i] - one[i]) <= 1e-4 * std::fabs(one[i]));
    }
    CHECK(count_events(l.events, "lost") + count_events(l.events, "failed") == 0);
  }
}

TEST_CASE("elastic respawn: SIGKILL of a replica, or of the leader, loses at most the step in flight, and a replacement "
          "joins with a peer's state") {
  const std::string base_job = elastic_job("base", "respawn", 1500);
  launched b = launch("base", base_job);
  REQUIRE(wait_for(b.launcher, std::chrono::seconds(120)) == 0);
  const double uninterrupted = final_loss(b.metrics);
  REQUIRE(uninterrupted > 0);
  for (int victim : {2, 0}) {
    CAPTURE(victim);
    const std::string name = "kill" + std::to_string(victim);
    // Long enough (about 5 s here) for the replacement to start, load its data and join.
    launched l = launch(name, elastic_job(name, "respawn", 1500));
    wait_until([&] { return children_of(l.launcher).size() >= 4; }, "4 processes");
    std::vector<pid_t> survivors;
    const pid_t killed = signal_at(l, 60, victim, SIGKILL);
    for (int s = 0; s < 4; ++s)
      if (s != victim) survivors.push_back(slot_process(l.launcher, s));
    const int code = wait_for(l.launcher, std::chrono::seconds(120));
    const std::string log = read_all(l.log), events = read_all(l.events);
    CAPTURE(log);
    CAPTURE(events);
    REQUIRE(code == 0);
    // One loss, one replacement, in the victim's slot only: no survivor was restarted.
    CHECK(count_events(l.events, "lost") == 1);
    CHECK(events.find("\"pid\":" + std::to_string(killed)) != std::string::npos);
    for (pid_t s : survivors) CHECK(events.find("\"pid\":" + std::to_string(s) + ",") == std::string::npos);
    CHECK(count_events(l.events, "respawn") == 1);
    CHECK(events.find("\"event\":\"view\",\"generation\":2,\"members\":[") != std::string::npos);
    CHECK(log.find("1 step lost to failures") != std::string::npos);
    // The newcomer took a peer's state (streamed), and the run ended where the uninterrupted one did.
    bool streamed = false;
    for (const auto& line : lines(l.metrics))
      streamed = streamed || (line.find("\"event\":\"view\"") != std::string::npos && number(line, "streamed_bytes") > 0);
    CHECK(streamed);
    const auto losses = step_losses(l.metrics);
    CHECK(losses.size() == 1500);
    // The leader writes the metrics: killed between a step's all-reduce and its line, that
    // one step (trained by all) has no line.
    CHECK(std::count(losses.begin(), losses.end(), -1.0) <= (victim == 0 ? 1 : 0));
    CHECK(std::fabs(final_loss(l.metrics) - uninterrupted) < 0.05);
  }
}

TEST_CASE("elastic respawn: two processes killed at once, as the view re-forms, and the job still finishes with 4") {
  const std::string name = "double";
  // Long enough for both replacements to start and join (the job ends with 4).
  launched l = launch(name, elastic_job(name, "respawn", 2000, 4, ", \"min_workers\": 2"));
  wait_until([&] { return children_of(l.launcher).size() >= 4; }, "4 processes");
  const pid_t second = slot_process(l.launcher, 2);
  signal_at(l, 60, 1, SIGKILL);
  REQUIRE(::kill(second, SIGKILL) == 0);
  const int code = wait_for(l.launcher, std::chrono::seconds(120));
  const std::string log = read_all(l.log), events = read_all(l.events);
  CAPTURE(log);
  CAPTURE(events);
  REQUIRE(code == 0);
  CHECK(count_events(l.events, "lost") == 2);
  CHECK(count_events(l.events, "respawn") == 2);
  CHECK(steps_done(l.metrics) == 2000);
  CHECK(log.find("4 members at the end") != std::string::npos);
}

TEST_CASE("elastic respawn: a process that hangs (SIGSTOP) is dropped by the heartbeats, killed, and replaced") {
  const std::string name = "stop";
  launched l = launch(name, elastic_job(name, "respawn", 400), {"TROUPE_SILENCE_MS=1000"});
  wait_until([&] { return children_of(l.launcher).size() >= 4; }, "4 processes");
  const pid_t stopped = signal_at(l, 40, 3, SIGSTOP);
  const int code = wait_for(l.launcher, std::chrono::seconds(120));
  const std::string log = read_all(l.log);
  CAPTURE(log);
  CAPTURE(read_all(l.events));
  if (code != 0) ::kill(stopped, SIGKILL);
  REQUIRE(code == 0);
  CHECK(!alive(stopped));
  CHECK(count_events(l.events, "lost") == 1);
  CHECK(count_events(l.events, "respawn") == 1);
  CHECK(steps_done(l.metrics) == 400);
}

TEST_CASE("elastic restart_all: SIGKILL of one process restarts all of them from the newest checkpoint") {
  // Resumed from a checkpoint by the same 4 processes, the run is the uninterrupted one's.
  check_restart_all("restart", elastic_job("restart", "restart_all", 200, 4, "", ", \"checkpoint_every\": 5"),
                    "restart_ref", elastic_job("restart_ref", "restart_all", 200, 4, "", ", \"checkpoint_every\": 5"),
                    4, 200, 60);
}

TEST_CASE("elastic restart_all: a parameter-shard job whose process is killed restarts from its shards' checkpoint "
          "and ends as the uninterrupted run") {
  // 4 workers and 2 shards over 2 processes (worker w and shard s in process w % 2, s % 2):
  // SIGKILL of process 1 loses a worker and a shard, and everyone goes back to the newest
  // version of every shard's copy.
  auto job = [](const std::string& name) {
    const std::string dir = dir_of(name);
    return write_job(name, R"({"name": ")" + name + R"(",
      "model": {"mlp": {"widths": [784, 128, 64, 10], "activation": "relu"}},
      "data": {"dataset": "fashion_mnist"},
      "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}, "lr_schedule": "cosine"},
      "train": {"batch_size": 128, "steps": 1500, "threads": 1, "checkpoint_every": 5, "metrics_file": ")" +
                                dir + R"(/metrics.jsonl", "checkpoint_dir": ")" + dir + R"(/ckpt"},
      "policy": {"name": "sync", "workers": 4, "shards": 2},
      "elastic": {"mode": "restart_all"}
    })");
  };
  check_restart_all("ps_restart", job("ps_restart"), "ps_restart_ref", job("ps_restart_ref"), 2, 1500, 60);
}

namespace {

// A synchronous parameter-shard job over 3 processes (worker w and shard s in process
// w % 3, s % 3; shard s's standby copy in process (s + 1) % 3), 3 workers x 3 shards.
std::string shard_respawn_job(const std::string& name, int steps) {
  return write_job(name, R"({"name": ")" + name + R"(",
    "model": {"mlp": {"widths": [784, 128, 64, 10], "activation": "relu"}},
    "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}},
    "train": {"batch_size": 96, "steps": )" + std::to_string(steps) + R"(, "threads": 1, "metrics_file": ")" +
                               dir_of(name) + R"(/metrics.jsonl"},
    "policy": {"name": "sync", "workers": 3, "shards": 3},
    "parallel": {"transport": "tcp"},
    "elastic": {"mode": "respawn"}
  })");
}

// The version each shard ended at, from the metrics' shard lines.
std::vector<int> shard_versions(const std::string& metrics) {
  std::vector<int> out;
  for (const auto& l : lines(metrics))
    if (l.find("\"event\":\"shard\"") != std::string::npos) out.push_back(int(number(l, "version")));
  return out;
}

}  // namespace

TEST_CASE("elastic respawn: SIGKILL or SIGSTOP of a process holding a parameter shard moves the shard to its standby "
          "copy, with no survivor restarted and no update lost") {
  constexpr int kSteps = 900;
  launched ref = launch("ps_move_ref", shard_respawn_job("ps_move_ref", kSteps), {}, 3);
  REQUIRE(wait_for(ref.launcher, std::chrono::seconds(120)) == 0);
  const double uninterrupted = final_loss(ref.metrics);
  REQUIRE(uninterrupted > 0);
  // Process 1 holds worker 1, shard 1 and shard 0's copy (shard 1's copy is in process 2,
  // which tells the coordinator's process of the move); process 2 holds worker 2, shard 2
  // and shard 1's copy (shard 2's copy is in process 0, with the coordinator).
  // Process 2 is stopped (SIGSTOP: a hang, found by the links' silence), not killed.
  for (const int victim : {1, 2}) {
    const std::string name = "ps_move_" + std::to_string(victim);
    const int sig = victim == 1 ? SIGKILL : SIGSTOP;
    CAPTURE(victim);
    launched l = launch(name, shard_respawn_job(name, kSteps), {"TROUPE_SILENCE_MS=1000"}, 3);
    wait_until([&] { return steps_done(l.metrics) >= 100; }, "the first steps");
    const pid_t other = slot_process(l.launcher, 3 - victim), leader = slot_process(l.launcher, 0);
    REQUIRE(other > 0);
    REQUIRE(leader > 0);
    const pid_t hit = signal_at(l, 150, victim, sig);
    // The survivors go on, the same processes: nothing new is started (a stopped one is
    // killed by the launcher once it is counted lost).
    wait_until([&] { return steps_done(l.metrics) >= 300; }, "steps after the failure");
    wait_until([&] { return children_of(l.launcher).size() == 2; }, "the lost process's end");
    const std::vector<pid_t> now = children_of(l.launcher);
    CHECK(std::find(now.begin(), now.end(), other) != now.end());
    CHECK(std::find(now.begin(), now.end(), leader) != now.end());
    const int code = wait_for(l.launcher, std::chrono::seconds(120));
    const std::string log = read_all(l.log);
    CAPTURE(log);
    if (code != 0) ::kill(hit, SIGKILL);
    REQUIRE(code == 0);
    CHECK(log.find("shard " + std::to_string(victim) + " moved to its standby copy at version ") != std::string::npos);
    CHECK(count_events(l.events, "lost") == 1);
    CHECK(count_events(l.events, "respawn") == 0);
    CHECK(count_events(l.events, "restart") == 0);
    // Every step was logged, and every shard made every step's update: none was lost,
    // the moved one included (its copy had every version a worker had pulled).
    CHECK(steps_done(l.metrics) == kSteps);
    CHECK(shard_versions(l.metrics) == std::vector<int>(3, kSteps));
    // The lost worker's slice of each later batch is not trained: the loss stays near the
    // uninterrupted run's (seeds of this job spread by about 0.03).
    const double loss = final_loss(l.metrics);
    CHECK(loss > 0);
    CHECK(std::abs(loss - uninterrupted) < 0.05);
  }
}

namespace {

// A shell command's standard output.
std::string output_of(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

// Closes every TCP connection between processes a and b (`ss -K`, which needs root and a
// kernel with socket destruction); how many it closed.
int cut_links(pid_t a, pid_t b) {
  struct sock {
    std::string local, peer;
    pid_t pid;
  };
  std::vector<sock> socks;
  std::istringstream lines(output_of("ss -tnpH 2>/dev/null"));
  for (std::string l; std::getline(lines, l);) {
    std::istringstream f(l);
    std::string state, rq, sq, local, peer;
    f >> state >> rq >> sq >> local >> peer;
    for (size_t at = l.find("pid="); at != std::string::npos; at = l.find("pid=", at + 4))
      socks.push_back({local, peer, pid_t(std::atoi(l.c_str() + at + 4))});
  }
  int cut = 0;
  for (const sock& x : socks) {
    if (x.pid != a) continue;
    const bool to_b = std::any_of(socks.begin(), socks.end(), [&](const sock& y) { return y.pid == b && y.local == x.peer; });
    if (!to_b) continue;
    const std::string lp = x.local.substr(x.local.rfind(':') + 1), pp = x.peer.substr(x.peer.rfind(':') + 1);
    const std::string killed = output_of("ss -K -tnH sport = :" + lp + " dport = :" + pp + " 2>/dev/null");
    cut += !killed.empty();
  }
  return cut;
}

}  // namespace

TEST_CASE("elastic respawn: a parameter-shard job ends with the reason, never a hang, when a shard has no live copy "
          "left or a link between live processes fails") {
  // Processes 1 and 2 killed together: shard 1's copy was in process 2, so shard 1 is lost.
  {
    launched l = launch("ps_both", shard_respawn_job("ps_both", 20000), {"TROUPE_SILENCE_MS=1000"}, 3);
    wait_until([&] { return steps_done(l.metrics) >= 100; }, "the first steps");
    const pid_t one = slot_process(l.launcher, 1), two = slot_process(l.launcher, 2);
    REQUIRE(one > 0);
    REQUIRE(two > 0);
    ::kill(one, SIGKILL);
    ::kill(two, SIGKILL);
    const int code = wait_for(l.launcher, std::chrono::seconds(60));
    const std::string log = read_all(l.log);
    CAPTURE(log);
    CHECK(code != 0);
    CHECK(log.find("shard 1 is lost") != std::string::npos);
    CHECK(steps_done(l.metrics) < 20000);
  }
  // The link between processes 1 and 2 cut, both alive: no process is counted lost, so
  // nobody may take over a shard (each side would, for the other's). The job ends with
  // the reason; or, if one side gave up first and was counted lost, the other goes on
  // and ends well, every shard at the last version.
  {
    launched l = launch("ps_split", shard_respawn_job("ps_split", 4000), {"TROUPE_SILENCE_MS=1000"}, 3);
    wait_until([&] { return steps_done(l.metrics) >= 300; }, "the first steps");
    const pid_t one = slot_process(l.launcher, 1), two = slot_process(l.launcher, 2);
    REQUIRE(one > 0);
    REQUIRE(two > 0);
    if (cut_links(one, two) == 0) {
      MESSAGE("skipped the link cut: `ss -K` closed no connection here (it needs root and socket destruction)");
      ::kill(l.launcher, SIGTERM);
      wait_for(l.launcher, std::chrono::seconds(60));
      return;
    }
    const int code = wait_for(l.launcher, std::chrono::seconds(90));
    const std::string log = read_all(l.log);
    CAPTURE(log);
    REQUIRE(code >= 0);  // it ended
    if (code != 0)
      CHECK(log.find("a link between live processes failed, which the job cannot mend") != std::string::npos);
    else
      CHECK(shard_versions(l.metrics) == std::vector<int>(3, 4000));
  }
}

TEST_CASE("elastic respawn: a spare node that joined a full job takes the lost process's place") {
  const std::string name = "spare";
  const std::string job = elastic_job(name, "respawn", 1500, 3, ", \"respawn\": false");
  const std::string events = dir_of(name) + "/events.jsonl", log = dir_of(name) + "/launch.log";
  const std::string port = std::to_string(free_loopback_port());
  ::setenv("TROUPE_SECRET", "spare-test-0123456789abcdef0123456789abcdef", 1);
  const pid_t launcher = spawn_troupe({"launch", "--nproc", "2", "--nodes", "1", "--listen", "127.0.0.1:" + port,
                                       "--events", events, job},
                                      log);
  const pid_t node = spawn_troupe({"node", "--coordinator", "127.0.0.1:" + port}, dir_of(name) + "/node.log");
  wait_until([&] { return steps_done(dir_of(name) + "/metrics.jsonl") >= 20; }, "20 steps");
  const pid_t spare = spawn_troupe({"node", "--coordinator", "127.0.0.1:" + port}, dir_of(name) + "/spare.log");
  // The spare is admitted, gets ready, and waits: the view is full.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (read_all(events).find("\"event\":\"admitted\"") == std::string::npos && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(read_all(events).find("\"generation\":1") == std::string::npos);
  launched l;
  l.launcher = launcher;
  l.metrics = dir_of(name) + "/metrics.jsonl";
  signal_at(l, steps_done(l.metrics) + 10, 1, SIGKILL);
  const int code = wait_for(launcher, std::chrono::seconds(120));
  const int node_code = wait_for(node, std::chrono::seconds(30)), spare_code = wait_for(spare, std::chrono::seconds(30));
  ::unsetenv("TROUPE_SECRET");
  const std::string text = read_all(events);
  CAPTURE(read_all(log));
  CAPTURE(text);
  CHECK(code == 0);
  CHECK(node_code == 0);
  CHECK(spare_code == 0);
  CHECK(count_events(events, "respawn") == 0);  // no process was started: the spare took the place
  CHECK(text.find("\"event\":\"view\",\"generation\":2,\"members\":[0,2,3]") != std::string::npos);
  CHECK(steps_done(l.metrics) == 1500);
}

TEST_CASE("elastic respawn: fewer live workers than elastic.min_workers ends the job with the reason") {
  const std::string name = "min";
  launched l = launch(name, elastic_job(name, "respawn", 100000, 4, ", \"min_workers\": 4"));
  wait_until([&] { return children_of(l.launcher).size() >= 4; }, "4 processes");
  signal_at(l, 20, 2, SIGKILL);
  const int code = wait_for(l.launcher, std::chrono::seconds(60));
  const std::string log = read_all(l.log);
  CAPTURE(log);
  CHECK(code != 0);
  CHECK(log.find("3 workers are left, fewer than elastic.min_workers (4)") != std::string::npos);
}

TEST_CASE("elastic views: encode and decode, members lost and joined, rows of the batch, bad text") {
  using namespace troupe;
  elastic_view v{3, {0, 1, 2, 3}};
  CHECK(elastic_view::decode(v.encode()).encode() == "3 0 1 2 3");
  const elastic_view w = view_without(v, 2);
  CHECK(w.generation == 4);
  CHECK(w.members == std::vector<int32_t>{0, 1, 3});
  CHECK(w.index_of(3) == 2);
  CHECK(w.index_of(2) == -1);
  const elastic_view g = view_with(w, 7);
  CHECK(g.members == std::vector<int32_t>{0, 1, 3, 7});
  CHECK(view_viable(w, 3));
  CHECK(!view_viable(w, 4));
  // keep: the whole batch over the live ranks, every row once; shrink: each its share.
  for (int n = 1; n <= 5; ++n) {
    int64_t covered = 0, next = 0;
    for (int k = 0; k < n; ++k) {
      const row_share r = rows_for(k, n, 130, 4, true);
      CHECK(r.begin == next);
      next = r.end;
      covered += r.end - r.begin;
      CHECK(r.total == 130);
    }
    CHECK(covered == 130);
  }
  CHECK(rows_for(2, 3, 128, 4, false).begin == 64);
  CHECK(rows_for(2, 3, 128, 4, false).end == 96);
  CHECK(rows_for(2, 3, 128, 4, false).total == 96);
  for (const std::string bad : {"", "x 1 2", "-1 0", "1 0 0", "1 0 x"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(elastic_view::decode(bad), input_error);
  }
}

TEST_CASE("elastic: the spec's elastic section is checked, with what was expected") {
  using namespace troupe;
  auto spec_error = [](const std::string& elastic, const std::string& more = "") {
    try {
      parse_job_spec(R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
        "optimizer": {"sgd": {"lr": 0.1}}, "train": {"batch_size": 64, "steps": 10}, )" +
                         more + R"("elastic": )" + elastic + "}",
                     "test");
    } catch (const input_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(spec_error(R"({"mode": "respawn"})") == "");
  CHECK(spec_error(R"({"mode": "sometimes"})").find("elastic.mode") != std::string::npos);
  CHECK(spec_error(R"({"mode": "respawn", "batch": "grow"})").find("elastic.batch") != std::string::npos);
  CHECK(spec_error(R"({"mode": "restart_all"})").find("set train.checkpoint_every") != std::string::npos);
  CHECK(spec_error(R"({"mode": "respawn"})", R"("parallel": {"stages": 2}, )") == "");  // a pipeline respawns
  CHECK(spec_error(R"({"mode": "restart_all"})", R"("parallel": {"stages": 2}, )").find("set train.checkpoint_every") !=
        std::string::npos);
  CHECK(spec_error(R"({"mode": "respawn", "min_workers": 3, "max_workers": 2})").find("elastic.max_workers") !=
        std::string::npos);
  // A parameter-shard job restarts from its checkpoints, or moves its shards to their
  // standby copies: the synchronous rule's.
  const std::string ckpt = R"("train": {"batch_size": 64, "steps": 10, "checkpoint_every": 2}, )";
  auto shard_job_error = [&](const std::string& mode, const std::string& policy) {
    try {
      parse_job_spec(R"({"model": {"mlp": {"widths": [784, 10]}}, "data": {"dataset": "fashion_mnist"},
        "optimizer": {"sgd": {"lr": 0.1}}, )" + ckpt + R"("policy": {"name": ")" + policy + R"(", "workers": 2},
        "elastic": {"mode": ")" + mode + R"("}})",
                     "test");
    } catch (const input_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(shard_job_error("restart_all", "sync") == "");
  CHECK(shard_job_error("respawn", "sync") == "");  // its shards move to their standby copies
  CHECK(shard_job_error("respawn", "downpour").find("or a parameter-shard job under policy.name \"sync\": got "
                                                    "policy.name \"downpour\"") != std::string::npos);
  CHECK(shard_job_error("restart_all", "downpour").find("got policy.name \"downpour\"") != std::string::npos);
  // troupe launch checks the job against the processes before it starts any.
  const auto wrong = run("launch --nproc 2 " + elastic_job("wrong", "respawn", 5, 4));
  CHECK(wrong.code != 0);
  CHECK(wrong.output.find("expected parallel.replicas 2 (--nproc + --nodes), got 4") != std::string::npos);
  const std::string stale_job = elastic_job("stale", "restart_all", 5, 2, "", ", \"checkpoint_every\": 1");
  fs::create_directories(dir_of("stale") + "/ckpt/step-000000000010");
  const auto stale = run("launch --nproc 2 " + stale_job);
  CHECK(stale.code != 0);
  CHECK(stale.output.find("holds checkpoints already") != std::string::npos);
  // One process has no peer to go on without.
  const auto r = run("train " + elastic_job("alone", "respawn", 5, 1) + " --quiet");
  CHECK(r.code != 0);
  CHECK(r.output.find("troupe launch --nproc N") != std::string::npos);
}

// A pipeline stage has no live copy of itself in another process unless the stage is
// replicated: its state comes from the standby copy the next process keeps (1 replica) or from its
// data-parallel peer (2 replicas). Either way the replacement starts where the lost
// process stood, the steps after that run again on the same data, and the job ends with
// the bits of the uninterrupted run.
TEST_CASE("elastic pipeline: SIGKILL of a stage's process (state from the next process's standby copy, or from a "
          "data-parallel peer), of process 0, and SIGSTOP of one: no survivor restarts, only the step in flight is "
          "lost, and the job ends bit for bit as the uninterrupted run") {
  struct trial {
    int replicas, victim, sig;
  };
  for (int replicas : {1, 2}) {
    CAPTURE(replicas);
    const int nproc = 2 * replicas, steps = 600;
    const std::string base = "pipe_base" + std::to_string(replicas);
    launched b = launch(base, pipeline_job(base, steps, replicas), {}, nproc);
    REQUIRE(wait_for(b.launcher, std::chrono::seconds(120)) == 0);
    const auto uninterrupted = step_losses(b.metrics);
    REQUIRE(uninterrupted.size() == size_t(steps));
    const double final_uninterrupted = final_loss(b.metrics);
    REQUIRE(final_uninterrupted > 0);
    const std::vector<trial> trials = replicas == 1 ? std::vector<trial>{{1, 1, SIGKILL}, {1, 0, SIGKILL}, {1, 1, SIGSTOP}}
                                                    : std::vector<trial>{{2, 3, SIGKILL}, {2, 0, SIGSTOP}};
    for (const trial& t : trials) {
      CAPTURE(t.victim);
      CAPTURE(t.sig);
      const std::string name = "pipe" + std::to_string(replicas) + "_" + std::to_string(t.victim) + "_" + std::to_string(t.sig);
      launched l = launch(name, pipeline_job(name, steps, replicas), {"TROUPE_SILENCE_MS=1000"}, nproc);
      wait_until([&] { return children_of(l.launcher).size() >= size_t(nproc); }, "the processes");
      std::vector<pid_t> survivors;
      for (int s = 0; s < nproc; ++s)
        if (s != t.victim) survivors.push_back(slot_process(l.launcher, s));
      const pid_t victim = signal_at(l, 150, t.victim, t.sig);
      const int code = wait_for(l.launcher, std::chrono::seconds(120));
      if (code != 0 && t.sig == SIGSTOP) ::kill(victim, SIGKILL);
      const std::string log = read_all(l.log), events = read_all(l.events);
      CAPTURE(log);
      CAPTURE(events);
      REQUIRE(code == 0);
      CHECK(!alive(victim));
      // One loss, one replacement in the victim's place; every survivor ran to the end.
      CHECK(count_events(l.events, "lost") == 1);
      CHECK(count_events(l.events, "respawn") == 1);
      for (pid_t s : survivors) CHECK(events.find("\"pid\":" + std::to_string(s) + ",") == std::string::npos);
      CHECK(log.find("it takes place " + std::to_string(t.victim)) != std::string::npos);
      CHECK(pipeline_steps_lost(log) == 1);
      // Every step's loss (the last run of a step that ran twice) and the final loss are
      // the uninterrupted run's, to the printed digit.
      const auto losses = step_losses(l.metrics);
      REQUIRE(losses.size() == uninterrupted.size());
      int differ = 0;
      for (size_t i = 0; i < losses.size(); ++i) differ += losses[i] != uninterrupted[i] && losses[i] != -1.0;
      CHECK(differ == 0);
      CHECK(final_loss(l.metrics) == final_uninterrupted);
    }
  }
}

TEST_CASE("elastic pipeline: what it cannot do is refused before any process starts, with what to do instead") {
  const std::string job = pipeline_job("pipe_alone", 5, 1);
  const auto r = run("train " + job + " --quiet");
  CHECK(r.code != 0);
  CHECK(r.output.find("a pipeline in one process has no process to lose") != std::string::npos);
}

TEST_CASE("elastic pipeline: with elastic.respawn false the pipeline is cut anew over the processes left (the lost "
          "stage's state from the survivor's standby copy) and again when a node joins, or the job ends saying why it "
          "cannot be cut") {
  const int steps = 600;
  launched b = launch("pipe_shrink_base", pipeline_job("pipe_shrink_base", steps, 1), {}, 2);
  REQUIRE(wait_for(b.launcher, std::chrono::seconds(120)) == 0);
  const double uninterrupted = final_loss(b.metrics);
  launched l = launch("pipe_shrink", pipeline_job("pipe_shrink", steps, 1, R"(, "respawn": false)"),
                      {"TROUPE_SILENCE_MS=1000"}, 2);
  wait_until([&] { return children_of(l.launcher).size() >= 2; }, "the processes");
  const pid_t survivor = slot_process(l.launcher, 0);
  signal_at(l, 150, 1, SIGKILL);
  int code = wait_for(l.launcher, std::chrono::seconds(120));
  std::string log = read_all(l.log);
  const std::string events = read_all(l.events);
  CAPTURE(log);
  REQUIRE(code == 0);
  CHECK(count_events(l.events, "respawn") == 0);
  CHECK(events.find("\"pid\":" + std::to_string(survivor) + ",") == std::string::npos);  // never lost or restarted
  CHECK(log.find("going on with 1 worker (view 1)") != std::string::npos);
  CHECK(log.find("1 processes at the end, 1 step lost to failures") != std::string::npos);
  CHECK(steps_done(l.metrics) == steps);
  CHECK(std::fabs(final_loss(l.metrics) - uninterrupted) <= 1e-4 * uninterrupted);
  // Cut to one process, then grown back to two when a node joins: at a step boundary,
  // nothing lost, the newcomer's stage streamed to it, and the uninterrupted run's end.
  {
    const int long_steps = 2000;
    launched u = launch("pipe_grow_base", pipeline_job("pipe_grow_base", long_steps, 1), {}, 2);
    REQUIRE(wait_for(u.launcher, std::chrono::seconds(120)) == 0);
    const std::string name = "pipe_grow", job = pipeline_job(name, long_steps, 1, R"(, "respawn": false)");
    const std::string port = std::to_string(free_loopback_port()), metrics = dir_of(name) + "/metrics.jsonl";
    ::setenv("TROUPE_SECRET", "grow-test-0123456789abcdef0123456789abcdef", 1);
    ::setenv("TROUPE_SILENCE_MS", "1000", 1);
    const pid_t launcher = spawn_troupe({"launch", "--nproc", "1", "--nodes", "1", "--listen", "127.0.0.1:" + port,
                                         "--events", dir_of(name) + "/events.jsonl", job},
                                        dir_of(name) + "/launch.log");
    const pid_t first = spawn_troupe({"node", "--coordinator", "127.0.0.1:" + port}, dir_of(name) + "/node1.log");
    wait_until([&] { return steps_done(metrics) >= 300; }, "300 steps");
    REQUIRE(::kill(first, SIGKILL) == 0);
    wait_until([&] { return read_all(dir_of(name) + "/launch.log").find("going on with 1 worker") != std::string::npos; },
               "the shrink");
    const pid_t second = spawn_troupe({"node", "--coordinator", "127.0.0.1:" + port}, dir_of(name) + "/node2.log");
    const int launch_code = wait_for(launcher, std::chrono::seconds(120));
    const int second_code = wait_for(second, std::chrono::seconds(30));
    wait_for(first, std::chrono::seconds(5));
    ::unsetenv("TROUPE_SECRET");
    ::unsetenv("TROUPE_SILENCE_MS");
    const std::string grow_log = read_all(dir_of(name) + "/launch.log");
    CAPTURE(grow_log);
    REQUIRE(launch_code == 0);
    CHECK(second_code == 0);
    CHECK(grow_log.find("growing to 2 workers") != std::string::npos);
    CHECK(grow_log.find("0 steps lost") != std::string::npos);
    CHECK(grow_log.find("2 processes at the end, 1 step lost to failures") != std::string::npos);
    CHECK(steps_done(metrics) == long_steps);
    CHECK(std::fabs(final_loss(metrics) - final_loss(u.metrics)) <= 1e-4 * final_loss(u.metrics));
  }
  // 4 stages cannot be cut over 3 processes: the job ends, and says so.
  const std::string four = pipeline_job("pipe_shrink4", steps, 1, R"(, "respawn": false)");
  {
    std::ifstream in(four);
    std::stringstream text;
    text << in.rdbuf();
    std::string t = text.str();
    t.replace(t.find(R"("stages": 2)"), 11, R"("stages": 4)");
    std::ofstream(four) << t;
  }
  launched f = launch("pipe_shrink4", four, {"TROUPE_SILENCE_MS=1000"}, 4);
  wait_until([&] { return children_of(f.launcher).size() >= 4; }, "the processes");
  signal_at(f, 100, 2, SIGKILL);
  code = wait_for(f.launcher, std::chrono::seconds(120));
  log = read_all(f.log);
  CHECK(code != 0);
  CHECK(log.find("the job cannot be cut over the 3 processes left") != std::string::npos);
}

TEST_CASE("elastic pipeline: checkpoints on disk from every process (one shard per stage, collected by process 0), "
          "both processes lost at once go back to the newest, restart_all restarts both from it, and each ends bit "
          "for bit as the uninterrupted run") {
  using namespace troupe;
  const int steps = 600;
  const std::string every = R"(, "checkpoint_every": 100, "checkpoint_keep": 0)";
  launched b = launch("pipe_ck_base", pipeline_job("pipe_ck_base", steps, 1, "", "respawn", every), {}, 2);
  REQUIRE(wait_for(b.launcher, std::chrono::seconds(120)) == 0);
  const double uninterrupted = final_loss(b.metrics);
  REQUIRE(uninterrupted > 0);
  const auto versions = load_latest_checkpoint(dir_of("pipe_ck_base") + "/ckpt");
  REQUIRE(versions.step == steps);
  CHECK(versions.shards.count("stage-0") == 1);
  CHECK(versions.shards.count("stage-1") == 1);
  // The same shards a pipeline in one process takes: it goes on from step 300 to the same end.
  const std::string inproc = pipeline_job("pipe_ck_inproc", steps, 1, "", "off");
  auto r = run("train " + inproc + " --quiet --resume " + dir_of("pipe_ck_base") + "/ckpt/step-000000000300");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  CHECK(final_loss(dir_of("pipe_ck_inproc") + "/metrics.jsonl") == uninterrupted);
  // A directory that holds checkpoints already would be taken for this run's.
  const std::string stale = pipeline_job("pipe_ck_stale", 100, 1, "", "respawn", every);
  r = run("launch --nproc 2 " + stale);
  CHECK(r.code == 0);
  r = run("launch --nproc 2 " + stale);  // again, with the first run's checkpoints in place
  CHECK(r.code != 0);
  CHECK(r.output.find("holds checkpoints already") != std::string::npos);

  for (const std::string mode : {"respawn", "restart_all"}) {
    CAPTURE(mode);
    const std::string name = "pipe_ck_" + mode;
    launched l = launch(name, pipeline_job(name, steps, 1, "", mode, every), {"TROUPE_SILENCE_MS=1000"}, 2);
    wait_until([&] { return children_of(l.launcher).size() >= 2; }, "the processes");
    if (mode == "respawn") {  // both at once: no standby is left, the newest checkpoint is
      const pid_t other = slot_process(l.launcher, 1);
      signal_at(l, 250, 0, SIGKILL);
      REQUIRE(::kill(other, SIGKILL) == 0);
    } else {
      signal_at(l, 250, 1, SIGKILL);
    }
    const int code = wait_for(l.launcher, std::chrono::seconds(120));
    const std::string log = read_all(l.log);
    CAPTURE(log);
    REQUIRE(code == 0);
    // The newest checkpoint whole on disk: step 200, or 100 where the writer had not yet
    // committed 200 when the kill came.
    if (mode == "respawn") {
      CHECK(log.find("every process of the job was lost: it goes back to its newest checkpoint, step ") !=
            std::string::npos);
    } else {
      CHECK(log.find("restarting all 2 processes from the newest checkpoint") != std::string::npos);
    }
    CHECK((log.find("step 200") != std::string::npos || log.find("step 100") != std::string::npos));
    CHECK(steps_done(l.metrics) == steps);
    CHECK(final_loss(l.metrics) == uninterrupted);
  }
}
