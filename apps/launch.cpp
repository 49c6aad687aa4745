// troupe launch --nproc N JOB.json [train flags]: starts N processes of `troupe train` on
// this host for one job (as torchrun does): each gets --rank, --world, a fresh rendezvous
// directory and the job's group id; rank 0 prints and writes everything. With --nodes M
// --listen HOST:PORT the job has M more processes, one per `troupe node --coordinator
// HOST:PORT` started on other machines: rank 0 serves the rendezvous store at HOST:PORT
// (instead of the directory), the launcher publishes the job there (spec, flags, world,
// group), and each node takes the next rank. TROUPE_SECRET must then be set, the same on
// every machine. If one process
// fails, the others are stopped (SIGTERM, then SIGKILL after 5 s) and launch exits with
// the failed one's status, naming it. The children die with the launcher.
#include "apps/launch.hpp"

#include "transport/tcp/store.hpp"
#include "transport/tcp/tcp.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <thread>
#include <vector>

extern char** environ;

namespace troupe {

namespace {

volatile sig_atomic_t interrupted = 0;
void on_signal(int) { interrupted = 1; }

void stop_all(const std::vector<pid_t>& pids, const std::vector<bool>& running) {
  for (size_t k = 0; k < pids.size(); ++k)
    if (running[k]) {
      ::kill(pids[k], SIGTERM);
      ::kill(pids[k], SIGCONT);  // a stopped process acts on its SIGTERM only once it runs
    }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (size_t k = 0; k < pids.size(); ++k) {
    if (!running[k]) continue;
    int status = 0;
    while (::waitpid(pids[k], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pids[k], SIGKILL);
        ::waitpid(pids[k], &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

}  // namespace

int launch_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: troupe launch --nproc N [--nodes M --listen HOST:PORT] JOB.json [--steps N] [--threads N] [--quiet]";
  int nproc = 0, nodes = 0;
  std::string listen;
  std::vector<std::string> passed;  // to every `troupe train`
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc" && i + 1 < args.size()) {
      char* end = nullptr;
      long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 1 || v > 256) {
        std::fprintf(stderr, "troupe launch: --nproc expects 1..256, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      nproc = int(v);
    } else if (args[i] == "--nodes" && i + 1 < args.size()) {
      char* end = nullptr;
      long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 0 || v > 4096) {
        std::fprintf(stderr, "troupe launch: --nodes expects 0..4096, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      nodes = int(v);
    } else if (args[i] == "--listen" && i + 1 < args.size()) {
      listen = args[++i];
    } else if (args[i] == "--rank" || args[i] == "--world" || args[i] == "--rendezvous" || args[i] == "--group") {
      std::fprintf(stderr, "troupe launch: %s is set by launch itself (%s)\n", args[i].c_str(), usage);
      return 2;
    } else {
      passed.push_back(args[i]);
    }
  }
  if (nproc == 0) {
    std::fprintf(stderr, "troupe launch: --nproc N is required (%s)\n", usage);
    return 2;
  }
  std::string store_host;
  uint16_t store_port = 0;
  if (nodes > 0) {
    if (listen.empty()) {
      std::fprintf(stderr, "troupe launch: --nodes needs --listen HOST:PORT, the address nodes reach (%s)\n", usage);
      return 2;
    }
    const char* secret = std::getenv("TROUPE_SECRET");
    if (!secret || std::strlen(secret) < 32) {
      std::fprintf(stderr, "troupe launch: with --nodes, set TROUPE_SECRET to the job's secret here and on every node, "
                           "at least 32 characters (e.g. 32 random bytes as hex)\n");
      return 2;
    }
    try {
      std::tie(store_host, store_port) = parse_store_address("tcp://" + listen);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe launch: --listen: %s\n", e.what());
      return 2;
    }
    if (store_host == "0.0.0.0" || store_host == "::") {
      std::fprintf(stderr, "troupe launch: --listen needs this machine's address that the nodes reach, not %s\n",
                   store_host.c_str());
      return 2;
    }
    // Nodes are started by hand: give them minutes to join, not the default 30 s.
    if (!std::getenv("TROUPE_CONNECT_MS")) ::setenv("TROUPE_CONNECT_MS", "600000", 1);
  }
  std::string job_file;  // the first argument that is not a flag's value
  for (size_t i = 0; i < passed.size(); ++i) {
    if (passed[i] == "--steps" || passed[i] == "--threads") {
      ++i;
      continue;
    }
    if (passed[i].rfind("--", 0) != 0) {
      job_file = passed[i];
      break;
    }
  }
  char dir_template[] = "/tmp/troupe-launch-XXXXXX";
  if (!::mkdtemp(dir_template)) {
    std::fprintf(stderr, "troupe launch: cannot make a rendezvous directory in /tmp\n");
    return 1;
  }
  const std::string dir = dir_template;
  const uint64_t group = (uint64_t(::getpid()) << 16) ^ uint64_t(std::chrono::steady_clock::now().time_since_epoch().count() & 0xFFFF);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::setenv("TROUPE_LAUNCHER_PID", std::to_string(::getpid()).c_str(), 1);
  // The job's secret, for the processes' links to prove to each other (never on a command
  // line, where other users could read it); one given in the environment is kept.
  if (!std::getenv("TROUPE_SECRET") || !*std::getenv("TROUPE_SECRET"))
    ::setenv("TROUPE_SECRET", make_job_secret().c_str(), 1);
  std::vector<pid_t> pids;
  std::vector<bool> running;
  const int world = nproc + nodes;
  const std::string rendezvous = nodes > 0 ? "tcp://" + listen : dir;
  if (nodes > 0) ::setenv("TROUPE_HOST", store_host.c_str(), 1);  // the local processes listen there too
  for (int r = 0; r < nproc; ++r) {
    std::vector<std::string> argv_s = {"troupe", "train"};
    argv_s.insert(argv_s.end(), passed.begin(), passed.end());
    for (std::string x : {std::string("--rank"), std::to_string(r), std::string("--world"), std::to_string(world),
                          std::string("--rendezvous"), rendezvous, std::string("--group"), std::to_string(group)})
      argv_s.push_back(x);
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) {
      std::fprintf(stderr, "troupe launch: cannot start process %d\n", r);
      stop_all(pids, running);
      return 1;
    }
    pids.push_back(pid);
    running.push_back(true);
  }
  // The job, for the nodes: published in rank 0's store once it is up.
  std::thread publisher;
  if (nodes > 0) {
    std::ifstream in(job_file);
    std::stringstream spec;
    spec << in.rdbuf();
    std::string flags;
    for (const auto& a : passed)
      if (a != job_file) flags += a + "\n";
    std::printf("troupe launch: %d local process%s; waiting for %d node%s: on each, run\n"
                "  TROUPE_SECRET=<the same secret> troupe node --coordinator %s\n",
                nproc, nproc == 1 ? "" : "es", nodes, nodes == 1 ? "" : "s", listen.c_str());
    std::fflush(stdout);
    publisher = std::thread([=, spec = spec.str()] {
      try {
        tcp_rendezvous store(store_host, store_port, std::getenv("TROUPE_SECRET"), std::chrono::milliseconds(60000));
        store.set("job/spec", spec);
        store.set("job/flags", flags);
        store.set("job/group", std::to_string(group));
        store.set("job/first_node_rank", std::to_string(nproc));
        store.set("job/world", std::to_string(world));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "troupe launch: cannot publish the job for the nodes: %s\n", e.what());
      }
    });
  }
  int code = 0, left = nproc;
  while (left > 0) {
    if (interrupted) {
      std::fprintf(stderr, "troupe launch: interrupted: stopping the %d processes\n", left);
      stop_all(pids, running);
      code = 130;
      break;
    }
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    size_t k = 0;
    while (k < pids.size() && pids[k] != pid) ++k;
    if (k == pids.size()) continue;
    running[k] = false;
    --left;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    // A failure. Others may have ended at the same moment (a peer's death breaks their
    // links): report them all, the signalled ones (the likely cause) included.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::vector<std::pair<size_t, int>> failed{{k, status}};
    for (size_t j = 0; j < pids.size(); ++j) {
      int st = 0;
      if (running[j] && ::waitpid(pids[j], &st, WNOHANG) == pids[j]) {
        running[j] = false;
        --left;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed.push_back({j, st});
      }
    }
    for (const auto& [j, st] : failed) {
      if (WIFEXITED(st))
        std::fprintf(stderr, "troupe launch: process %zu (pid %d) exited with status %d\n", j, int(pids[j]),
                     WEXITSTATUS(st));
      else
        std::fprintf(stderr, "troupe launch: process %zu (pid %d) was killed by signal %d\n", j, int(pids[j]),
                     WTERMSIG(st));
      if (code == 0 || !WIFEXITED(st)) code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::fprintf(stderr, "troupe launch: stopping the other %d process%s\n", left, left == 1 ? "" : "es");
    stop_all(pids, running);
    break;
  }
  // After a failure the publisher may still be retrying a store that is gone: leave it.
  if (publisher.joinable()) {
    if (code == 0)
      publisher.join();
    else
      publisher.detach();
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return code;
}

}  // namespace troupe
