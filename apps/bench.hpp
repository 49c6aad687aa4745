#pragma once
#include <string>
#include <vector>

namespace troupe {
int bench_main(const std::vector<std::string>& args);
int bench_pipeline_main(const std::vector<std::string>& args);
int bench_actors_main(const std::vector<std::string>& args);
int bench_parallel_main(const std::vector<std::string>& args);
}
