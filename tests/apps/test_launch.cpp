// `troupe launch`: the GPT job split over 2 and 4 processes (stages x replicas, replicas
// across processes, gradients and losses through shared memory or over tcp) gives the in-process run's per-step
// losses, and so does a parameter-shard job with its workers and shards over the processes;
// a split that does not divide is a clear error; a process killed with SIGKILL
// ends the whole job within seconds with a message naming it, and leaves no process behind;
// with --nodes, a node with the wrong secret is refused (both sides say so) and the right
// one joins.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/processes.hpp"

using namespace troupe::testing;

namespace {

// A GPT job of `steps` steps as 2 stages x `replicas`, its metrics in `metrics`.
std::string gpt_job(const std::string& name, int replicas, const std::string& metrics,
                    const std::string& transport = "shm") {
  const std::string path = "/tmp/troupe_launch_" + name + ".json";
  std::ofstream(path) << R"({"name": ")" << name << R"(",
  "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 32, "vocab": 256}},
  "data": {"dataset": "fortunes"},
  "optimizer": {"adamw": {"lr": 1e-3, "weight_decay": 0.1}, "grad_clip": 1.0},
  "train": {"batch_size": 8, "steps": 12, "threads": 4, "sample_tokens": 0, "metrics_file": ")"
                      << metrics << R"("},
  "parallel": {"stages": 2, "replicas": )" << replicas << R"(, "micro_batches": 2, "schedule": "1f1b",
               "transport": ")" << transport << R"("}
})";
  std::filesystem::remove(metrics);
  return path;
}

// An MLP job through parameter shards under `policy`, its metrics in
// /tmp/troupe_launch_NAME.jsonl.
std::string ps_job(const std::string& name, const std::string& policy, const std::string& transport) {
  const std::string path = "/tmp/troupe_launch_" + name + ".json";
  std::ofstream(path) << R"({"name": ")" << name << R"(",
    "model": {"mlp": {"widths": [784, 64, 10]}},
    "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}},
    "train": {"batch_size": 128, "steps": 20, "threads": 1, "metrics_file": "/tmp/troupe_launch_)"
                      << name << R"(.jsonl"},
    "parallel": {"transport": ")" << transport << R"("},
    "policy": )" << policy << "}";
  std::filesystem::remove("/tmp/troupe_launch_" + name + ".jsonl");
  return path;
}

std::vector<double> step_losses(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"event\":\"step\"") == std::string::npos) continue;
    size_t at = line.find("\"loss\":");
    if (at != std::string::npos) out.push_back(std::atof(line.c_str() + at + 7));
  }
  return out;
}

// `troupe launch --nproc 2 JOB --steps 100000` in the background (through a shell, so not
// our child) with `env` before it; the launcher's pid and its two processes.
std::pair<pid_t, std::vector<pid_t>> start_launch(const std::string& env, const std::string& job,
                                                 const std::string& log) {
  const std::string cmd = env + " " + std::string(TROUPE_BINARY) + " launch --nproc 2 " + job +
                          " --steps 100000 --quiet > " + log + " 2>&1 & echo $!";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[64] = {0};
  REQUIRE(fgets(buf, sizeof buf, p) != nullptr);
  pclose(p);
  const pid_t launcher = pid_t(std::atol(buf));
  return {launcher, wait_for_children(launcher, 2)};
}

}  // namespace

TEST_CASE("launch: the GPT job with its replicas over 2 and 4 processes gives the in-process run's per-step losses") {
  const std::string one = "/tmp/troupe_launch_m1.jsonl", two = "/tmp/troupe_launch_m2.jsonl",
                    four = "/tmp/troupe_launch_m4.jsonl";
  auto r = run("train " + gpt_job("inproc", 4, one) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  r = run("launch --nproc 2 " + gpt_job("two", 4, two) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  r = run("launch --nproc 4 " + gpt_job("four", 4, four) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const std::string two_tcp = "/tmp/troupe_launch_m2t.jsonl";
  r = run("launch --nproc 2 " + gpt_job("twotcp", 4, two_tcp, "tcp") + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const auto a = step_losses(one), b = step_losses(two), c = step_losses(four), d = step_losses(two_tcp);
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == a.size());
  REQUIRE(c.size() == a.size());
  REQUIRE(d.size() == a.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max({worst, std::abs(b[i] - a[i]) / std::abs(a[i]), std::abs(c[i] - a[i]) / std::abs(a[i]),
                      std::abs(d[i] - a[i]) / std::abs(a[i])});
  CHECK(worst <= 1e-4);
  CHECK(b == d);  // the transport moves the same bytes: the same sums
  CHECK(a.back() < a.front());  // it trained
}

TEST_CASE("launch: the GPT job with its stages over 2 processes, and stages and replicas over 4, gives the in-process "
          "run's per-step losses and validation loss") {
  const std::string one = "/tmp/troupe_launch_s1.jsonl";
  auto r = run("train " + gpt_job("s_inproc", 2, one) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const std::string want = r.output.substr(r.output.find("result: "), 33);
  const auto a = step_losses(one);
  REQUIRE(a.size() == 12);
  // 2 stages x 1 replica over 2 processes: one stage each; 2 x 2 over 4: one (replica,
  // stage) each; the same over tcp only. The global batch is the same in every run.
  const struct {
    const char* name;
    int replicas, nproc;
    const char* transport;
    const char* placement;
  } runs[] = {{"s2", 1, 2, "shm", "process 1   host 127.0.0.1"},
              {"s4", 2, 4, "shm", "replicas 1..1 stages 1..1"},
              {"s2tcp", 1, 2, "tcp", "stages 1..1"}};
  for (const auto& x : runs) {
    CAPTURE(x.name);
    const std::string metrics = std::string("/tmp/troupe_launch_") + x.name + ".jsonl";
    r = run("launch --nproc " + std::to_string(x.nproc) + " " + gpt_job(x.name, x.replicas, metrics, x.transport));
    REQUIRE_MESSAGE(r.code == 0, r.output);
    CHECK(r.output.find(x.placement) != std::string::npos);
    CHECK(r.output.find(want) != std::string::npos);  // rank 0 gathered every stage's parameters
    const auto b = step_losses(metrics);
    REQUIRE(b.size() == a.size());
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(b[i] - a[i]) / std::abs(a[i]));
    CHECK(worst <= 1e-4);
  }
}

TEST_CASE("launch: a parameter-shard job with its workers and shards over 2 and 4 processes gives the in-process "
          "run's per-step losses and test result") {
  for (const std::string policy : {R"({"name": "sync", "workers": 4, "shards": 3})",
                                   R"({"name": "diloco", "workers": 4, "shards": 2, "sync_every": 5})"}) {
    CAPTURE(policy);
    auto r = run("train " + ps_job("ps1", policy, "shm"));
    REQUIRE_MESSAGE(r.code == 0, r.output);
    const std::string want = r.output.substr(r.output.find("result: "), 45);
    const auto a = step_losses("/tmp/troupe_launch_ps1.jsonl");
    REQUIRE(a.size() == 20);
    for (const auto& [nproc, transport] : std::vector<std::pair<int, std::string>>{{2, "shm"}, {4, "tcp"}}) {
      CAPTURE(nproc);
      r = run("launch --nproc " + std::to_string(nproc) + " " + ps_job("psn", policy, transport));
      REQUIRE_MESSAGE(r.code == 0, r.output);
      CHECK(r.output.find("placement: " + std::to_string(nproc) + " processes over " + transport) != std::string::npos);
      CHECK(r.output.find(want) != std::string::npos);  // process 0 gathered every shard's parameters
      CHECK(step_losses("/tmp/troupe_launch_psn.jsonl") == a);  // summed in worker order: the same bits
    }
  }
  // A split that leaves a process with nothing to hold is refused, saying why.
  auto r = run("launch --nproc 5 " + ps_job("ps5", R"({"name": "sync", "workers": 4, "shards": 3})", "shm") + " --quiet");
  CHECK(r.code != 0);
  CHECK(r.output.find("expected at most 4 processes") != std::string::npos);
}

TEST_CASE("launch: replicas that do not split over the processes, and bad flags, are clear errors") {
  auto r = run("launch --nproc 3 " + gpt_job("three", 2, "/tmp/troupe_launch_m3.jsonl") + " --quiet");
  CHECK(r.code != 0);
  CHECK(r.output.find("parallel.replicas 2 x parallel.stages 2 cannot be split over 3 processes") != std::string::npos);
  r = run("launch apps/jobs/fortunes_gpt.json");
  CHECK(r.code == 2);
  CHECK(r.output.find("--nproc N is required") != std::string::npos);
  r = run("launch --nproc 0 apps/jobs/fortunes_gpt.json");
  CHECK(r.code == 2);
  CHECK(r.output.find("--nproc expects 1..256, got '0'") != std::string::npos);
  r = run("launch --nproc 1 --nodes 2 apps/jobs/fortunes_gpt.json");
  CHECK(r.code == 2);
  CHECK(r.output.find("--nodes needs --listen HOST:PORT") != std::string::npos);
  ::unsetenv("TROUPE_SECRET");  // as on a machine where nobody set it
  r = run("node --coordinator 127.0.0.1:1");
  CHECK(r.code == 2);
  CHECK(r.output.find("TROUPE_SECRET must hold the job's secret") != std::string::npos);
  r = run("node");
  CHECK(r.code == 2);
  CHECK(r.output.find("--coordinator HOST:PORT is required") != std::string::npos);
  r = run("train apps/jobs/fortunes_gpt.json --rank 1 --world 2");
  CHECK(r.code == 2);
  CHECK(r.output.find("needs a rendezvous: a directory all of them see, or tcp://HOST:PORT") != std::string::npos);
}

TEST_CASE("launch: SIGKILL of one process ends the job within seconds, naming it, with nothing left running") {
  // Replicas split over the processes, then stages split over them, then a policy job's
  // workers and parameter shards (process 1 holds worker 1 and shard 1).
  for (int replicas : {2, 1, 0}) {
  CAPTURE(replicas);
  const std::string log = "/tmp/troupe_launch_kill.log";
  const std::string job = replicas > 0 ? gpt_job("kill", replicas, "/tmp/troupe_launch_mk.jsonl")
                                       : ps_job("pskill", R"({"name": "sync", "workers": 2, "shards": 2})", "shm");
  auto [launcher, procs] = start_launch("", job, log);
  REQUIRE(procs.size() == 2);
  std::this_thread::sleep_for(std::chrono::seconds(3));  // training
  REQUIRE(::kill(procs[1], SIGKILL) == 0);
  const double took = wait_gone(launcher, std::chrono::seconds(20));
  const std::string text = read_all(log);
  CAPTURE(text);
  CHECK(took >= 0);
  CHECK(took < 10.0);
  CHECK(text.find("was killed by signal 9") != std::string::npos);
  for (pid_t q : procs) CHECK(!alive(q));  // none left behind
  if (took < 0) ::kill(launcher, SIGKILL);
  }
}

TEST_CASE("launch: a process that hangs (SIGSTOP) is found by the heartbeats and the job ends") {
  const std::string log = "/tmp/troupe_launch_stop.log";
  auto [launcher, procs] = start_launch("TROUPE_SILENCE_MS=1500", gpt_job("stop", 2, "/tmp/troupe_launch_ms.jsonl"), log);
  REQUIRE(procs.size() == 2);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // training
  REQUIRE(::kill(procs[1], SIGSTOP) == 0);  // alive to TCP, dead to the job
  const double took = wait_gone(launcher, std::chrono::seconds(30));
  const std::string text = read_all(log);
  CAPTURE(text);
  CHECK(took >= 0);
  CHECK(took < 10.0);  // 1.5 s of silence, then the launcher's stop
  CHECK(text.find("was silent for 1500 ms") != std::string::npos);
  for (pid_t q : procs) CHECK(!alive(q));
  if (took < 0) {
    ::kill(procs[1], SIGKILL);
    ::kill(launcher, SIGKILL);
  }
}

TEST_CASE("launch --nodes: a node with the wrong secret is refused and both sides say so, one with the right secret "
          "joins, and the job gives the in-process run's losses") {
  const int port = free_loopback_port();
  const std::string at = "127.0.0.1:" + std::to_string(port);
  const std::string one = "/tmp/troupe_launch_n1.jsonl", nodes = "/tmp/troupe_launch_nn.jsonl";
  auto r = run("train " + gpt_job("nodes_one", 2, one) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const std::string secret = "launch-nodes-test-secret-0123456789abcdef";
  ::setenv("TROUPE_SECRET", secret.c_str(), 1);
  const std::string log = "/tmp/troupe_launch_nodes.log";
  const pid_t launcher = spawn_troupe({"launch", "--nproc", "1", "--nodes", "1", "--listen", at,
                                       gpt_job("nodes", 2, nodes), "--quiet"}, log);
  ::setenv("TROUPE_SECRET", "not-the-job-secret-but-as-long-as-it-0123", 1);
  r = run("node --coordinator " + at);
  CHECK(r.code == 1);
  CHECK(r.output.find("troupe node: the coordinator could not prove the job's secret (TROUPE_SECRET differs)") !=
        std::string::npos);
  ::setenv("TROUPE_SECRET", secret.c_str(), 1);
  r = run("node --coordinator " + at);
  CHECK_MESSAGE(r.code == 0, r.output);
  CHECK(r.output.find("troupe node: joined the job at " + at + " as process 1 of 2 (this host: 127.0.0.1)") !=
        std::string::npos);
  const int code = wait_for(launcher, std::chrono::seconds(60));
  const std::string text = read_all(log);
  CAPTURE(text);
  CHECK(code == 0);
  CHECK(text.find("troupe launch: refused a node at 127.0.0.1") != std::string::npos);
  CHECK(text.find("it found this launcher's proof of the secret wrong") != std::string::npos);
  CHECK(text.find("joined as process 1 of 2") != std::string::npos);
  const auto a = step_losses(one), b = step_losses(nodes);
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(std::abs(b[i] - a[i]) <= 1e-4 * std::abs(a[i]));
  ::unsetenv("TROUPE_SECRET");
}

namespace {

// A CA, two certificates it signed (launcher, node) and one another CA signed, in `dir`
// (the openssl command, which scripts/setup.sh installs).
void make_certificates(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::string quiet = " > /dev/null 2>&1";
  auto sh = [&](const std::string& cmd) { REQUIRE_MESSAGE(std::system((cmd + quiet).c_str()) == 0, cmd); };
  for (std::string ca : {"ca", "other_ca"})
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=" + ca + " -keyout " + dir + "/" + ca +
       ".key -out " + dir + "/" + ca + ".pem");
  for (auto [who, ca] : {std::pair{"launcher", "ca"}, {"node", "ca"}, {"stranger", "other_ca"}}) {
    const std::string base = dir + "/" + who;
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=" + std::string(who) + " -keyout " + base + ".key -out " + base +
       ".csr");
    sh("openssl x509 -req -days 1 -in " + base + ".csr -CA " + dir + "/" + ca + ".pem -CAkey " + dir + "/" + ca +
       ".key -CAcreateserial -out " + base + ".pem");
  }
}

std::string tls_flags(const std::string& dir, const std::string& who, const std::string& ca = "ca") {
  return " --tls-cert " + dir + "/" + who + ".pem --tls-key " + dir + "/" + who + ".key --tls-ca " + dir + "/" + ca +
         ".pem";
}

}  // namespace

TEST_CASE("launch --tls: the control connections over TLS, anonymous or with certificates, give the in-process "
          "losses, a node with another CA's certificate or without TLS is refused at once, bad files are input "
          "errors") {
  const std::string dir = "/tmp/troupe_launch_tls";
  std::filesystem::remove_all(dir);
  make_certificates(dir);
  const std::string one = "/tmp/troupe_launch_t1.jsonl";
  auto r = run("train " + gpt_job("tls_one", 2, one) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const auto a = step_losses(one);
  REQUIRE(a.size() == 12);
  auto same_losses = [&](const std::string& metrics) {
    const auto b = step_losses(metrics);
    REQUIRE(b.size() == a.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(std::abs(b[i] - a[i]) <= 1e-4 * std::abs(a[i]));
  };
  // Two local processes: one ends before the other, which must not break its connection.
  r = run("launch --nproc 2 --tls " + gpt_job("tls_anon", 2, "/tmp/troupe_launch_ta.jsonl") + " --quiet");
  CHECK_MESSAGE(r.code == 0, r.output);
  same_losses("/tmp/troupe_launch_ta.jsonl");
  r = run("launch --nproc 2" + tls_flags(dir, "launcher") + " " + gpt_job("tls_cert", 2, "/tmp/troupe_launch_tc.jsonl") +
          " --quiet");
  CHECK_MESSAGE(r.code == 0, r.output);
  same_losses("/tmp/troupe_launch_tc.jsonl");

  const int port = free_loopback_port();
  const std::string at = "127.0.0.1:" + std::to_string(port);
  ::setenv("TROUPE_SECRET", "launch-tls-test-secret-0123456789abcdefgh", 1);
  const std::string log = "/tmp/troupe_launch_tls.log";
  std::vector<std::string> largs = {"launch", "--nproc", "1", "--nodes", "1", "--listen", at,
                                    "--tls-cert", dir + "/launcher.pem", "--tls-key", dir + "/launcher.key",
                                    "--tls-ca", dir + "/ca.pem", gpt_job("tls_nodes", 2, "/tmp/troupe_launch_tn.jsonl"),
                                    "--quiet"};
  const pid_t launcher = spawn_troupe(largs, log);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // listening
  const auto t0 = std::chrono::steady_clock::now();
  r = run("node --coordinator " + at + tls_flags(dir, "stranger", "other_ca"));
  CHECK(r.code == 1);
  CHECK(r.output.find("cannot reach the coordinator at " + at) != std::string::npos);
  CHECK(r.output.find("is the launcher using the same TLS settings") != std::string::npos);
  r = run("node --coordinator " + at);
  CHECK(r.code == 1);
  CHECK(r.output.find("does the launcher use TLS?") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));  // refused, not retried to the deadline
  r = run("node --coordinator " + at + tls_flags(dir, "node"));
  CHECK_MESSAGE(r.code == 0, r.output);
  CHECK(wait_for(launcher, std::chrono::seconds(60)) == 0);
  same_losses("/tmp/troupe_launch_tn.jsonl");
  ::unsetenv("TROUPE_SECRET");

  r = run("launch --nproc 1 --tls-cert " + dir + "/node.pem --tls-key " + dir + "/launcher.key --tls-ca " + dir +
          "/ca.pem apps/jobs/fortunes_gpt.json");
  CHECK(r.code == 2);
  CHECK_MESSAGE(r.output.find("or not the key of --tls-cert") != std::string::npos, r.output);
  r = run("launch --nproc 1 --tls-cert " + dir + "/node.pem --tls-key " + dir + "/node.key --tls-ca " + dir +
          "/node.key apps/jobs/fortunes_gpt.json");
  CHECK(r.code == 2);
  CHECK(r.output.find("/node.key: not a PEM CA certificate") != std::string::npos);
  r = run("node --coordinator " + at + " --tls-cert " + dir + "/node.pem");
  CHECK(r.code == 2);
  CHECK(r.output.find("missing: --tls-key --tls-ca") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("launch: parallel.hosts that do not fit --nproc and --nodes is an error before anything starts") {
  const std::string path = "/tmp/troupe_launch_hosts.json";
  std::ofstream(path) << R"({"model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 32}},
    "data": {"dataset": "fortunes"}, "optimizer": {"adamw": {"lr": 1e-3}}, "train": {"batch_size": 8, "steps": 2},
    "parallel": {"replicas": 2, "hosts": ["any", "any", "any"]}})";
  auto r = run("launch --nproc 2 " + path);
  CHECK(r.code == 1);
  CHECK(r.output.find("troupe launch: error: parallel.hosts has 3 entries, expected one per process: 2 (--nproc 2 + "
                      "--nodes 0)") != std::string::npos);
}
