// troupe selftest --nproc N [--transport tcp|shm|ucx]: every collective of transport/ checked
// across N processes of this host over tcp, shared memory (shm) or UCX (a cluster's network can be
// checked the same way), the conformance
// suite of tests/transport/test_collectives.cpp with ranks as processes instead of
// threads: all-reduce (ring, halving-doubling, by size), reduce-scatter, all-gather (f32,
// i32), broadcast from every root, barrier; counts 0, 1, 7 and 100003; integer data, so
// every result has a closed form. Prints one line per collective with the wrong elements
// summed over the ranks; exits 1 if any is wrong or a process failed.
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "apps/launch.hpp"
#include "transport/collectives.hpp"
#include "transport/shm/shm.hpp"
#include "transport/tcp/tcp.hpp"
#include "transport/transports.hpp"

extern char** environ;

namespace troupe {

namespace {

const size_t kCounts[] = {0, 1, 7, 100003};

float value(int r, size_t i) { return float((r + 1) * int(1 + i % 7)); }
float summed(int n, size_t i) { return float(n * (n + 1) / 2) * float(1 + i % 7); }

struct check {
  std::string name;
  std::function<size_t(communicator&, size_t count, uint64_t tag)> run;  // wrong elements on this rank
};

std::vector<check> checks() {
  using ar = void (*)(communicator&, float*, size_t, uint64_t);
  std::vector<check> out;
  for (auto [name, fn] : {std::pair<const char*, ar>{"all-reduce ring", ring_allreduce_sum},
                          {"all-reduce halving-doubling", halving_doubling_allreduce_sum},
                          {"all-reduce recursive doubling", recursive_doubling_allreduce_sum},
                          {"all-reduce by size", allreduce_sum}})
    out.push_back({name, [fn](communicator& c, size_t count, uint64_t tag) {
                     std::vector<float> d(count);
                     for (size_t i = 0; i < count; ++i) d[i] = value(c.rank(), i);
                     fn(c, d.data(), count, tag);
                     size_t wrong = 0;
                     for (size_t i = 0; i < count; ++i) wrong += d[i] != summed(c.size(), i);
                     return wrong;
                   }});
  out.push_back({"reduce-scatter", [](communicator& c, size_t count, uint64_t tag) {
                   std::vector<float> d(count);
                   for (size_t i = 0; i < count; ++i) d[i] = value(c.rank(), i);
                   reduce_scatter_sum(c, d.data(), count, tag);
                   size_t wrong = 0;
                   for (size_t i = chunk_begin(count, c.size(), c.rank()); i < chunk_begin(count, c.size(), c.rank() + 1); ++i)
                     wrong += d[i] != summed(c.size(), i);
                   return wrong;
                 }});
  out.push_back({"all-gather f32 and i32", [](communicator& c, size_t count, uint64_t tag) {
                   std::vector<float> f(count, -1.0f);
                   std::vector<int32_t> k(count, -1);
                   for (size_t i = chunk_begin(count, c.size(), c.rank()); i < chunk_begin(count, c.size(), c.rank() + 1); ++i)
                     f[i] = float(i) * 0.5f, k[i] = int32_t(i) * 3;
                   all_gather(c, f.data(), count, dtype::f32, tag);
                   all_gather(c, k.data(), count, dtype::i32, tag + kTagsPerCollective);
                   size_t wrong = 0;
                   for (size_t i = 0; i < count; ++i) wrong += f[i] != float(i) * 0.5f || k[i] != int32_t(i) * 3;
                   return wrong;
                 }});
  out.push_back({"broadcast from every root", [](communicator& c, size_t count, uint64_t tag) {
                   size_t wrong = 0;
                   for (int root = 0; root < c.size(); ++root) {
                     std::vector<float> d(count, -1.0f);
                     if (c.rank() == root)
                       for (size_t i = 0; i < count; ++i) d[i] = float(i % 1000) + 0.25f + float(root);
                     broadcast(c, d.data(), count, dtype::f32, root, tag + kTagsPerCollective * uint64_t(root));
                     for (size_t i = 0; i < count; ++i) wrong += d[i] != float(i % 1000) + 0.25f + float(root);
                   }
                   return wrong;
                 }});
  out.push_back({"barrier", [](communicator& c, size_t, uint64_t tag) {
                   barrier(c, tag);
                   return size_t(0);
                 }});
  return out;
}

// This rank's part; every rank returns the same table (wrong counts summed over ranks).
std::vector<std::pair<std::string, double>> run_checks(communicator& c) {
  std::vector<std::pair<std::string, double>> table;
  uint64_t tag = 0;
  for (const auto& ch : checks()) {
    float wrong = 0;
    for (size_t count : kCounts) {
      wrong += float(ch.run(c, count, tag));
      tag += kTagsPerCollective * uint64_t(2 + c.size());  // room for the broadcasts' roots
    }
    allreduce_sum(c, &wrong, 1, tag);
    tag += kTagsPerCollective;
    table.push_back({ch.name, double(wrong)});
  }
  return table;
}

std::shared_ptr<communicator> join(const std::string& transport, int rank, int world, const std::string& dir,
                                   uint64_t group) {
  file_rendezvous store(dir);
  tcp_options opt;
  opt.group = group;
  if (const char* s = std::getenv("TROUPE_SECRET")) opt.secret = s;
  return join_group(transport, rank, world, store, opt);
}

}  // namespace

int selftest_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: troupe selftest [--nproc N] [--transport tcp|shm|ucx]   (every collective across N processes)";
  long nproc = 2, worker = -1, world = 0;
  std::string transport = "tcp";
  unsigned long long group = 0;
  std::string dir;
  for (size_t i = 0; i < args.size(); ++i) {
    auto number = [&](long lo, long hi, long& out) {
      char* end = nullptr;
      out = std::strtol(args[i + 1].c_str(), &end, 10);
      return !args[i + 1].empty() && !*end && out >= lo && out <= hi;
    };
    if (args[i] == "--nproc" && i + 1 < args.size() && number(1, 64, nproc)) {
      ++i;
    } else if (args[i] == "--worker" && i + 1 < args.size() && number(1, 63, worker)) {  // internal
      ++i;
    } else if (args[i] == "--world" && i + 1 < args.size() && number(2, 64, world)) {
      ++i;
    } else if (args[i] == "--transport" && i + 1 < args.size() && is_process_transport(args[i + 1])) {
      transport = args[++i];
    } else if (args[i] == "--rendezvous" && i + 1 < args.size()) {
      dir = args[++i];
    } else if (args[i] == "--group" && i + 1 < args.size()) {
      group = std::strtoull(args[++i].c_str(), nullptr, 10);
    } else {
      std::fprintf(stderr, "troupe selftest: unknown or bad argument '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  if (worker > 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with the selftest that started it
    try {
      auto c = join(transport, int(worker), int(world), dir, group);
      run_checks(*c);
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe selftest: process %ld: %s\n", worker, e.what());
      return 1;
    }
  }
  char dir_template[] = "/tmp/troupe-selftest-XXXXXX";
  if (!::mkdtemp(dir_template)) {
    std::fprintf(stderr, "troupe selftest: cannot make a rendezvous directory in /tmp\n");
    return 1;
  }
  dir = dir_template;
  group = (uint64_t(::getpid()) << 8) + uint64_t(nproc);
  if (!std::getenv("TROUPE_SECRET")) ::setenv("TROUPE_SECRET", make_job_secret().c_str(), 1);
  std::vector<pid_t> workers;
  for (long r = 1; r < nproc; ++r) {
    std::vector<std::string> a = {"troupe", "selftest", "--worker", std::to_string(r), "--world", std::to_string(nproc),
                                  "--rendezvous", dir, "--group", std::to_string(group), "--transport", transport};
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) == 0) workers.push_back(pid);
  }
  bool ok = int(workers.size()) == nproc - 1;
  std::vector<std::pair<std::string, double>> table;
  try {
    if (nproc == 1) {
      auto group1 = make_group("inproc", 1);
      table = run_checks(*group1[0]);
    } else {
      auto c = join(transport, 0, int(nproc), dir, group);
      if (transport == "shm" && shm_peer_count(*c) != int(nproc) - 1) {
        std::fprintf(stderr, "troupe selftest: shm: only %d of %ld peers through shared memory\n", shm_peer_count(*c),
                     nproc - 1);
        ok = false;
      }
      table = run_checks(*c);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe selftest: process 0: %s\n", e.what());
    ok = false;
  }
  for (pid_t pid : workers) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("troupe selftest: %ld process%s over %s, counts 0, 1, 7, 100003\n%-30s %8s\n", nproc,
              nproc == 1 ? "" : "es", nproc == 1 ? "nothing" : transport.c_str(), "collective", "#wrong");
  for (const auto& [name, wrong] : table) {
    std::printf("%-30s %8.0f\n", name.c_str(), wrong);
    ok = ok && wrong == 0;
  }
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace troupe
