// The tcp transport with ranks as processes: `troupe bench allreduce --transports tcp`
// runs rank 0 in its own process and the other ranks as worker processes, and checks every
// all-reduce. Killing one worker with SIGKILL in the middle must end the whole group with
// a clear error on the survivors, within seconds: their links to the dead rank break at
// once; nobody waits out a deadline or hangs.
#include <doctest/doctest.h>

#include <chrono>
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

TEST_CASE("tcp processes: SIGKILL of one rank ends the survivors with a clear error within seconds") {
  const std::string log = "/tmp/troupe_tcp_procs_kill.log";
  pid_t pid = spawn_troupe({"bench", "allreduce", "--ranks", "3", "--transports", "tcp", "--json",
                            "/tmp/troupe_tcp_procs_kill.json"},
                           log);
  // Both workers up, and the group busy with its all-reduces.
  std::vector<pid_t> workers = wait_for_children(pid, 2);
  REQUIRE(workers.size() == 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(::kill(workers[0], SIGKILL) == 0);
  const int code = wait_for(pid, std::chrono::seconds(20));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = read_all(log);
  CAPTURE(out);
  CHECK(code == 1);  // not -1: it ended by itself; the bench's own workers were reaped by it
  CHECK(took < 10.0);
  CHECK(out.find("tcp with 3 ranks") != std::string::npos);
  const bool named = out.find("broke") != std::string::npos || out.find("closed the link") != std::string::npos;
  CHECK(named);
  CHECK(children_of(pid).empty());
}

TEST_CASE("tcp processes: every collective, world sizes 1..8 x counts, against closed forms (troupe selftest)") {
  for (int n = 1; n <= 8; ++n) {
    CAPTURE(n);
    const std::string log = "/tmp/troupe_selftest_" + std::to_string(n) + ".log";
    pid_t pid = spawn_troupe({"selftest", "--nproc", std::to_string(n)}, log);
    const int code = wait_for(pid, std::chrono::seconds(60));
    const std::string out = read_all(log);
    CAPTURE(out);
    CHECK(code == 0);
    CHECK(out.find("all-reduce halving-doubling           0") != std::string::npos);
    CHECK(out.find("broadcast from every root             0") != std::string::npos);
    CHECK(out.rfind("ok\n") == out.size() - 3);
  }
}
