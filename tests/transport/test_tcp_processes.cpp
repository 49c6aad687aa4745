// The tcp transport with ranks as processes: `troupe bench allreduce --transports tcp`
// runs rank 0 in its own process and the other ranks as worker processes, and checks every
// all-reduce. Killing one worker with SIGKILL in the middle must end the whole group with
// a clear error on the survivors, within seconds: their links to the dead rank break at
// once; nobody waits out a deadline or hangs.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

pid_t spawn_troupe(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> all = {TROUPE_BINARY};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t io;
  posix_spawn_file_actions_init(&io);
  posix_spawn_file_actions_addopen(&io, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&io, 1, 2);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, TROUPE_BINARY, &io, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&io);
  REQUIRE(rc == 0);
  return pid;
}

// The children of `parent`, from /proc.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
    std::istringstream rest(line.substr(line.rfind(')') + 1));
    std::string state;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(pid_t(std::stol(name)));
  }
  return out;
}

// Waits up to `limit` for `pid`; its exit code, or -1 if it is still running (then killed).
int wait_for(pid_t pid, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

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
  std::vector<pid_t> workers;
  for (int i = 0; i < 500 && workers.size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    workers = children_of(pid);
  }
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
