#pragma once
#include <string>
#include <vector>

namespace troupe {

// `troupe experiment stragglers`: every parameter-shard policy under each straggler profile.
int experiment_main(const std::vector<std::string>& args);

}  // namespace troupe
