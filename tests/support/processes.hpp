#pragma once
// What tests of the `troupe` command and of multi-process jobs share: running the binary
// to its end, starting it in the background, finding a process's children, telling a
// live process from a gone (or zombie) one.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace troupe::testing {

struct result {
  int code = -1;
  std::string output;
};

// A shell command line to its end: exit code (128 + signal if killed) and what it printed
// to stdout (add 2>&1 for stderr too).
inline result run_shell(const std::string& cmd) {
  result r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// `troupe ARGS` to its end: exit code (128 + signal if killed) and stdout + stderr.
inline result run(const std::string& args) { return run_shell(std::string(TROUPE_BINARY) + " " + args + " 2>&1"); }

// `troupe ARGS` in the background, stdout and stderr to `log`; its pid (our child).
inline pid_t spawn_troupe(const std::vector<std::string>& args, const std::string& log) {
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

// Waits up to `limit` for our child `pid`; its exit code, or -1 if it was still running
// (then it is killed).
inline int wait_for(pid_t pid, std::chrono::seconds limit) {
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

// pid (comm) state ppid ...: comm may hold spaces, so the fields after the last ')'.
inline bool stat_of(const std::filesystem::path& proc, std::string& state, long& ppid) {
  std::ifstream stat(proc / "stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  std::istringstream rest(line.substr(line.rfind(')') + 1));
  return bool(rest >> state >> ppid);
}

// Running: not gone, and not a zombie waiting for its parent.
inline bool alive(pid_t pid) {
  std::string state;
  long ppid = 0;
  return stat_of("/proc/" + std::to_string(pid), state, ppid) && state != "Z" && state != "X";
}

inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string state;
    long ppid = 0;
    if (stat_of(e.path(), state, ppid) && ppid == parent) out.push_back(pid_t(std::stol(name)));
  }
  return out;
}

// Waits until `parent` has `n` children (at most 5 s); them.
inline std::vector<pid_t> wait_for_children(pid_t parent, size_t n) {
  std::vector<pid_t> procs;
  for (int i = 0; i < 500 && procs.size() < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    procs = children_of(parent);
  }
  return procs;
}

// Waits up to `limit` for `pid` (not necessarily our child) to be gone; the seconds it took,
// or a negative number if it was still there.
inline double wait_gone(pid_t pid, std::chrono::seconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < limit) {
    if (!alive(pid)) return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

// A loopback TCP port that was free a moment ago (the OS picked it for a socket now closed).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  REQUIRE(ok);
  return ntohs(a.sin_port);
}

inline std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace troupe::testing
