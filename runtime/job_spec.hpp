#pragma once
// Reading a job spec: JSON (protobuf's JSON mapping of runtime/proto/job.proto) -> a
// troupe::proto::JobSpec with every optional field filled and every value checked.
// docs/job-spec.md lists each field, its default and what is allowed; a test keeps the
// doc and the schema in step.
//
// Every problem throws troupe::input_error whose message names the origin (file), the
// field path, the value and what is allowed, e.g.
//   job.json: train.batch_size: invalid value -1: expected an integer in [1, 1048576]
#include <string>

#include "runtime/check.hpp"
#include "runtime/proto/job.pb.h"  // generated from runtime/proto/job.proto by CMake

namespace troupe {

// `origin` names where the text came from (a file path) in error messages.
proto::JobSpec parse_job_spec(const std::string& json, const std::string& origin);

// Reads and parses the file at `path`; a missing or unreadable file is an input_error.
proto::JobSpec load_job_spec(const std::string& path);

// A one-line summary of a parsed spec: name, model, dataset, optimizer, batch, length.
std::string describe(const proto::JobSpec& spec);

}  // namespace troupe
