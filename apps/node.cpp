// troupe node --coordinator HOST:PORT: joins, from this machine, a job that `troupe launch
// --nodes M --listen HOST:PORT` started on another. It takes the next rank from the job's
// rendezvous store (served by the job's rank 0 at HOST:PORT; every request proves the job's
// secret, TROUPE_SECRET, which must be the launcher's), fetches the job spec and flags,
// and runs that rank as a `troupe train` child listening on the address this machine
// reaches the coordinator from. It exits with the child's status (and leaves it in the
// store, job/exit/RANK, for whoever watches the job).
#include "apps/launch.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <utility>  // before Boost 1.74's asio (std::exchange under C++20)
#include <boost/asio.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/check.hpp"
#include "transport/communicator.hpp"
#include "transport/tcp/store.hpp"

extern char** environ;

namespace troupe {

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    if (nl > at) out.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

// The address of this machine's interface that reaches host:port (what peers dial).
std::string local_address_towards(const std::string& host, uint16_t port) {
  namespace asio = boost::asio;
  asio::io_context io;
  asio::ip::udp::socket s(io);
  boost::system::error_code ec;
  s.connect(asio::ip::udp::endpoint(asio::ip::make_address(host), port), ec);  // no packet is sent
  if (ec) throw transport_error("node: no route to the coordinator " + host + ": " + ec.message());
  return s.local_endpoint().address().to_string();
}

}  // namespace

int node_main(const std::vector<std::string>& args) {
  const char* usage = "usage: troupe node --coordinator HOST:PORT  (TROUPE_SECRET: the job's secret)";
  std::string coordinator;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--coordinator" && i + 1 < args.size()) {
      coordinator = args[++i];
    } else {
      std::fprintf(stderr, "troupe node: unknown or incomplete argument '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  if (coordinator.empty()) {
    std::fprintf(stderr, "troupe node: --coordinator HOST:PORT is required (%s)\n", usage);
    return 2;
  }
  const char* secret = std::getenv("TROUPE_SECRET");
  if (!secret || std::strlen(secret) < 32) {
    std::fprintf(stderr, "troupe node: TROUPE_SECRET must hold the job's secret (the one given to troupe launch, at "
                         "least 32 characters)\n");
    return 2;
  }
  std::string job_path;
  try {
    const std::string address = "tcp://" + coordinator;
    auto [host, port] = parse_store_address(address);
    tcp_rendezvous store(host, port, secret, std::chrono::milliseconds(60000));
    const auto wait = std::chrono::milliseconds(60000);
    const int world = std::stoi(store.get("job/world", wait));
    const int first = std::stoi(store.get("job/first_node_rank", wait));
    const int64_t k = store.add("job/nodes", 1);
    const int rank = first + int(k) - 1;
    if (rank >= world) {
      std::fprintf(stderr, "troupe node: the job at %s has all its %d processes already\n", coordinator.c_str(), world);
      return 1;
    }
    const std::string group = store.get("job/group", wait);
    const std::string spec = store.get("job/spec", wait);
    const std::vector<std::string> flags = lines_of(store.get("job/flags", wait));
    const std::string me = local_address_towards(host, port);
    job_path = (std::filesystem::temp_directory_path() / ("troupe-node-" + std::to_string(::getpid()) + ".json")).string();
    if (!(std::ofstream(job_path) << spec)) throw std::runtime_error("cannot write " + job_path);
    std::printf("troupe node: joined the job at %s as process %d of %d (this host: %s)\n", coordinator.c_str(), rank,
                world, me.c_str());
    std::fflush(stdout);
    std::vector<std::string> argv_s = {"troupe", "train", job_path};
    argv_s.insert(argv_s.end(), flags.begin(), flags.end());
    for (std::string x : {std::string("--rank"), std::to_string(rank), std::string("--world"), std::to_string(world),
                          std::string("--rendezvous"), address, std::string("--group"), group})
      argv_s.push_back(x);
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::setenv("TROUPE_HOST", me.c_str(), 1);
    ::setenv("TROUPE_LAUNCHER_PID", std::to_string(::getpid()).c_str(), 1);  // the child dies with this agent
    if (!std::getenv("TROUPE_CONNECT_MS")) ::setenv("TROUPE_CONNECT_MS", "600000", 1);  // the others join by hand too
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start troupe train");
    int status = 0;
    ::waitpid(pid, &status, 0);
    const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    try {
      store.set("job/exit/" + std::to_string(rank), std::to_string(rc));
    } catch (const std::exception&) {  // the job (and its store) may be gone already
    }
    std::filesystem::remove(job_path);
    if (rc != 0) std::fprintf(stderr, "troupe node: process %d ended with status %d\n", rank, rc);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe node: %s\n", e.what());
    if (!job_path.empty()) std::filesystem::remove(job_path);
    return 1;
  }
}

}  // namespace troupe
