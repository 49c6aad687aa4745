#include "policies/process_placement.hpp"

#include <arpa/inet.h>

#include <algorithm>

#include "runtime/check.hpp"

namespace troupe {

namespace {

// One spelling per address ("2001:DB8::1" and "2001:db8:0::1" are the same host).
std::string canonical(const std::string& host) {
  unsigned char a[16];
  char text[INET6_ADDRSTRLEN];
  for (int family : {AF_INET, AF_INET6})
    if (inet_pton(family, host.c_str(), a) == 1 && inet_ntop(family, a, text, sizeof text)) return text;
  return host;  // "any"
}

}  // namespace

process_placement place_processes(const std::vector<std::string>& hosts, int local, int remote,
                                  const std::string& launcher_host_as_given) {
  const int world = local + remote;
  const std::string launcher_host = canonical(launcher_host_as_given);
  process_placement p;
  if (hosts.empty()) {
    p.hosts.assign(size_t(world), "any");
    for (int r = 0; r < local; ++r) p.local_ranks.push_back(r);
    return p;
  }
  if (int(hosts.size()) != world)
    throw input_error("parallel.hosts has " + std::to_string(hosts.size()) + " entries, expected one per process: " +
                      std::to_string(world) + " (--nproc " + std::to_string(local) + " + --nodes " +
                      std::to_string(remote) + ")");
  if (hosts[0] != "any" && canonical(hosts[0]) != launcher_host)
    throw input_error("parallel.hosts[0] is \"" + hosts[0] + "\": rank 0 reports and writes the job's files, so it "
                      "runs on the launcher's host (" + launcher_host + ") or \"any\"");
  for (const auto& h : hosts) p.hosts.push_back(canonical(h));
  if (local > 0) p.local_ranks.push_back(0);
  for (const std::string& want : {launcher_host, std::string("any")})
    for (int r = 1; r < world && int(p.local_ranks.size()) < local; ++r)
      if (p.hosts[size_t(r)] == want) p.local_ranks.push_back(r);
  if (int(p.local_ranks.size()) < local)
    throw input_error("parallel.hosts places " + std::to_string(p.local_ranks.size()) + " processes on the launcher's "
                      "host (" + launcher_host + ") or \"any\", but --nproc starts " + std::to_string(local) + " here");
  std::sort(p.local_ranks.begin(), p.local_ranks.end());
  return p;
}

int32_t rank_for_node(const process_placement& p, const std::vector<bool>& taken, const std::string& host) {
  auto local = [&](int r) {
    return std::find(p.local_ranks.begin(), p.local_ranks.end(), r) != p.local_ranks.end();
  };
  for (const std::string& want : {canonical(host), std::string("any")})
    for (int r = 0; r < int(p.hosts.size()); ++r)
      if (!local(r) && !taken[size_t(r)] && p.hosts[size_t(r)] == want) return r;
  return -1;
}

}  // namespace troupe
