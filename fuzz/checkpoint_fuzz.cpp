// libFuzzer target for the checkpoint shard reader (runtime/checkpoint.hpp): the input is
// a shard file's bytes, as a torn write, a flipped bit or a hostile file would leave
// them. A checkpoint_error is the expected answer to bad bytes (the loader falls back to
// the previous version); any other exception, a crash, an out-of-bounds read or a leak is
// a finding. What parses must encode to bytes that parse again and encode to themselves
// (entries come back in name order, so the first encoding may reorder them).
//
// Built with clang (-fsanitize=fuzzer,address) by the TROUPE_FUZZ block of CMakeLists.txt;
// ctest runs it for 30 s over fuzz/corpus/checkpoint (label "fuzz").
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "runtime/checkpoint.hpp"

using namespace troupe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  checkpoint_shard s;
  try {
    s = parse_shard(data, size, "fuzz");
  } catch (const checkpoint_error&) {
    return 0;
  }
  const auto once = encode_shard(s);
  const auto twice = encode_shard(parse_shard(once.data(), once.size(), "fuzz, encoded again"));
  if (once.size() != size || twice != once) std::abort();
  return 0;
}
