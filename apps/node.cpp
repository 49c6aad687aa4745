// troupe node --coordinator HOST:PORT: one process of a multi-process job, as a node
// agent (actors/node_agent.hpp). It connects to the launcher's cluster_coordinator over
// CAF, proves the job's secret (TROUPE_SECRET, the launcher's) after the coordinator has
// proven it, and runs the rank it is assigned: that process's part of the actor graph,
// in this process, with this machine's address for its data links. It exits with the
// rank's status, or non-zero when the coordinator stops the job or is lost. troupe launch
// starts its own processes the same way, with --slot K (its local process K).
#include "apps/launch.hpp"

#include <caf/io/all.hpp>  // the middleman: remote_actor to the coordinator

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <utility>  // before Boost 1.74's asio (std::exchange under C++20)
#include <boost/asio.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/node_agent.hpp"
#include "apps/cluster.hpp"
#include "runtime/check.hpp"
#include "transport/communicator.hpp"
#include "transport/tcp/store.hpp"

namespace troupe {

namespace {

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
  const char* usage =
      "usage: troupe node --coordinator HOST:PORT [--tls | --tls-cert F --tls-key K --tls-ca CA]  (TROUPE_SECRET: the "
      "job's secret)";
  std::string coordinator;
  int slot = -1;
  control_tls tls;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind("--tls", 0) == 0) {
      try {
        if (!take_tls_flag(args, i, tls)) throw input_error("unknown flag '" + args[i] + "'");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "troupe node: %s (%s)\n", e.what(), usage);
        return 2;
      }
    } else if (args[i] == "--coordinator" && i + 1 < args.size()) {
      coordinator = args[++i];
    } else if (args[i] == "--slot" && i + 1 < args.size()) {  // troupe launch's own processes
      char* end = nullptr;
      const long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 0 || v > 255) {
        std::fprintf(stderr, "troupe node: --slot expects 0..255, got '%s'\n", args[i].c_str());
        return 2;
      }
      slot = int(v);
    } else {
      std::fprintf(stderr, "troupe node: unknown or incomplete argument '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  if (coordinator.empty()) {
    std::fprintf(stderr, "troupe node: --coordinator HOST:PORT is required (%s)\n", usage);
    return 2;
  }
  try {
    check_tls(tls);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe node: %s\n", e.what());
    return 2;
  }
  const char* secret = std::getenv("TROUPE_SECRET");
  if (!secret || std::strlen(secret) < 32) {
    std::fprintf(stderr, "troupe node: TROUPE_SECRET must hold the job's secret (the one given to troupe launch, at "
                         "least 32 characters)\n");
    return 2;
  }
  if (slot >= 0) {
    // Started by troupe launch: die with it (and not outlive it if it is already gone).
    const char* launcher = std::getenv("TROUPE_LAUNCHER_PID");
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!launcher || std::to_string(::getppid()) != launcher) return 1;
  }
  std::string job_path;  // a node from elsewhere writes the job it gets here
  int code = 1;
  try {
    const auto [host, port] = parse_store_address("tcp://" + coordinator);
    const auto silence = control_silence();
    const auto deadline = std::chrono::steady_clock::now() + join_deadline();
    caf::actor_system_config cfg;
    configure_control_plane(cfg, silence, tls);
    caf::actor_system sys{cfg};
    // The coordinator may not listen yet: retry until the deadline (but a connection that
    // fails after it was made, as when the TLS settings differ, is final).
    caf::actor coord;
    for (;;) {
      auto got = connect_control(sys, host, port, tls);
      if (got) {
        coord = *got;
        break;
      }
      const bool not_up = got.error() == caf::sec::cannot_connect_to_node;
      if (!not_up || std::chrono::steady_clock::now() >= deadline)
        throw transport_error("cannot reach the coordinator at " + coordinator + ": " + sys.render(got.error()) +
                              (not_up ? ""
                               : tls.on ? " (is the launcher using the same TLS settings: --tls, or certificates "
                                          "signed by the same CA?)"
                                        : " (does the launcher use TLS? then give this node --tls or its certificates)"));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    caf::scoped_actor self{sys};
    node_agent_options o;
    o.secret = secret;
    o.hello.host = slot >= 0 ? (std::getenv("TROUPE_HOST") ? std::getenv("TROUPE_HOST") : "127.0.0.1")
                             : local_address_towards(host, port);
    o.hello.pid = int32_t(::getpid());
    o.hello.cores = int32_t(std::thread::hardware_concurrency());
    o.hello.slot = slot;
    o.outcome = self;
    const std::string me = o.hello.host;
    o.run = [&job_path, slot, me, coordinator](const rank_assignment& a) {
      std::string path = a.path;
      if (slot < 0) {
        // Another machine: the job's text, in a file of our own (its name says where from).
        path = (std::filesystem::temp_directory_path() /
                ("troupe-node-" + std::to_string(::getpid()) + "-" + std::filesystem::path(a.path).filename().string()))
                   .string();
        if (!(std::ofstream(path) << a.spec)) throw std::runtime_error("cannot write " + path);
        job_path = path;
        std::printf("troupe node: joined the job at %s as process %d of %d (this host: %s)\n", coordinator.c_str(),
                    a.rank, a.world, me.c_str());
        std::fflush(stdout);
        ::setenv("TROUPE_HOST", me.c_str(), 1);
      }
      std::vector<std::string> argv = {path};
      argv.insert(argv.end(), a.flags.begin(), a.flags.end());
      for (std::string x : {std::string("--rank"), std::to_string(a.rank), std::string("--world"),
                            std::to_string(a.world), std::string("--rendezvous"), a.rendezvous, std::string("--group"),
                            std::to_string(a.group)})
        argv.push_back(x);
      return train_main(argv);
    };
    auto agent = sys.spawn(node_agent, coord, o);
    std::string why;
    self->receive([&](done_atom, int32_t c, const std::string& w) { code = c, why = w; });
    if (code != 0 && !why.empty()) std::fprintf(stderr, "troupe node: %s\n", why.c_str());
    // End here, inside the actor system's scope: its destructor would wait for the rank's
    // runner, which may be inside a collective that never finishes (the job was stopped).
    if (!job_path.empty()) std::filesystem::remove(job_path);
    std::fflush(nullptr);
    std::_Exit(code == 0 ? 0 : (code >= 1 && code <= 255 ? code : 1));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe node: %s\n", e.what());
    code = 1;
  }
  if (!job_path.empty()) std::filesystem::remove(job_path);
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace troupe
