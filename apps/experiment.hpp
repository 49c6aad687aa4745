#pragma once
#include <string>
#include <vector>

namespace troupe {

// `troupe experiment stragglers`: every parameter-shard policy under each straggler profile.
// `troupe experiment diloco` (apps/experiment_diloco.cpp): DiLoCo's H against traffic.
int experiment_main(const std::vector<std::string>& args);
int experiment_diloco_main(const std::vector<std::string>& args);

}  // namespace troupe
