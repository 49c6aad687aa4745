// Where each process of a multi-process job runs (policies/process_placement.hpp).
#include <doctest/doctest.h>

#include "policies/process_placement.hpp"
#include "runtime/check.hpp"

using namespace troupe;

TEST_CASE("placement: without hosts the launcher's processes are the first ranks and nodes take the rest in order") {
  const auto p = place_processes({}, 2, 2, "10.0.0.1");
  CHECK(p.local_ranks == std::vector<int32_t>{0, 1});
  std::vector<bool> taken = {true, true, false, false};
  CHECK(rank_for_node(p, taken, "10.0.0.9") == 2);
  taken[2] = true;
  CHECK(rank_for_node(p, taken, "10.0.0.5") == 3);
  taken[3] = true;
  CHECK(rank_for_node(p, taken, "10.0.0.5") == -1);
}

TEST_CASE("placement: parallel.hosts puts each rank on its address, the launcher's own first, then any") {
  // Ranks 0 and 3 here; 1 on .3, 2 on .2, 4 anywhere.
  const std::vector<std::string> hosts = {"any", "10.0.0.3", "10.0.0.2", "10.0.0.1", "any"};
  const auto p = place_processes(hosts, 2, 3, "10.0.0.1");
  CHECK(p.local_ranks == std::vector<int32_t>{0, 3});
  std::vector<bool> taken(5, false);
  taken[0] = taken[3] = true;
  CHECK(rank_for_node(p, taken, "10.0.0.2") == 2);
  taken[2] = true;
  CHECK(rank_for_node(p, taken, "10.0.0.2") == 4);  // its own is taken: an "any" one
  taken[4] = true;
  CHECK(rank_for_node(p, taken, "10.0.0.7") == -1);  // nothing for it
  CHECK(rank_for_node(p, taken, "10.0.0.3") == 1);
  // Rank 0 is always the launcher's, even when other ranks name its host.
  CHECK(place_processes({"any", "10.0.0.1", "10.0.0.1"}, 2, 1, "10.0.0.1").local_ranks ==
        std::vector<int32_t>{0, 1});
  CHECK(place_processes({"any", "any", "10.0.0.1"}, 2, 1, "10.0.0.1").local_ranks == std::vector<int32_t>{0, 2});
  // An address is the same host however it is spelled.
  const auto v6 = place_processes({"FD00::1", "fd00:0::2"}, 1, 1, "fd00:0:0::1");
  CHECK(v6.local_ranks == std::vector<int32_t>{0});
  CHECK(rank_for_node(v6, {true, false}, "fd00::2") == 1);
}

TEST_CASE("placement: hosts that do not fit the processes are input errors naming what is wrong") {
  auto error_of = [](const std::vector<std::string>& hosts, int local, int remote) {
    try {
      place_processes(hosts, local, remote, "10.0.0.1");
    } catch (const input_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of({"any", "any"}, 1, 2) ==
        "parallel.hosts has 2 entries, expected one per process: 3 (--nproc 1 + --nodes 2)");
  CHECK(error_of({"10.0.0.2", "any"}, 1, 1).find("parallel.hosts[0] is \"10.0.0.2\": rank 0 reports") == 0);
  CHECK(error_of({"any", "10.0.0.2", "10.0.0.3"}, 2, 1) ==
        "parallel.hosts places 1 processes on the launcher's host (10.0.0.1) or \"any\", but --nproc starts 2 here");
}
