#pragma once
#include <string>
#include <vector>

namespace troupe {

// troupe train JOB.json [flags] (apps/main.cpp): what a node agent runs for its rank.
int train_main(const std::vector<std::string>& args);
// troupe launch --nproc N JOB.json [train flags] (apps/launch.cpp).
int launch_main(const std::vector<std::string>& args);
// troupe node --coordinator HOST:PORT (apps/node.cpp).
int node_main(const std::vector<std::string>& args);
// troupe selftest [--nproc N] (apps/selftest.cpp).
int selftest_main(const std::vector<std::string>& args);

}  // namespace troupe
