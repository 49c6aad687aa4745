// The tcp and shm transports with ranks as processes: `troupe bench allreduce --transports
// tcp` (or shm) runs rank 0 in its own process and the other ranks as worker processes, and
// checks every all-reduce. Killing one worker with SIGKILL in the middle must end the whole
// group with a clear error on the survivors, within seconds: their links to the dead rank
// break at once (shm: its tcp link, which the shared-memory waits watch); nobody waits out
// a deadline or hangs.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/processes.hpp"

using namespace troupe::testing;

TEST_CASE("tcp processes: 3 ranks as processes all-reduce correctly over loopback") {
  const std::string log = "/tmp/troupe_tcp_procs_ok.log";
  pid_t pid = spawn_troupe({"bench", "allreduce", "--ranks", "3", "--transports", "tcp", "--max-bytes", "1048576",
                            "--json", "/tmp/troupe_tcp_procs_ok.json"},
                           log);
  const int code = wait_for(pid, std::chrono::seconds(60));
  const std::string out = read_all(log);
  CAPTURE(out);
  CHECK(code == 0);
  CHECK(out.find("1048576       262144  float    sum  tcp          processes") != std::string::npos);
}

TEST_CASE("tcp, shm and ucx processes: SIGKILL of one rank ends the survivors with a clear error within seconds") {
  for (const std::string transport : {"tcp", "shm", "ucx"}) {
    CAPTURE(transport);
    const std::string log = "/tmp/troupe_" + transport + "_procs_kill.log";
    // Up to 256 MiB: shared memory runs the whole default table (to 64 MiB) in about a second.
    pid_t pid = spawn_troupe({"bench", "allreduce", "--ranks", "3", "--transports", transport, "--max-bytes",
                              "268435456", "--json", "/tmp/troupe_" + transport + "_procs_kill.json"},
                             log);
    // Both workers up, and the group busy with its all-reduces.
    std::vector<pid_t> workers = wait_for_children(pid, 2);
    REQUIRE(workers.size() == 2);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(::kill(workers[0], SIGKILL) == 0);
    const int code = wait_for(pid, std::chrono::seconds(20));
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string out = read_all(log);
    CAPTURE(out);
    CHECK(code == 1);  // not -1: it ended by itself; the bench's own workers were reaped by it
    CHECK(took < 10.0);
    CHECK(out.find(transport + " with 3 ranks") != std::string::npos);
    const bool named = out.find("broke") != std::string::npos || out.find("closed the link") != std::string::npos;
    CHECK(named);
    CHECK(out.find("backtrace") == std::string::npos);  // survivors fail with an error, not a crash
    CHECK(children_of(pid).empty());
  }
}

TEST_CASE("shm processes: 3 ranks as processes all-reduce correctly through shared memory, nothing left in /dev/shm") {
  auto segments = [] {  // this user's troupe segments now
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec))
      if (e.path().filename().string().rfind("troupe-", 0) == 0) names.insert(e.path().filename().string());
    return names;
  };
  const auto before = segments();
  const std::string log = "/tmp/troupe_shm_procs_ok.log";
  pid_t pid = spawn_troupe({"bench", "allreduce", "--ranks", "3", "--transports", "shm", "--max-bytes", "4194304",
                            "--json", "/tmp/troupe_shm_procs_ok.json"},
                           log);
  const int code = wait_for(pid, std::chrono::seconds(60));
  const std::string out = read_all(log);
  CAPTURE(out);
  CHECK(code == 0);
  CHECK(out.find("4194304      1048576  float    sum  shm          processes") != std::string::npos);
  // Segments are unlinked once every peer has mapped them (another test's group may hold
  // one for the milliseconds of its setup: a leak is one still there a moment later).
  std::set<std::string> left;
  for (const auto& name : segments())
    if (!before.count(name)) left.insert(name);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto now = segments();
  size_t leaked = 0;
  for (const auto& name : left) leaked += now.count(name);
  CHECK(leaked == 0);
}

TEST_CASE("tcp, shm and ucx processes: every collective, world sizes 1..8 x counts, against closed forms (troupe selftest)") {
  for (const std::string transport : {"tcp", "shm", "ucx"})
  for (int n = 1; n <= 8; ++n) {
    CAPTURE(transport);
    CAPTURE(n);
    const std::string log = "/tmp/troupe_selftest_" + transport + std::to_string(n) + ".log";
    pid_t pid = spawn_troupe({"selftest", "--nproc", std::to_string(n), "--transport", transport}, log);
    const int code = wait_for(pid, std::chrono::seconds(60));
    const std::string out = read_all(log);
    CAPTURE(out);
    CHECK(code == 0);
    CHECK(out.find("all-reduce halving-doubling           0") != std::string::npos);
    CHECK(out.find("all-reduce recursive doubling         0") != std::string::npos);
    CHECK(out.find("broadcast from every root             0") != std::string::npos);
    CHECK(out.rfind("ok\n") == out.size() - 3);
  }
}
