#pragma once
// Which process of a multi-process job runs where (troupe launch). Without
// parallel.hosts the launcher's own processes are ranks 0 .. local-1 and the nodes that
// join take the next ranks in the order they are admitted. With it, entry r names the
// host (address) that must run rank r, or "any": the launcher's processes take the ranks
// placed on its host first, then "any" ones, in rank order (rank 0 among them: it reports
// and writes the job's files); a node takes the lowest free rank placed on its address,
// else the lowest free "any" one, and is refused when none is left.
#include <cstdint>
#include <string>
#include <vector>

namespace troupe {

struct process_placement {
  std::vector<int32_t> local_ranks;  // the launcher's process k runs rank local_ranks[k]
  std::vector<std::string> hosts;    // rank -> the address that must run it, or "any"
};

// input_error when hosts does not have local + remote entries, or does not place rank 0
// and `local` ranks in all on the launcher's host (or "any").
process_placement place_processes(const std::vector<std::string>& hosts, int local, int remote,
                                  const std::string& launcher_host);

// The rank a node at `host` takes, given the ranks taken so far; -1 when none is left for it.
int32_t rank_for_node(const process_placement& p, const std::vector<bool>& taken, const std::string& host);

}  // namespace troupe
