// libFuzzer target for the frame decoder: the input is a byte stream as a peer would send
// it, read frame after frame the way a transport reads a link. A frame_error is the
// expected answer to bad bytes (the transport closes the link); any other exception, a
// crash, an out-of-bounds read or a leak is a finding.
//
// Built with clang (-fsanitize=fuzzer,address) by the TROUPE_FUZZ block of CMakeLists.txt;
// ctest runs it for 30 s over fuzz/corpus/frame (label "fuzz").
#include <cstddef>
#include <cstdint>

#include "transport/frame.hpp"

using namespace troupe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks this end's world size (1..8), so src and hello checks see both
  // sides; it is also the first byte of the stream, as the corpus files are written.
  frame_limits limits;
  limits.world_size = uint32_t(data[0] % 8) + 1;
  limits.max_payload_bytes = uint64_t(1) << 20;
  size_t at = 0;
  while (size - at >= kFrameHeaderBytes) {
    frame_header h;
    try {
      h = decode_header(data + at, kFrameHeaderBytes, limits);
    } catch (const frame_error&) {
      return 0;  // a closed link
    }
    at += kFrameHeaderBytes;
    // decode_header bounds count by max_payload_bytes, so this cannot overflow; hello
    // frames carry no payload whatever their count says.
    const size_t n = h.kind == frame_kind::hello ? 0 : h.payload_bytes();
    if (size - at < n) return 0;  // the stream ends mid-frame
    try {
      check_payload(h, data + at);
    } catch (const frame_error&) {
      return 0;
    }
    at += n;
  }
  return 0;
}
